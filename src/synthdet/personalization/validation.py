"""Base and personalised model side by side: the validation grid and a fixed-noise loss."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DiffusionPipeline
from PIL import Image

from synthdet.core.data import atomic_path
from synthdet.diffusion.loading import family_of
from synthdet.params import PersonalizeParams
from synthdet.personalization.examples import CAPTIONS_SEEN, make_examples
from synthdet.personalization.training import batch_loss


def validation_images(
    pipeline: DiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    resolution: int,
    steps: int,
) -> list[list[Image.Image]]:
    """One row per prompt, one image per seed, in one batch (CPU generators: the image of a
    (prompt, seed) is the same in any batch and on any device)."""
    with torch.inference_mode():
        images = pipeline(
            prompt=[prompt for prompt in prompts for _ in seeds],
            height=resolution,
            width=resolution,
            num_inference_steps=steps,
            generator=[torch.Generator().manual_seed(seed) for _ in prompts for seed in seeds],
        ).images
    return [images[i * len(seeds) : (i + 1) * len(seeds)] for i in range(len(prompts))]


def validation_grid(
    base: list[list[Image.Image]], personalised: list[list[Image.Image]], gap: int = 8
) -> Image.Image:
    """Base model (left) and personalised model (right), same prompts (rows) and seeds."""
    size = base[0][0].width
    columns = len(base[0])
    width = 2 * columns * size + gap
    grid = Image.new("RGB", (width, len(base) * size), (255, 255, 255))
    for row, (left, right) in enumerate(zip(base, personalised, strict=True)):
        for column, image in enumerate(left):
            grid.paste(image, (column * size, row * size))
        for column, image in enumerate(right):
            grid.paste(image, (columns * size + gap + column * size, row * size))
    return grid


def write_metrics_folder(
    folder: Path, grid: Image.Image, loss_tsv: str, captions: Sequence[dict], metrics: dict
) -> None:
    """metrics/personalize/draw<d>/<subject>/, written atomically: validation.png (the grid),
    loss.tsv, CAPTIONS_SEEN (each caption as the text encoder read it) and metrics.json."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        grid.save(tmp / "validation.png")
        (tmp / "loss.tsv").write_text(loss_tsv)
        (tmp / CAPTIONS_SEEN).write_text("".join(json.dumps(row) + "\n" for row in captions))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))


@torch.no_grad()
def evaluation_loss(
    pipeline: DiffusionPipeline,
    image_paths: Sequence[Path],
    prompts: Sequence[str],
    resolution: int,
    seed: int = 0,
    repeats: int = 4,
) -> float:
    """The plain noise-prediction loss of `pipeline` on the images with their prompts, at noise
    and timesteps fixed by `seed`: the same draw for the base and the personalised model, so
    the two numbers compare (a single training loss is far too noisy for that)."""
    examples = make_examples(pipeline, image_paths, prompts, resolution, cache_text=True)
    generator = torch.Generator().manual_seed(seed)
    unet = pipeline.unet
    losses = [
        batch_loss(
            examples,
            len(examples),
            unet=unet,
            text_encoders=[],
            noise_scheduler=DDPMScheduler.from_config(pipeline.scheduler.config),
            family=family_of(pipeline),
            scaling_factor=pipeline.vae.config.scaling_factor,
            shift_factor=getattr(pipeline.vae.config, "shift_factor", None) or 0.0,
            prior_loss_weight=0.0,
            snr_gamma=None,
            generator=generator,
            device=unet.device,
            dtype=unet.dtype,
        ).item()
        for _ in range(repeats)
    ]
    return sum(losses) / len(losses)


@dataclass(frozen=True)
class Check:
    """The same check of the base and the personalised model: validation images (one row per
    `personalize.validation_prompts` template naming the subject by `token`, one column per seed)
    and the fixed-noise evaluation loss on the subject's images with their captions."""

    settings: PersonalizeParams
    token: str
    class_noun: str
    image_paths: Sequence[Path]
    captions: Sequence[str]
    seed: int
    resolution: int  # shared.resolution

    def __call__(
        self,
        pipeline: DiffusionPipeline,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> tuple[list[list[Image.Image]], float]:
        s = self.settings
        prompts = [
            template.format(identifier=self.token, class_noun=self.class_noun)
            for template in s.validation_prompts
        ]
        images = validation_images(
            pipeline, prompts, s.validation_seeds, self.resolution, s.validation_steps
        )
        with autocast():
            loss = evaluation_loss(
                pipeline, self.image_paths, self.captions, self.resolution, self.seed
            )
        return images, loss
