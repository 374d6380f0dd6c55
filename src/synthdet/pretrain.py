"""The recipe of a shipped base checkpoint (`builtin:orchard`): domain pretraining on unlabelled
photos, the way Stable Diffusion is pretrained on an image corpus before anyone personalises it.

    python -m synthdet.pretrain --pool ../shared/datasets/applebbch81/images \\
        --exclude data/raw/images --out models/builtin/orchard --vae-steps 1200 --unet-steps 10000
    python -m synthdet.pretrain --pool ../shared/datasets/applebbch81/images \\
        --exclude data/raw/images --out models/builtin/orchard --init models/builtin/orchard \\
        --decoder-steps 10000

Trains `synthdet.diffusion.training.pretrain` (the `base` stage's own training, params.yaml's `base`
section for sizes and learning rates) on every pool image whose photo (`prepare.group_pattern`)
is not among the photos of `--exclude`, so no tile of an embedded photo (train, val or test of
the default split) is ever seen. Labels are never read. `--init` continues a checkpoint of this
recipe; `--decoder-steps` then fine-tunes the VAE's decoder alone (`train_vae_decoder`), which
keeps the latents the UNet learned. It saves the pipeline (safetensors), the loss curve, the
runs so far (`recipe.json`), the photo lists and a model card every `--save-every` steps, so a
run stopped early leaves a consistent checkpoint whose card states the steps it really made.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import time
from pathlib import Path

import torch
from diffusers.training_utils import set_seed
from tqdm import tqdm

from synthdet.core.data import DataError, atomic_path, group_of, list_images, write_text
from synthdet.diffusion.builtin import build_tiny_pipeline, load_checkpoint
from synthdet.diffusion.images import load_images
from synthdet.diffusion.loading import configure_torch
from synthdet.diffusion.loss_curve import LossCurve
from synthdet.diffusion.training import pretrain, train_vae_decoder
from synthdet.params import BaseParams, Params, ParamsError, load_params

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
Run in this order, each run continuing the checkpoint of the one before (`recipe.json`):
{commands}

Architecture and optimiser: params.yaml `base` section at the time of training:
```
{params}
```
Both networks train on random native-scale crops (VAE {vae_crop} px, UNet {unet_crop} px) of
the tiles at {resolution} px, the scale the detector sees; horizontal flips; class prompt
`{prompt}` with {uncond:.0%} caption dropout. A decoder run fine-tunes the VAE's decoder alone
(MSE, encoder frozen, as Stability AI's `sd-vae-ft-mse`): the latents, the UNet trained on them
and the latent scaling factor stay valid.

## Training
- Steps: {steps}, batch {batch}.
- Loss (mean of the last 10 % of each phase's steps): {losses}; the curve is `loss.tsv`.
- Wall time: {minutes:.1f} min in all (per run above).
- Latent scaling factor: {scaling:.4f}.
"""
RECIPE = "recipe.json"  # the runs that made a checkpoint, in order
LOSS_FILE = "loss.tsv"
PHASES = ("vae", "unet", "decoder")


def pool_images(pool: Path, exclude: Path, group_pattern: str) -> tuple[list[Path], set[str]]:
    """The pool's images whose photo is not a photo of `exclude`, and the excluded photos."""
    pattern = re.compile(group_pattern)
    excluded = {group_of(p.stem, pattern) for p in list_images(exclude)}
    kept = [p for p in list_images(pool) if group_of(p.stem, pattern) not in excluded]
    return kept, excluded


def model_card(
    recipe: list[dict],
    params: Params,
    base: BaseParams,
    images: int,
    photos: int,
    excluded: int,
    curve: LossCurve,
    scaling: float,
) -> str:
    """The checkpoint's README: data, the recipe's runs, steps, losses and wall time."""
    name = {"vae": "VAE", "unet": "UNet", "decoder": "decoder"}
    trained = [phase for phase in PHASES if curve.losses(phase)]
    return CARD.format(
        resolution=params.shared.resolution,
        images=images,
        photos=photos,
        excluded=excluded,
        commands="\n".join(
            f"{number}. `{r['command']}`: {r['minutes']} min on {r['machine']}, torch "
            f"{r['torch']}, {r['threads']} thread(s)"
            for number, r in enumerate(recipe, 1)
        ),
        params="\n".join(
            f"{k}: {v}"
            for k, v in dataclasses.asdict(base).items()
            if k not in ("init", "pool_dir", "vae_steps", "unet_steps")
        ),
        vae_crop=base.vae_crop,
        unet_crop=base.unet_crop,
        prompt=params.base_prompt,
        uncond=base.unconditional_probability,
        steps=", ".join(f"{name[p]} {len(curve.losses(p))}" for p in trained),
        batch=base.batch_size,
        losses=", ".join(f"{name[p]} {curve.final(p):.4f}" for p in trained),
        minutes=sum(r["minutes"] for r in recipe),
        scaling=scaling,
    )


def earlier_runs(init: Path | None) -> list[dict]:
    """The recipe runs of the checkpoint `init` continues (none: from scratch).

    Raises DataError if `init` is not a checkpoint of this recipe (no recipe.json or loss.tsv).
    """
    if init is None:
        return []
    if not (init / RECIPE).is_file() or not (init / LOSS_FILE).is_file():
        raise DataError(
            f"--init {init}: no {RECIPE} and {LOSS_FILE}, so it is not a checkpoint of this "
            "recipe; continue a folder written by synthdet.pretrain, or train from scratch "
            "without --init"
        )
    return json.loads((init / RECIPE).read_text())


def run(
    pool: Path,
    exclude: Path,
    out: Path,
    steps: dict[str, int],
    save_every: int,
    init: Path | None = None,
    decoder_crop: int = 64,
    decoder_learning_rate: float = 1e-3,
) -> None:
    """Train (or continue, from `init`) the checkpoint `out` on the pool's images.

    steps: {"vae": ..., "unet": ..., "decoder": ...}; the VAE phase trains encoder and decoder
    (from scratch only: a new encoder would invalidate the UNet's latents), the decoder phase
    the decoder alone. Raises ParamsError for VAE steps with `init`, DataError for an `init` that
    this recipe did not write.
    """
    if init is not None and steps["vae"]:
        raise ParamsError(
            f"--vae-steps {steps['vae']} with --init: retraining the encoder changes the latents "
            "the checkpoint's UNet learned; use --decoder-steps to improve the decoder alone"
        )
    params = load_params()
    if steps["decoder"] and decoder_crop > params.shared.resolution:
        raise ParamsError(
            f"--decoder-crop {decoder_crop} is above shared.resolution "
            f"{params.shared.resolution}, the size of the images it crops; lower it"
        )
    runs = earlier_runs(init)
    base: BaseParams = dataclasses.replace(
        params.base,
        # any checkpoint name passes the "no VAE steps from scratch" check; --init is loaded
        init=params.base.init or "builtin:orchard" if init else None,
        vae_steps=steps["vae"],
        unet_steps=steps["unet"],
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
    if init is None:
        pipeline = build_tiny_pipeline(base, params.shared.resolution)
    else:
        pipeline = load_checkpoint(f"builtin:{init.name}", init.parent, base)
    command = (
        f"python -m synthdet.pretrain --pool {pool} --exclude {exclude} --out {out} "
        + (f"--init {init} " if init else "")
        + " ".join(f"--{phase}-steps {steps[phase]}" for phase in PHASES if steps[phase])
        + (
            f" --decoder-crop {decoder_crop} --decoder-learning-rate {decoder_learning_rate}"
            if steps["decoder"]
            else ""
        )
    )
    progress = tqdm(total=sum(steps.values()), desc="pretrain", unit="step")

    def save() -> None:
        this_run = {
            "command": command,
            "steps": {phase: len(curve.losses(phase)) - done[phase] for phase in PHASES},
            "minutes": round((time.perf_counter() - started) / 60, 1),
            "machine": f"{platform.machine()} CPU ({os.cpu_count()} cores)"
            if not torch.cuda.is_available()
            else torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
        recipe = [*runs, this_run]
        with atomic_path(out) as tmp:
            pipeline.save_pretrained(tmp, safe_serialization=True)
            write_text(tmp / LOSS_FILE, curve.tsv())
            write_text(tmp / RECIPE, json.dumps(recipe, indent=2) + "\n")
            write_text(tmp / "photos.txt", "\n".join(photos) + "\n")
            write_text(tmp / "excluded_photos.txt", "\n".join(sorted(excluded)) + "\n")
            write_text(
                tmp / "README.md",
                model_card(
                    recipe,
                    params,
                    base,
                    len(paths),
                    len(photos),
                    len(excluded),
                    curve,
                    pipeline.vae.config.scaling_factor,
                ),
            )

    def on_step(step: int, phase: str, loss: float) -> None:
        progress.update(1)
        progress.set_postfix(phase=phase, loss=f"{loss:.4f}")
        if (step - first_step) % save_every == 0 and step - first_step < sum(steps.values()):
            save()  # the last step's state is saved once, after training

    curve = LossCurve(None, on_step=on_step)
    if init is not None:  # this run's steps continue the earlier runs' curve
        curve.extend_tsv((init / LOSS_FILE).read_text())
    done = {phase: len(curve.losses(phase)) for phase in PHASES}
    first_step = len(curve.rows)  # this run's steps follow the earlier runs' in loss.tsv
    pretrain(
        pipeline,
        images,
        base,
        params.base_prompt,
        generator,
        curve,
        from_checkpoint=init is not None,
        step_offset=first_step,
    )
    if steps["decoder"]:
        train_vae_decoder(
            pipeline.vae,
            images,
            base,
            steps=steps["decoder"],
            crop=decoder_crop,
            learning_rate=decoder_learning_rate,
            generator=generator,
            on_step=curve.recorder("decoder", first_step=len(curve.rows) + 1),
        )
    save()
    progress.close()
    print(f"pretrain: saved {out} after {(time.perf_counter() - started) / 60:.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pool", type=Path, required=True, help="unlabelled image folder")
    parser.add_argument("--exclude", type=Path, required=True, help="images whose photos to skip")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--init", type=Path, help="continue this checkpoint of the recipe")
    for phase in PHASES:
        parser.add_argument(f"--{phase}-steps", type=int, default=0)
    parser.add_argument("--decoder-crop", type=int, default=64, help="px, decoder fine-tuning")
    parser.add_argument("--decoder-learning-rate", type=float, default=1e-3)
    parser.add_argument("--save-every", type=int, default=500, help="steps between saves")
    args = parser.parse_args()
    steps = {phase: getattr(args, f"{phase}_steps") for phase in PHASES}
    run(
        args.pool,
        args.exclude,
        args.out,
        steps,
        args.save_every,
        args.init,
        args.decoder_crop,
        args.decoder_learning_rate,
    )


if __name__ == "__main__":
    main()
