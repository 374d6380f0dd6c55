"""Benchmark: images/s of the generate stage's engine against a naive loop, in one run.

The naive loop is what a first script does: one `pipe(prompt)` call per image with the
pipeline's default settings (its saved scheduler, guidance 7.5, the adapter as loaded), at the
same model, steps and resolution. The engine is `synthdet.generation.Engine` with the
generate params (batches of `generate.batch_size`, prompt embeddings once per prompt,
inference mode, SDPA attention, LoRA fused, DPM-Solver++). Rounds alternate between the two so
that a busy machine slows both alike; the median round counts.

    python benchmarks/generate.py                    # models/base + draw 0's adapter
    python benchmarks/generate.py --untrained        # builtin:tiny shapes, random weights

Writes metrics/bench/generate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from synthdet.diffusion.builtin import build_tiny_pipeline
from synthdet.diffusion.loading import configure_torch
from synthdet.generation.engine import Engine
from synthdet.params import load_params
from synthdet.personalization.adapters import load_personalized_pipeline


def load(args: argparse.Namespace, params) -> tuple[object, str]:
    """A fresh personalised pipeline (or builtin:tiny with random weights) and its name."""
    if args.untrained:
        torch.manual_seed(0)
        pipeline = build_tiny_pipeline(params.base, params.shared.resolution)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline, "builtin:tiny architecture, random weights"
    pipeline = load_personalized_pipeline(args.adapter, args.builtin_base)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, f"{params.personalize.base_model} + adapter {args.adapter}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--builtin-base", type=Path, default=Path("models/base"))
    parser.add_argument(
        "--adapter", type=Path, help="default: models/personalize/draw0/<1st subject>"
    )
    parser.add_argument("--untrained", action="store_true", help="random builtin:tiny weights")
    parser.add_argument("--images", type=int, default=16, help="images per round and method")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("metrics/bench/generate.json"))
    args = parser.parse_args()
    params = load_params(args.params)
    settings = params.generate
    subject_name, subject = next(iter(params.shared.subjects.items()))
    args.adapter = args.adapter or Path("models/personalize/draw0") / subject_name
    device = configure_torch()
    prompts = [
        template.format(identifier=subject.identifier, class_noun=subject.class_noun)
        for template in settings.prompts
    ]
    naive_pipeline, model = load(args, params)
    naive_pipeline.to(device)
    size, steps = params.shared.resolution, settings.num_inference_steps
    engine = Engine(load(args, params)[0], settings, size, device)

    def naive_round() -> float:
        started = time.perf_counter()
        for i in range(args.images):
            naive_pipeline(
                prompts[i % len(prompts)],
                num_inference_steps=steps,
                height=size,
                width=size,
                generator=torch.Generator().manual_seed(i),
            )
        return args.images / (time.perf_counter() - started)

    def engine_round() -> float:
        started = time.perf_counter()
        for first in range(0, args.images, settings.batch_size):
            indices = range(first, min(first + settings.batch_size, args.images))
            engine([prompts[i % len(prompts)] for i in indices], list(indices))
        return args.images / (time.perf_counter() - started)

    naive_pipeline(prompts[0], num_inference_steps=1, height=size, width=size)  # warm-up
    engine(prompts[:1], [0])
    load_before = os.getloadavg()
    naive, fast = [], []
    for _ in range(args.rounds):
        naive.append(naive_round())
        fast.append(engine_round())
    result = {
        "model": model,
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "cpu_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "images_per_round": args.images,
        "rounds": args.rounds,
        "steps": steps,
        "resolution": size,
        "batch_size": settings.batch_size,
        "scheduler": settings.scheduler,
        "naive_images_per_s": round(statistics.median(naive), 4),
        "engine_images_per_s": round(statistics.median(fast), 4),
        "naive_rounds": [round(x, 4) for x in naive],
        "engine_rounds": [round(x, 4) for x in fast],
    }
    result["speedup"] = round(result["engine_images_per_s"] / result["naive_images_per_s"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
