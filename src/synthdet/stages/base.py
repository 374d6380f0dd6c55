"""Stage `base`: build and pretrain the offline `builtin:tiny` Stable Diffusion model.

First the VAE (reconstruction + small KL), then the UNet with the noise-prediction loss on the
class prompt, text encoder frozen, on the real train split only.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import set_seed

from synthdet import diffusion, tracking
from synthdet.cli import run_stage
from synthdet.data import atomic_path, read_yolo_folder, write_text
from synthdet.params import Params


def run(params: Params, train: Path, out: Path, loss_file: Path) -> dict:
    base = params.base
    device = diffusion.configure_torch()
    started = time.perf_counter()
    set_seed(params.shared.seed)
    generator = torch.Generator().manual_seed(params.shared.seed)
    samples = read_yolo_folder(train, len(params.shared.class_names))
    images = diffusion.load_images([s.image for s in samples], base.resolution)
    pipeline = diffusion.build_tiny_pipeline(base).to(device)
    pipeline.text_encoder.requires_grad_(False)
    class_prompt = base.class_prompt
    stage_params = {
        "base": dataclasses.asdict(base),
        "class_prompt": class_prompt,
        "seed": params.shared.seed,
        "train_images": len(samples),
    }

    with tracking.stage_run("base", params.shared.mlflow_experiment, stage_params) as run_log:
        curve = diffusion.LossCurve(run_log)
        diffusion.train_vae(pipeline.vae, images, base, generator, curve.recorder("vae"))
        latent_distributions = diffusion.encode_latent_distributions(
            pipeline.vae, diffusion.with_flips(images), base.batch_size
        )
        scaling_factor = diffusion.latent_scaling_factor(latent_distributions)
        pipeline.vae.register_to_config(scaling_factor=scaling_factor)

        unet = pipeline.unet
        optimizer = torch.optim.AdamW(unet.parameters(), lr=base.unet_learning_rate)
        lr_scheduler = get_scheduler(
            base.lr_scheduler,
            optimizer,
            num_warmup_steps=base.lr_warmup_steps,
            num_training_steps=base.unet_steps,
        )
        class_embedding, empty_embedding = diffusion.encode_prompts(pipeline, [class_prompt, ""])
        diffusion.train_noise_prediction(
            unet,
            pipeline.scheduler,
            latent_distributions,
            class_embedding.expand(len(latent_distributions), -1, -1),
            scaling_factor=scaling_factor,
            steps=base.unet_steps,
            batch_size=base.batch_size,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            generator=generator,
            on_step=curve.recorder("unet", first_step=base.vae_steps + 1),
            unconditional_embedding=empty_embedding,
            unconditional_probability=base.unconditional_probability,
        )

        with atomic_path(out) as tmp:
            pipeline.save_pretrained(tmp, safe_serialization=True)
        write_text(loss_file, curve.tsv())
        metrics = {
            "train_images": len(samples),
            "vae_loss_final": curve.final("vae"),
            "unet_loss_final": curve.final("unet"),
            "latent_scaling_factor": scaling_factor,
            "seconds": time.perf_counter() - started,
        }
        run_log.log_metrics(metrics)
        run_log.log_artifact(loss_file)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=Path, required=True, help="real train split (YOLO)")
    parser.add_argument("--out", type=Path, required=True, help="diffusers pipeline folder")
    parser.add_argument("--loss", type=Path, required=True, help="loss curve TSV")
    args = parser.parse_args()
    run_stage(lambda params: run(params, args.train, args.out, args.loss))


if __name__ == "__main__":
    main()
