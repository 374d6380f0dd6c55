"""Benchmark: peak memory of the generate stage as the number of images grows.

Each count N runs the whole stage (`synthdet.stages.generate.run`: plan, generate, filters,
manifest) in a fresh process on the committed models (models/base, models/personalize/draw0) in an
empty folder, and records that process's peak resident memory (`ru_maxrss`) and its resident
memory in use (after `malloc_trim`) when 25, 50, 75 and 100 % of the images had been written
(sampled every 0.25 s). Images are streamed
to disk batch by batch, so the peak should not grow with N beyond the O(N) bookkeeping (one
2048-float Inception feature vector and one manifest row per image, 8 KB each).

To make a held-back image visible, the run is at a higher resolution than the default
(`--resolution`, default 256 px: one image is 192 KB as uint8 and 768 KB as float32) with few
denoising steps (memory does not depend on them). The tiny model is trained at 64 px, so these
images are not meant to be looked at.

    python benchmarks/generate_memory.py [--counts 16 64 256] [--resolution 256] [--steps 2]

Writes metrics/bench/generate_memory.json.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from synthdet.params import load_params

ROOT = Path(__file__).resolve().parents[1]


def child(count: int, resolution: int, steps: int, out: Path) -> dict:
    """Run the stage once in this process; return its peak memory and timing."""
    from synthdet.stages import generate

    params = load_params(ROOT / "params.yaml")
    settings = dataclasses.replace(
        params.generate,
        num_images=count,
        num_inference_steps=steps,
        # every image stays in the FID and the manifest: nothing is dropped by clustering
        filters=dataclasses.replace(params.generate.filters, outliers="none"),
    )
    shared = dataclasses.replace(params.shared, resolution=resolution)
    params = dataclasses.replace(params, shared=shared, generate=settings)
    samples: list[tuple[int, float]] = []  # (images written so far, resident MiB)
    done = threading.Event()
    pending = out / "generated" / "pending"

    # glibc keeps freed memory for reuse, so raw RSS wanders by tens of MiB; trimming before
    # each reading makes it the memory in use.
    malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim

    def sample_rss() -> None:
        page_mib = os.sysconf("SC_PAGE_SIZE") / 2**20
        while not done.wait(0.25):
            malloc_trim(0)
            with open("/proc/self/statm") as statm:
                resident = int(statm.read().split()[1]) * page_mib
            written = len(list(pending.glob("*.png"))) if pending.is_dir() else 0
            samples.append((written, resident))

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    started = time.perf_counter()
    metrics = generate.run(
        params,
        ROOT / "models/base",
        ROOT / "models/personalize/draw0",
        ROOT / "data/prepared/train",
        ROOT / "data/handfuls/draw0",
        out / "generated",
        out / "generate.json",
    )
    done.set()
    sampler.join()
    # resident memory when a quarter, half... of the images had been written: held images or
    # per-image leaks would make it climb with the count
    by_progress = {}
    for quarter in (1, 2, 3, 4):
        reached = [rss for written, rss in samples if written >= quarter * count // 4]
        by_progress[f"{25 * quarter}%"] = round(reached[0], 1) if reached else None
    return {
        "images": metrics["images"],
        "seconds": round(time.perf_counter() - started, 2),
        # Linux reports ru_maxrss in KiB
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_in_use_mib_when_written": by_progress,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "metrics/bench/generate_memory.json")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.resolution, args.steps, args.child_dir)))
        return
    runs = []
    for count in args.counts:
        with tempfile.TemporaryDirectory(prefix="synthdet-memory-") as folder:
            env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}
            command = [sys.executable, __file__, "--child", str(count), "--child-dir", folder]
            command += ["--resolution", str(args.resolution), "--steps", str(args.steps)]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"generate with {count} images failed:\n{done.stderr[-3000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    peaks = [run["peak_rss_mib"] for run in runs]
    smallest, largest = runs[0], runs[-1]
    image_mib = args.resolution**2 * 3 / 2**20
    result = {
        "runs": runs,
        "peak_rss_growth_mib": round(peaks[-1] - peaks[0], 1),
        # during generation of the largest count, from a quarter to all of its images written
        "generation_rss_growth_mib": round(
            largest["rss_in_use_mib_when_written"]["100%"]
            - largest["rss_in_use_mib_when_written"]["25%"],
            1,
        ),
        "peak_rss_growth_mib_per_100_images": round(
            100 * (peaks[-1] - peaks[0]) / (largest["images"] - smallest["images"]), 2
        ),
        # what holding every image in memory would add, as uint8 (float32 is 4x)
        "held_images_would_add_mib": round(image_mib * (largest["images"] - smallest["images"]), 1),
        "image_mib_uint8": round(image_mib, 3),
        "resolution": args.resolution,
        "steps": args.steps,
        "batch_size": load_params(ROOT / "params.yaml").generate.batch_size,
        "model": "models/base + models/personalize (builtin:tiny, trained at 64 px)",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
