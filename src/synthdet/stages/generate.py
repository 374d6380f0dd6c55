"""Stage `generate`: the synthetic dataset, from every subject's personalised model.

Writes into `--out` (persistent between runs, see `synthdet.generation`): `images/` (kept
images, `<subject>_<index:06d>.png`), `dropped/` (filtered out), `manifest.jsonl` (one row per
image: prompt, negative prompt, seed, mode, source train image, base model and revision, adapter
hash, filter scores, kept or why dropped) and `cache/` (Inception features); `--metrics` gets the
counts and FID before / after the filters. Run it on several devices with
`accelerate launch --multi_gpu --num_processes N -m synthdet.stages.generate ...`: the images are
byte-identical to a one-process run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm import tqdm

from synthdet.artifacts.manifest import MANIFEST
from synthdet.core import tracking
from synthdet.core.cli import run_stage
from synthdet.core.data import DataError, write_json
from synthdet.diffusion.loading import configure_torch, model_revision
from synthdet.generation.engine import Engine, load_controlnet
from synthdet.generation.modes import MODES
from synthdet.generation.plan import SubjectPlan, engine_identity, subject_images, subject_plans
from synthdet.generation.run import Distribution, generate_dataset
from synthdet.params import Params
from synthdet.personalization.adapters import load_personalized_pipeline


def run(
    params: Params,
    builtin_base: Path,
    adapters: Path,
    train: Path,
    personalize: Path,
    out: Path,
    metrics_file: Path,
) -> dict | None:
    """Generate (or reuse) every subject's images with its personalised model, then filter them.

    Inputs: the adapters (`adapters/<subject>/`, personalize's outputs) on the base model
    (`builtin:tiny` from `builtin_base`), the real train split `train` (img2img / ControlNet
    sources, FID reference) and the personalisation images `personalize` (memorisation filter).
    Outputs: `out/` (images/, dropped/, manifest.jsonl, cache/) and `metrics_file`; returns the
    metrics, None in the processes other than the main one. Errors: DataError for an adapter
    trained on another base model, missing source images, or every image dropped by the filters;
    ModelNotAvailableError for a model that cannot be loaded.
    """
    settings, seed, resolution = params.generate, params.shared.seed, params.shared.resolution
    device = configure_torch()
    # configure_torch gives every process all cores, also under `accelerate launch` (which asks
    # for 1 thread per CPU process): on CPU the float summation order, hence the last bit of a
    # pixel, depends on the thread count, and images must not depend on the process count.
    state = PartialState(cpu=device.type == "cpu")
    device = state.device if device.type == "cuda" else device
    started = time.perf_counter()
    plans = subject_plans(params, adapters, builtin_base, train, personalize)
    controlnet = None
    if MODES[settings.mode].uses_controlnet:
        controlnet = load_controlnet(settings.controlnet_model, device)
    identity = engine_identity(
        settings,
        resolution,
        model_revision(settings.controlnet_model) if controlnet is not None else None,
    )

    def load_engine(subject: SubjectPlan) -> Engine:
        pipeline = load_personalized_pipeline(
            adapters / subject.name, builtin_base, params.personalize.base_model
        )
        return Engine(pipeline, settings, resolution, device, controlnet)

    stage_params = {
        "generate": dataclasses.asdict(settings),
        "resolution": resolution,
        "subjects": {p.name: p.identity for p in plans},
        "seed": seed,
        "processes": state.num_processes,
    }
    tracked = (
        tracking.stage_run("generate", params.shared.mlflow_experiment, stage_params)
        if state.is_main_process
        else contextlib.nullcontext()
    )
    with tracked as mlflow_run:
        progress = tqdm(
            total=sum(p.count for p in plans),
            desc="generate",
            unit="image",
            disable=not state.is_main_process,
        )
        stats, _, metrics = generate_dataset(
            plans,
            settings,
            resolution,
            seed,
            out,
            load_engine,
            real_images=subject_images(train, ".*"),
            identity=identity,
            distribution=Distribution(
                state.process_index, state.num_processes, state.wait_for_everyone, gather_object
            ),
            on_image=progress.update,
        )
        progress.close()
        if metrics is None:  # not the main process: its images are written
            return None
        metrics.update(
            main_process_generation_seconds=round(stats.seconds, 2),
            main_process_images_computed=stats.computed,
            seconds=round(time.perf_counter() - started, 2),
            processes=state.num_processes,
        )
        write_json(metrics_file, metrics)
        mlflow_run.log_metrics(metrics)
        mlflow_run.log_artifact(out / MANIFEST)
    if metrics["kept"] == 0:
        raise DataError(
            f"all {metrics['images']} generated images were dropped by the filters "
            f"(see {metrics_file}); loosen generate.filters"
        )
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--builtin-base", type=Path, required=True, help="builtin:tiny folder")
    parser.add_argument("--adapter", type=Path, required=True, help="personalize outputs")
    parser.add_argument("--train", type=Path, required=True, help="real train split (YOLO)")
    parser.add_argument("--personalize", type=Path, required=True, help="the draw's handful folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder (persistent)")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    args = parser.parse_args()
    run_stage(
        lambda params: run(
            params,
            args.builtin_base,
            args.adapter,
            args.train,
            args.personalize,
            args.out,
            args.metrics,
        )
    )


if __name__ == "__main__":
    main()
