"""The recipe of a shipped base checkpoint (`builtin:orchard`): domain pretraining on unlabelled
photos, the way Stable Diffusion is pretrained on an image corpus before anyone personalises it.

    python -m synthdet.pretrain --pool ../shared/datasets/applebbch81/images \\
        --exclude data/raw/images --out models/builtin/orchard --vae-steps 3000 --unet-steps 20000

Trains `synthdet.diffusion.training.pretrain` (the `base` stage's own training, params.yaml's `base`
section for sizes and learning rates) on every pool image whose photo (`prepare.group_pattern`)
is not among the photos of `--exclude`, so no tile of an embedded photo (train, val or test of
the default split) is ever seen. Labels are never read. It saves the pipeline (safetensors), the
loss curve, the photo lists and a model card every `--save-every` UNet steps, so a run stopped
early leaves a consistent checkpoint whose card states the steps it really made.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import time
from pathlib import Path

import torch
from diffusers.training_utils import set_seed
from tqdm import tqdm

from synthdet.data import atomic_path, group_of, list_images, write_text
from synthdet.diffusion.builtin import build_tiny_pipeline
from synthdet.diffusion.images import load_images
from synthdet.diffusion.loading import configure_torch
from synthdet.diffusion.loss_curve import LossCurve
from synthdet.diffusion.training import pretrain
from synthdet.params import BaseParams, load_params

CARD = """# builtin:orchard: a tiny Stable-Diffusion-shaped base model of apple orchards

Made by `synthdet.pretrain` (this repository's own recipe). Loaded by the `base` stage with
`base.init: builtin:orchard`; the project never reads the training photos at run time.

## Data
- AppleBBCH81 (ripe apples, BBCH 81-85, LatHort orchard, Dobele, Latvia), Creative Commons
  Attribution 4.0 International (CC BY 4.0). Source: GitHub repository
  `ai-agriculture-circuits-and-systems/AppleBBCH81` (dataset version 1.0.0). Changes: tiles resized
  to {resolution} px (shorter side, bicubic); labels were not used.
- {images} tiles of {photos} photos (`photos.txt`). Excluded: every tile of the {excluded}
  photos embedded in this repository (`excluded_photos.txt`), so no image of the default run's
  train, val or test split was seen.

## Recipe
`{command}`

Architecture and optimiser: params.yaml `base` section at the time of training:
```
{params}
```
Both networks train on random native-scale crops (VAE {vae_crop} px, UNet {unet_crop} px) of
the tiles at {resolution} px, the scale the detector sees; horizontal flips; class prompt
`{prompt}` with {uncond:.0%} caption dropout.

## Training
- Steps: VAE {vae_done} of {vae_steps}, UNet {unet_done} of {unet_steps}, batch {batch}.
- Loss (mean of the last 10 % of steps): VAE {vae_loss}, UNet {unet_loss}; the curve is `loss.tsv`.
- Wall time: {minutes:.1f} min on {machine}, torch {torch}, {threads} thread(s).
- Latent scaling factor: {scaling:.4f}.
"""


def pool_images(pool: Path, exclude: Path, group_pattern: str) -> tuple[list[Path], set[str]]:
    """The pool's images whose photo is not a photo of `exclude`, and the excluded photos."""
    pattern = re.compile(group_pattern)
    excluded = {group_of(p.stem, pattern) for p in list_images(exclude)}
    kept = [p for p in list_images(pool) if group_of(p.stem, pattern) not in excluded]
    return kept, excluded


def run(
    pool: Path, exclude: Path, out: Path, vae_steps: int, unet_steps: int, save_every: int
) -> None:
    params = load_params()
    base: BaseParams = dataclasses.replace(
        params.base, init=None, vae_steps=vae_steps, unet_steps=unet_steps
    )
    configure_torch()
    started = time.perf_counter()
    set_seed(params.shared.seed)
    generator = torch.Generator().manual_seed(params.shared.seed)
    paths, excluded = pool_images(pool, exclude, params.prepare.group_pattern)
    pattern = re.compile(params.prepare.group_pattern)
    photos = sorted({group_of(p.stem, pattern) for p in paths})
    print(f"pool: {len(paths)} tiles of {len(photos)} photos ({len(excluded)} photos excluded)")
    images = load_images(paths, params.shared.resolution)
    pipeline = build_tiny_pipeline(base, params.shared.resolution)
    progress = tqdm(total=vae_steps + unet_steps, desc="pretrain", unit="step")

    def save() -> None:
        curve_steps = {phase: len(curve.losses(phase)) for phase in ("vae", "unet")}
        with atomic_path(out) as tmp:
            pipeline.save_pretrained(tmp, safe_serialization=True)
            write_text(tmp / "loss.tsv", curve.tsv())
            write_text(tmp / "photos.txt", "\n".join(photos) + "\n")
            write_text(tmp / "excluded_photos.txt", "\n".join(sorted(excluded)) + "\n")
            write_text(
                tmp / "README.md",
                CARD.format(
                    resolution=params.shared.resolution,
                    images=len(paths),
                    photos=len(photos),
                    excluded=len(excluded),
                    command=f"python -m synthdet.pretrain --pool {pool} --exclude {exclude} "
                    f"--out {out} --vae-steps {vae_steps} --unet-steps {unet_steps}",
                    params="\n".join(
                        f"{k}: {v}"
                        for k, v in dataclasses.asdict(base).items()
                        if k not in ("init", "pool_dir")
                    ),
                    vae_crop=base.vae_crop,
                    unet_crop=base.unet_crop,
                    prompt=params.base_prompt,
                    uncond=base.unconditional_probability,
                    vae_done=curve_steps["vae"],
                    unet_done=curve_steps["unet"],
                    vae_steps=vae_steps,
                    unet_steps=unet_steps,
                    batch=base.batch_size,
                    vae_loss=_fmt(curve.final("vae")),
                    unet_loss=_fmt(curve.final("unet")),
                    minutes=(time.perf_counter() - started) / 60,
                    machine=f"{platform.machine()} CPU ({os.cpu_count()} cores)"
                    if not torch.cuda.is_available()
                    else torch.cuda.get_device_name(),
                    torch=torch.__version__,
                    threads=torch.get_num_threads(),
                    scaling=pipeline.vae.config.scaling_factor,
                ),
            )

    def on_step(step: int, phase: str, loss: float) -> None:
        progress.update(1)
        progress.set_postfix(phase=phase, loss=f"{loss:.4f}")
        done = step - vae_steps
        if phase == "unet" and (done % save_every == 0 or done == unet_steps):
            save()

    curve = LossCurve(None, on_step=on_step)
    pretrain(pipeline, images, base, params.base_prompt, generator, curve)
    progress.close()
    print(f"pretrain: saved {out} after {(time.perf_counter() - started) / 60:.1f} min")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pool", type=Path, required=True, help="unlabelled image folder")
    parser.add_argument("--exclude", type=Path, required=True, help="images whose photos to skip")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--vae-steps", type=int, required=True)
    parser.add_argument("--unet-steps", type=int, required=True)
    parser.add_argument("--save-every", type=int, default=500, help="UNet steps between saves")
    args = parser.parse_args()
    run(args.pool, args.exclude, args.out, args.vae_steps, args.unet_steps, args.save_every)


if __name__ == "__main__":
    main()
