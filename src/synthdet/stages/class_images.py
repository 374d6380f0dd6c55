"""Stage `class-images@<subject>`: prior-preservation images of the subject's class.

The base model draws `class_images.count` images of `class_images.prompt` ("a photo of apple
tree") for DreamBooth's prior-preservation loss. They are an output of their own, so changing a
LoRA or training setting does not draw them again. Writes `images/<index:05d>.png` and
`class_images.json` (synthdet.artifacts.class_images); `count: 0` writes no image (no prior).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from synthdet.artifacts.class_images import CLASS_IMAGES_INFO, IMAGES, ClassImagesInfo
from synthdet.core import tracking
from synthdet.core.cli import run_stage
from synthdet.core.data import atomic_path
from synthdet.core.errors import warn
from synthdet.diffusion.hashing import derive_seed
from synthdet.diffusion.loading import configure_torch, load_pipeline
from synthdet.diffusion.vocabulary import long_text_warning
from synthdet.params import Params


def run(params: Params, subject: str, builtin_base: Path, out: Path) -> dict:
    """Draw `class_images.count` images of the subject's class with the base model.

    Inputs: the base model (`personalize.base_model`; `builtin:tiny` from `builtin_base`).
    Outputs: `out/images/<index:05d>.png` and `out/class_images.json`; returns the metrics.
    Errors: ParamsError for an unknown subject, ModelNotAvailableError for a missing model.
    """
    settings, personalize = params.class_images, params.personalize
    class_noun = params.subject(subject).class_noun
    device = configure_torch()
    started = time.perf_counter()
    prompt = settings.prompt.format(class_noun=class_noun)
    guided = settings.guidance_scale > 1  # diffusers reads the negative prompt only then
    if settings.count and not guided and settings.negative_prompt.strip():
        warn(
            f"class_images.guidance_scale={settings.guidance_scale} is <= 1: classifier-free "
            f"guidance is off, so class_images.negative_prompt ({settings.negative_prompt!r}) "
            f"is ignored; {CLASS_IMAGES_INFO} records negative_prompt: null. Set it above 1 "
            "(e.g. 5) to use guidance."
        )
    stage_params = {
        "class_images": dataclasses.asdict(settings),
        "subject": subject,
        "prompt": prompt,
        "resolution": params.shared.resolution,
        "base_model": personalize.base_model,
        "seed": params.shared.seed,
    }
    with tracking.stage_run(
        f"class-images@{subject}", params.shared.mlflow_experiment, stage_params
    ) as mlflow_run:
        pipeline, seen = None, prompt
        if settings.count:
            pipeline = load_pipeline(personalize.base_model, builtin_base, vae=personalize.vae).to(
                device
            )
            seen, note = long_text_warning(
                pipeline, prompt, "class_images.prompt", CLASS_IMAGES_INFO
            )
            if note:
                warn(note)
        with atomic_path(out) as folder:
            (folder / IMAGES).mkdir(parents=True)
            for first in range(0, settings.count, settings.batch_size):
                indices = range(first, min(first + settings.batch_size, settings.count))
                with torch.inference_mode():
                    images = pipeline(
                        prompt=[prompt] * len(indices),
                        negative_prompt=[settings.negative_prompt] * len(indices),
                        height=params.shared.resolution,
                        width=params.shared.resolution,
                        num_inference_steps=settings.num_inference_steps,
                        guidance_scale=settings.guidance_scale,
                        generator=[
                            torch.Generator().manual_seed(
                                derive_seed(params.shared.seed, i, bits=32)
                            )
                            for i in indices
                        ],
                    ).images
                for index, image in zip(indices, images, strict=True):
                    image.save(folder / IMAGES / f"{index:05d}.png")
            ClassImagesInfo(
                class_noun=class_noun,
                prompt=prompt,
                count=settings.count,
                base_model=personalize.base_model,
                vae=personalize.vae,
                negative_prompt=settings.negative_prompt if guided else None,
                guidance_scale=settings.guidance_scale,
                prompt_seen=seen,
            ).write(folder)
        metrics = {"images": settings.count, "seconds": time.perf_counter() - started}
        mlflow_run.log_metrics(metrics)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subject", required=True, help="a key of shared.subjects")
    parser.add_argument("--builtin-base", type=Path, required=True, help="builtin:tiny folder")
    parser.add_argument("--out", type=Path, required=True, help="class images folder")
    args = parser.parse_args()
    run_stage(lambda params: run(params, args.subject, args.builtin_base, args.out))


if __name__ == "__main__":
    main()
