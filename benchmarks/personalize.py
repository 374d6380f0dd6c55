"""Training-step throughput: our personalisation step vs the reference recipe, in one run.

Reference = a plain loop as the diffusers example scripts (train_dreambooth_lora.py) run it:
every step loads and transforms the batch's images (PIL open, resize, crop, random flip,
normalise, as its DreamBoothDataset.__getitem__ does), tokenizes the prompts, encodes the pixels
with the VAE and the prompts with the text encoder, then the UNet step. A second, generous
variant keeps the pixels in memory and only re-encodes (`reference_preloaded`).
Ours = `synthdet.personalization.train`, which encodes latents (with flips) and prompt embeddings
once and samples the cached posteriors. Same model (builtin:tiny shape, or
models/base when it exists), method (dreambooth_lora: LoRA r=8 on the attention projections),
batch (instance + class examples), resolution, Min-SNR weighting and optimiser.

The two loops alternate in rounds, so a load change on a shared machine hits both; the result
is the median over rounds. Writes metrics/bench/personalize.json.

    python benchmarks/personalize.py [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from synthdet.core.data import list_images
from synthdet.diffusion.builtin import build_tiny_pipeline
from synthdet.diffusion.images import load_images
from synthdet.diffusion.loading import configure_torch, load_pipeline
from synthdet.params import load_params
from synthdet.personalization.adapters import setup_method
from synthdet.personalization.examples import make_examples
from synthdet.personalization.training import train

ROOT = Path(__file__).resolve().parents[1]


def tiny_pipeline(params):
    if (ROOT / "models/base/model_index.json").is_file():
        return load_pipeline("builtin:tiny", ROOT / "models/base"), "models/base"
    torch.manual_seed(0)
    return build_tiny_pipeline(params.base, params.shared.resolution), "builtin:tiny (random init)"


def reference_steps(
    pipeline, settings, resolution, paths, class_paths, prompts, class_prompt, steps, preload
):
    """The example scripts' loop: images, VAE and text encoder processed on every step."""
    if preload:
        pixels = load_images(paths, resolution)
        class_pixels = load_images(class_paths, resolution)
    else:  # a "dataset" that decodes and transforms at every access

        class Lazy:
            def __init__(self, files):
                self.files = files

            def __len__(self):
                return len(self.files)

            def __getitem__(self, index):
                return load_images([self.files[i] for i in index], resolution)

        pixels, class_pixels = Lazy(paths), Lazy(class_paths)
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    trainable = setup_method(pipeline, settings, "sks", "apple tree", torch.float32)
    optimizer = torch.optim.AdamW(trainable.parameters, lr=settings.learning_rate)
    unet, vae, text_encoder = pipeline.unet, pipeline.vae, pipeline.text_encoder
    unet.train()
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        index = torch.randint(0, len(pixels), (settings.batch_size,), generator=generator)
        class_index = torch.randint(
            0, len(class_pixels), (settings.class_batch_size,), generator=generator
        )
        batch = torch.cat([pixels[index], class_pixels[class_index]])
        flip = torch.rand(len(batch), generator=generator) < 0.5  # RandomHorizontalFlip
        batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
        texts = [prompts[i] for i in index] + [class_prompt] * len(class_index)
        ids = pipeline.tokenizer(
            texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        with torch.no_grad():
            latents = vae.encode(batch).latent_dist.sample() * vae.config.scaling_factor
            embeddings = text_encoder(ids)[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (len(latents),))
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, embeddings).sample
        loss = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
        snr = compute_snr(noise_scheduler, timesteps)
        loss = loss * torch.clamp(snr, max=settings.snr_gamma) / snr
        n = settings.batch_size
        loss = loss[:n].mean() + settings.prior_loss_weight * loss[n:].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable.parameters, settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter())
    return times


def our_steps(pipeline, settings, resolution, paths, class_paths, prompts, class_prompt, steps):
    trainable = setup_method(pipeline, settings, "sks", "apple tree", torch.float32)
    started = time.perf_counter()
    instance = make_examples(pipeline, paths, prompts, resolution, True)
    prior = make_examples(
        pipeline, class_paths, [class_prompt] * len(class_paths), resolution, True
    )
    cache_seconds = time.perf_counter() - started
    times = []
    train(
        pipeline,
        trainable,
        dataclasses.replace(settings, max_train_steps=steps),
        instance,
        prior,
        seed=0,
        accelerator=Accelerator(mixed_precision="no"),
        checkpoint_dir=None,
        fingerprint="bench",
        on_step=lambda step, loss: times.append(time.perf_counter()),
    )
    return times, cache_seconds


def steps_per_second(times: list[float]) -> float:
    # From the end of step 1 to the end of the last: steady state, no first-call warm-up.
    return (len(times) - 1) / (times[-1] - times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "metrics/bench/personalize.json")
    args = parser.parse_args()
    configure_torch()
    params = load_params(ROOT / "params.yaml")
    settings = dataclasses.replace(
        params.personalize, method="dreambooth_lora", train_text_encoder=False
    )
    paths = list_images(ROOT / "data/raw/images")[:8]
    class_paths = list_images(ROOT / "data/raw/images")[8:16]
    prompts = [f"a photo of sks apple tree with {i} apples" for i in range(len(paths))]
    class_prompt, resolution = params.base_prompt, params.shared.resolution
    load = [os.getloadavg()[0]]
    ours, reference, preloaded, caches = [], [], [], []
    for _ in range(args.rounds):
        pipeline, model = tiny_pipeline(params)
        times, cache = our_steps(
            pipeline, settings, resolution, paths, class_paths, prompts, class_prompt, args.steps
        )
        ours.append(steps_per_second(times))
        caches.append(cache)
        for preload, into in ((False, reference), (True, preloaded)):
            pipeline, _ = tiny_pipeline(params)
            times = reference_steps(
                pipeline,
                settings,
                resolution,
                paths,
                class_paths,
                prompts,
                class_prompt,
                args.steps,
                preload,
            )
            into.append(steps_per_second(times))
        load.append(os.getloadavg()[0])
    result = {
        "ours_steps_per_s": round(statistics.median(ours), 3),
        "reference_steps_per_s": round(statistics.median(reference), 3),
        "ratio": round(statistics.median(ours) / statistics.median(reference), 3),
        "reference_preloaded_steps_per_s": round(statistics.median(preloaded), 3),
        "ratio_vs_preloaded": round(statistics.median(ours) / statistics.median(preloaded), 3),
        "rounds": {
            "ours": [round(v, 3) for v in ours],
            "reference": [round(v, 3) for v in reference],
            "reference_preloaded": [round(v, 3) for v in preloaded],
        },
        "ours_one_time_cache_s": round(statistics.median(caches), 3),
        "setup": {
            "model": model,
            "method": settings.method,
            "lora_r": settings.lora.get("r"),
            "resolution": resolution,
            "batch": f"{settings.batch_size} instance + {settings.class_batch_size} class",
            "snr_gamma": settings.snr_gamma,
            "steps_per_round": args.steps,
            "rounds": args.rounds,
        },
        "device": "cpu",
        "gpu": "none: no GPU was lent to this task, so there is no GPU figure",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": [round(v, 2) for v in load],
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
