"""Stage `generate`: synthetic images from the base model with the personalisation LoRA.

Writes `images/<index:05d>.png` and `manifest.jsonl` (one line per image: file name in images/,
prompt, negative prompt, seed, base model, adapter sha256). Image i depends only on
(shared.seed, i), not on the batch size. The folder is written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler
from tqdm import tqdm

from synthdet import diffusion, tracking
from synthdet.cli import run_stage
from synthdet.data import DataError, atomic_path
from synthdet.params import Params


def run(params: Params, builtin_base: Path, adapter: Path, out: Path) -> dict:
    settings = params.generate
    base_model = params.personalize.base_model
    device = diffusion.configure_torch()
    started = time.perf_counter()
    adapter_info = diffusion.read_adapter_info(adapter)
    if adapter_info["base_model"] != base_model:
        raise DataError(
            f"{adapter}: the adapter was trained on {adapter_info['base_model']!r}, but "
            f"personalize.base_model is {base_model!r}; rerun the personalize stage"
        )
    shared = params.shared
    prompts = [
        template.format(identifier=shared.identifier, class_noun=shared.class_noun)
        for template in settings.prompts
    ]
    pipeline = diffusion.load_pipeline(base_model, builtin_base)
    pipeline.load_lora_weights(str(adapter), weight_name=adapter_info["weight_name"])
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)
    pipeline.to(device)
    stage_params = {
        "generate": dataclasses.asdict(settings),
        "base_model": base_model,
        "adapter_sha256": adapter_info["sha256"],
        "seed": params.shared.seed,
    }

    with tracking.stage_run("generate", params.shared.mlflow_experiment, stage_params) as run_log:
        with atomic_path(out) as folder:
            (folder / "images").mkdir(parents=True)
            manifest = []
            progress = tqdm(total=settings.num_images, desc="generate", unit="image")
            for first in range(0, settings.num_images, settings.batch_size):
                indices = range(first, min(first + settings.batch_size, settings.num_images))
                seeds = [diffusion.image_seed(params.shared.seed, i) for i in indices]
                batch_prompts = [prompts[i % len(prompts)] for i in indices]
                with torch.inference_mode():
                    images = pipeline(
                        prompt=batch_prompts,
                        negative_prompt=[settings.negative_prompt] * len(indices),
                        height=settings.resolution,
                        width=settings.resolution,
                        num_inference_steps=settings.num_inference_steps,
                        guidance_scale=settings.guidance_scale,
                        # CPU generators: the same noise on any device and in any batch.
                        generator=[torch.Generator().manual_seed(seed) for seed in seeds],
                    ).images
                for index, seed, prompt, image in zip(
                    indices, seeds, batch_prompts, images, strict=True
                ):
                    file = f"{index:05d}.png"
                    image.save(folder / "images" / file)
                    manifest.append(
                        {
                            "file": file,
                            "prompt": prompt,
                            "negative_prompt": settings.negative_prompt,
                            "seed": seed,
                            "base_model": base_model,
                            "adapter_sha256": adapter_info["sha256"],
                        }
                    )
                progress.update(len(indices))
            progress.close()
            (folder / "manifest.jsonl").write_text(
                "".join(json.dumps(row, sort_keys=True) + "\n" for row in manifest)
            )
        seconds = time.perf_counter() - started
        metrics = {"images": settings.num_images, "seconds": seconds}
        run_log.log_metrics(metrics)
        run_log.log_artifact(out / "manifest.jsonl")
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--builtin-base", type=Path, required=True, help="builtin:tiny folder")
    parser.add_argument("--adapter", type=Path, required=True, help="personalize stage output")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args()
    run_stage(lambda params: run(params, args.builtin_base, args.adapter, args.out))


if __name__ == "__main__":
    main()
