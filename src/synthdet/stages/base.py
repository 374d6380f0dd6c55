"""Stage `base`: build and pretrain the offline `builtin:tiny` Stable Diffusion model.

First the VAE (reconstruction + small KL), then the UNet with the noise-prediction loss on the
class prompt, text encoder frozen, on the real train split (and `base.pool_dir`'s unlabelled
images), starting from random weights or from a shipped domain checkpoint (`base.init`).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from diffusers.training_utils import set_seed
from tqdm import tqdm

from synthdet.core import tracking
from synthdet.core.cli import run_stage
from synthdet.core.data import DataError, atomic_path, list_images, read_yolo_folder, write_text
from synthdet.core.errors import warn
from synthdet.diffusion.builtin import build_tiny_pipeline, load_checkpoint
from synthdet.diffusion.images import load_images
from synthdet.diffusion.loading import configure_torch
from synthdet.diffusion.loss_curve import LossCurve
from synthdet.diffusion.training import pretrain
from synthdet.diffusion.vocabulary import long_text_warning
from synthdet.params import Params


def run(params: Params, train: Path, checkpoints: Path, out: Path, loss_file: Path) -> dict:
    """Build `builtin:tiny` (from scratch, or from the shipped checkpoint `base.init` found in
    `checkpoints`) and train it on native-scale crops of the train split plus `base.pool_dir`.

    Writes the diffusers pipeline folder `out` (safetensors) and the loss curve `loss_file`
    (TSV: step, phase, loss). Raises ModelNotAvailableError if the checkpoint is missing and
    ParamsError if its architecture differs from `base`'s sizes, DataError if `base.pool_dir` is
    missing. Labels are never read.
    """
    base = params.base
    device = configure_torch()
    started = time.perf_counter()
    set_seed(params.shared.seed)
    generator = torch.Generator().manual_seed(params.shared.seed)
    paths = [s.image for s in read_yolo_folder(train, len(params.shared.class_names))]
    if not Path(base.pool_dir).is_dir():
        raise DataError(
            f"base.pool_dir: folder {base.pool_dir} not found; create it or fix the path"
        )
    pool = list_images(Path(base.pool_dir))
    images = load_images(paths + pool, params.shared.resolution)
    if base.init:
        pipeline = load_checkpoint(base.init, checkpoints, base)
    else:
        pipeline = build_tiny_pipeline(base, params.shared.resolution)
    pipeline.to(device)
    prompt_seen, note = long_text_warning(
        pipeline, params.base_prompt, "the base prompt (class_images.prompt)", "the MLflow run"
    )
    if note:
        warn(note)
    stage_params = {
        "base": dataclasses.asdict(base),
        "resolution": params.shared.resolution,
        "prompt": params.base_prompt,
        "prompt_seen": prompt_seen,
        "seed": params.shared.seed,
        "train_images": len(paths),
        "pool_images": len(pool),
    }
    with tracking.stage_run("base", params.shared.mlflow_experiment, stage_params) as mlflow_run:
        # Training from scratch takes minutes on a CPU: show steps and the loss meanwhile.
        progress = tqdm(total=base.vae_steps + base.unet_steps, desc="base", unit="step")

        def on_step(step: int, phase: str, loss: float) -> None:
            progress.update(1)
            progress.set_postfix(phase=phase, loss=f"{loss:.4f}")

        curve = LossCurve(mlflow_run, on_step=on_step)
        scaling_factor = pretrain(
            pipeline,
            images,
            base,
            params.base_prompt,
            generator,
            curve,
            from_checkpoint=bool(base.init),
        )
        progress.close()
        with atomic_path(out) as tmp:
            pipeline.save_pretrained(tmp, safe_serialization=True)
        write_text(loss_file, curve.tsv())
        metrics = {
            "train_images": len(paths),
            "pool_images": len(pool),
            "vae_loss_final": curve.final("vae"),
            "unet_loss_final": curve.final("unet"),
            "latent_scaling_factor": scaling_factor,
            "seconds": time.perf_counter() - started,
        }
        mlflow_run.log_metrics(metrics)
        mlflow_run.log_artifact(loss_file)
    print(
        f"base: {base.init or 'from scratch'}, {len(paths)} train + {len(pool)} pool images, "
        f"{base.vae_steps} VAE + {base.unet_steps} UNet steps, {metrics['seconds']:.0f} s"
    )
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=Path, required=True, help="real train split (YOLO)")
    parser.add_argument(
        "--checkpoints", type=Path, required=True, help="shipped checkpoints (base.init)"
    )
    parser.add_argument("--out", type=Path, required=True, help="diffusers pipeline folder")
    parser.add_argument("--loss", type=Path, required=True, help="loss curve TSV")
    args = parser.parse_args()
    run_stage(lambda params: run(params, args.train, args.checkpoints, args.out, args.loss))


if __name__ == "__main__":
    main()
