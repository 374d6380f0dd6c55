"""Stage `personalize@<subject>`: teach the base model one subject from its handful of images.

`personalize.method` is one of `synthdet.params.methods` (LoRA, DreamBooth, DreamBooth-LoRA, textual
inversion), SD 1.x/2.x and SDXL alike (see synthdet.personalization). Writes `<out>/` (the
weights in diffusers-native files + `adapter.json`, synthdet.artifacts.adapter) and `<metrics>/`
(`loss.tsv`, `validation.png` with the base model left and the personalised model right,
`metrics.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import time
from pathlib import Path

from diffusers.training_utils import set_seed

from synthdet.core import tracking
from synthdet.core.cli import run_stage
from synthdet.core.data import atomic_path, read_yolo_folder
from synthdet.core.errors import warn
from synthdet.diffusion.hashing import json_sha256, sha256_of
from synthdet.diffusion.loading import configure_torch, family_of, load_pipeline, model_fingerprint
from synthdet.diffusion.loss_curve import LossCurve
from synthdet.diffusion.training import read_captions
from synthdet.params import Params, methods
from synthdet.personalization import adapters, training, validation
from synthdet.personalization.examples import captions_seen, make_examples, prior_examples


def run(
    params: Params,
    subject_name: str,
    images: Path,
    captions: Path,
    class_images: Path,
    builtin_base: Path,
    out: Path,
    metrics_dir: Path,
    checkpoints: Path | None = None,
    stop_after: int | None = None,
) -> dict:
    """Train one subject's adapter with `personalize.method`.

    Inputs: the subject's images (YOLO folder `images`), their captions (`captions` JSON lines),
    the class-images output (`class_images`, used by methods with prior preservation) and the
    base model (`builtin:tiny` from `builtin_base`). Outputs: the adapter folder `out` (weights +
    adapter.json), `metrics_dir` (loss.tsv, validation.png, metrics.json) and resumable states in
    `checkpoints` while training (removed at the end); returns the metrics. `stop_after` (tests)
    ends after that step, writing only the checkpoints, as a killed run would. Errors:
    ParamsError (unknown subject, invalid LoRA config, unsupported precision), DataError (missing
    or stale captions or class images), ModelNotAvailableError (base model not loadable).
    """
    settings, seed, resolution = params.personalize, params.shared.seed, params.shared.resolution
    subject, method = params.subject(subject_name), methods.method(params.personalize.method)
    started = time.perf_counter()
    accelerator = training.make_accelerator(settings, configure_torch())
    set_seed(seed)
    image_paths = [s.image for s in read_yolo_folder(images, len(params.shared.class_names))]
    image_captions = read_captions(captions, image_paths)
    token = method.concept_token(subject.identifier)
    pipeline = load_pipeline(settings.base_model, builtin_base, vae=settings.vae)
    pipeline.to(accelerator.device)
    check = validation.Check(
        settings, token, subject.class_noun, image_paths, image_captions, seed, resolution
    )
    stage_params = {
        **{"personalize": dataclasses.asdict(settings), "subject": subject_name},
        "resolution": resolution,
        **{f"subject.{k}": v for k, v in dataclasses.asdict(subject).items()},
        **{"family": family_of(pipeline), "seed": seed, "images": len(image_paths)},
        **{"mixed_precision": accelerator.mixed_precision, "processes": accelerator.num_processes},
    }
    # Under `accelerate launch` every process trains on its own batches; the main process alone
    # validates, writes the outputs and logs.
    main = accelerator.is_main_process
    run_name, experiment = f"personalize@{subject_name}", params.shared.mlflow_experiment
    tracked = tracking.stage_run(run_name, experiment, stage_params)
    with tracked if main else contextlib.nullcontext() as mlflow_run:
        if main:
            base_images, eval_loss_base = check(pipeline)
        dtype = training.weight_dtype(accelerator.mixed_precision)
        trainable = adapters.setup_method(pipeline, settings, token, subject.class_noun, dtype)
        cache_text = not trainable.text_trains
        seen, truncated = captions_seen(pipeline, image_paths, image_captions)
        if truncated and main:
            warn(f"personalize@{subject_name}: {truncated}")
        instance = make_examples(pipeline, image_paths, image_captions, resolution, cache_text)
        prior, prior_info = prior_examples(
            pipeline, class_images, subject, settings, resolution, cache_text
        )
        base_fingerprint = model_fingerprint(settings.base_model, builtin_base)
        # What the training depends on: a checkpoint of another run is never resumed.
        inputs = [image_captions, [sha256_of(p) for p in image_paths], prior_info, seed, resolution]
        fingerprint = json_sha256([dataclasses.asdict(settings), subject, base_fingerprint, inputs])
        curve = LossCurve(mlflow_run)
        on_step = curve.recorder(settings.method) if main else lambda step, loss: None
        result = training.train(
            pipeline,
            trainable,
            settings,
            instance,
            prior,
            seed=seed,
            accelerator=accelerator,
            checkpoint_dir=checkpoints,
            fingerprint=fingerprint,
            on_step=on_step,
            stop_after=stop_after,
        )
        accelerator.wait_for_everyone()
        if stop_after is not None or not main:
            return {"steps": result.steps, "resumed_from": result.resumed_from}
        personalised_images, eval_loss = check(pipeline, autocast=accelerator.autocast)
        with atomic_path(out) as folder:  # weights + adapter.json
            trained = (pipeline, trainable, settings, (subject_name, subject))
            adapters.write_adapter(folder, *trained, base_fingerprint, seed, prior_info, resolution)
        metrics = {
            "images": len(image_paths),
            "class_images": prior_info.get("class_images", 0),
            "loss_initial": curve.initial(settings.method),
            "loss_final": curve.final(settings.method),
            # fixed noise and timesteps, the same for both: lower = fits the subject better
            "eval_loss_base": eval_loss_base,
            "eval_loss_personalised": eval_loss,
            "resumed_from": result.resumed_from,
            "captions_truncated": sum(row["seen"] != row["caption"] for row in seen),
            "seconds": time.perf_counter() - started,
        }
        grid = validation.validation_grid(base_images, personalised_images)
        validation.write_metrics_folder(metrics_dir, grid, curve.tsv(), seen, metrics)
        mlflow_run.log_metrics(metrics)
        mlflow_run.log_artifact(metrics_dir)
        mlflow_run.log_artifact(out)
    if checkpoints is not None:
        shutil.rmtree(checkpoints, ignore_errors=True)  # the run is complete: nothing to resume
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subject", dest="subject_name", required=True, help="a subject key")
    parser.add_argument("--images", type=Path, required=True, help="the subject's images (YOLO)")
    parser.add_argument("--captions", type=Path, required=True, help="the subject's captions")
    parser.add_argument("--class-images", type=Path, required=True, help="class-images output")
    parser.add_argument("--builtin-base", type=Path, required=True, help="builtin:tiny folder")
    parser.add_argument("--out", type=Path, required=True, help="adapter folder")
    parser.add_argument("--metrics", dest="metrics_dir", type=Path, required=True, help="metrics")
    parser.add_argument("--checkpoints", type=Path, help="resumable training states")
    args = parser.parse_args()
    run_stage(lambda params: run(params, **vars(args)))


if __name__ == "__main__":
    main()
