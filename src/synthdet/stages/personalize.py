"""Stage `personalize`: LoRA fine-tuning of the base model's UNet on the captioned real images.

Saves diffusers LoRA weights (`pipe.load_lora_weights(out)` loads them into a stock pipeline) and
`adapter.json` (base model, steps, LoRA config, sha256 of the weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import set_seed
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict

from synthdet import diffusion, tracking
from synthdet.cli import run_stage
from synthdet.data import atomic_path, read_yolo_folder, write_text
from synthdet.params import Params, ParamsError


def run(
    params: Params, images: Path, captions: Path, builtin_base: Path, out: Path, loss_file: Path
) -> dict:
    settings = params.personalize
    device = diffusion.configure_torch()
    started = time.perf_counter()
    set_seed(params.shared.seed)
    generator = torch.Generator().manual_seed(params.shared.seed)
    image_paths = [s.image for s in read_yolo_folder(images, len(params.shared.class_names))]
    image_captions = diffusion.read_captions(captions, image_paths)
    pipeline = diffusion.load_pipeline(settings.base_model, builtin_base).to(device)
    try:
        lora_config = LoraConfig(**settings.lora)
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"params: 'personalize.lora' is not a valid LoraConfig: {exc}") from exc
    unet = pipeline.unet
    unet.requires_grad_(False)
    unet.add_adapter(lora_config)
    stage_params = {
        "personalize": dataclasses.asdict(settings),
        "seed": params.shared.seed,
        "images": len(image_paths),
    }

    with tracking.stage_run(
        "personalize", params.shared.mlflow_experiment, stage_params
    ) as run_log:
        curve = diffusion.LossCurve(run_log)
        pixels = diffusion.with_flips(diffusion.load_images(image_paths, settings.resolution))
        latent_distributions = diffusion.encode_latent_distributions(
            pipeline.vae, pixels, settings.batch_size
        )
        # A mirrored image keeps its caption.
        text_embeddings = diffusion.encode_prompts(pipeline, image_captions * 2).cpu()
        lora_parameters = [p for p in unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(lora_parameters, lr=settings.learning_rate)
        lr_scheduler = get_scheduler(
            settings.lr_scheduler,
            optimizer,
            num_warmup_steps=settings.lr_warmup_steps,
            num_training_steps=settings.max_train_steps,
        )
        diffusion.train_noise_prediction(
            unet,
            DDPMScheduler.from_config(pipeline.scheduler.config),
            latent_distributions,
            text_embeddings,
            scaling_factor=pipeline.vae.config.scaling_factor,
            steps=settings.max_train_steps,
            batch_size=settings.batch_size,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            generator=generator,
            on_step=curve.recorder("lora"),
        )

        with atomic_path(out) as folder:
            StableDiffusionPipeline.save_lora_weights(
                folder,
                unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
                # Stores the LoRA config (lora_alpha!) so load_lora_weights rebuilds it exactly.
                unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
                weight_name=diffusion.LORA_WEIGHT_NAME,
            )
            adapter_info = {
                "base_model": settings.base_model,
                "max_train_steps": settings.max_train_steps,
                "resolution": settings.resolution,
                "lora": settings.lora,
                "weight_name": diffusion.LORA_WEIGHT_NAME,
                "sha256": diffusion.sha256_of(folder / diffusion.LORA_WEIGHT_NAME),
            }
            (folder / diffusion.ADAPTER_INFO_NAME).write_text(
                json.dumps(adapter_info, indent=2, sort_keys=True) + "\n"
            )
        write_text(loss_file, curve.tsv())
        metrics = {
            "images": len(image_paths),
            "loss_initial": curve.initial("lora"),
            "loss_final": curve.final("lora"),
            "seconds": time.perf_counter() - started,
        }
        run_log.log_metrics(metrics)
        run_log.log_artifact(loss_file)
        run_log.log_artifact(out)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=Path, required=True, help="personalize images (YOLO)")
    parser.add_argument("--captions", type=Path, required=True, help="captions JSON lines")
    parser.add_argument("--builtin-base", type=Path, required=True, help="builtin:tiny folder")
    parser.add_argument("--out", type=Path, required=True, help="LoRA adapter folder")
    parser.add_argument("--loss", type=Path, required=True, help="loss curve TSV")
    args = parser.parse_args()
    run_stage(
        lambda params: run(
            params, args.images, args.captions, args.builtin_base, args.out, args.loss
        )
    )


if __name__ == "__main__":
    main()
