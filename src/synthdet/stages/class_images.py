"""Stage `class-images@<subject>`: prior-preservation images of the subject's class.

The base model draws `class_images.count` images of `class_images.prompt` ("a photo of apple
tree") for DreamBooth's prior-preservation loss. They are an output of their own, so changing a
LoRA or training setting does not draw them again. Writes `images/<index:05d>.png` and
`class_images.json` (prompt, class noun, base model); `count: 0` writes no image (no prior).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from synthdet import diffusion, tracking
from synthdet.cli import run_stage
from synthdet.data import atomic_path, write_json
from synthdet.params import Params, ParamsError

INFO_NAME = "class_images.json"


def subject_of(params: Params, subject: str):
    if subject not in params.shared.subjects:
        raise ParamsError(
            f"params: no subject 'shared.subjects.{subject}'; subjects: "
            f"{', '.join(params.shared.subjects)}"
        )
    return params.shared.subjects[subject]


def run(params: Params, subject: str, builtin_base: Path, out: Path) -> dict:
    settings, personalize = params.class_images, params.personalize
    class_noun = subject_of(params, subject).class_noun
    device = diffusion.configure_torch()
    started = time.perf_counter()
    prompt = settings.prompt.format(class_noun=class_noun)
    stage_params = {
        "class_images": dataclasses.asdict(settings),
        "subject": subject,
        "prompt": prompt,
        "base_model": personalize.base_model,
        "seed": params.shared.seed,
    }
    with tracking.stage_run(
        f"class-images@{subject}", params.shared.mlflow_experiment, stage_params
    ) as run_log:
        pipeline = None
        if settings.count:
            pipeline = diffusion.load_pipeline(
                personalize.base_model, builtin_base, vae=personalize.vae
            ).to(device)
        with atomic_path(out) as folder:
            (folder / "images").mkdir(parents=True)
            for first in range(0, settings.count, settings.batch_size):
                indices = range(first, min(first + settings.batch_size, settings.count))
                with torch.inference_mode():
                    images = pipeline(
                        prompt=[prompt] * len(indices),
                        negative_prompt=[settings.negative_prompt] * len(indices),
                        height=settings.resolution,
                        width=settings.resolution,
                        num_inference_steps=settings.num_inference_steps,
                        guidance_scale=settings.guidance_scale,
                        generator=[
                            torch.Generator().manual_seed(
                                diffusion.image_seed(params.shared.seed, i)
                            )
                            for i in indices
                        ],
                    ).images
                for index, image in zip(indices, images, strict=True):
                    image.save(folder / "images" / f"{index:05d}.png")
            write_json(
                folder / INFO_NAME,
                {
                    "class_noun": class_noun,
                    "prompt": prompt,
                    "count": settings.count,
                    "base_model": personalize.base_model,
                    "vae": personalize.vae,
                },
            )
        metrics = {"images": settings.count, "seconds": time.perf_counter() - started}
        run_log.log_metrics(metrics)
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
