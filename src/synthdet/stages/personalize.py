"""Stage `personalize@<subject>`: teach the base model one subject from its handful of images.

`personalize.method`: `lora` (peft LoRA on the UNet attention, optionally the text encoders),
`dreambooth` (full UNet fine-tuning, optionally the text encoders), `dreambooth_lora` (DreamBooth's
prior-preservation objective trained as LoRA) or `textual_inversion` (a new placeholder token,
one or several vectors). SD 1.x/2.x and SDXL alike (see synthdet.personalization).

Writes `<out>/` (the weights in diffusers-native files + `adapter.json`, loaded by
`diffusion.load_personalized_pipeline`) and `<metrics>/` (`loss.tsv`, `validation.png` with the
base model left and the personalised model right, `metrics.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path

from accelerate import Accelerator
from diffusers.training_utils import set_seed

from synthdet import captioning, diffusion, personalization, tracking
from synthdet.cli import run_stage
from synthdet.data import DataError, atomic_path, read_yolo_folder, write_json
from synthdet.params import Params
from synthdet.stages.class_images import INFO_NAME, subject_of


def load_prior(
    pipeline, class_dir: Path, subject, settings, cache_text: bool
) -> tuple[personalization.Examples | None, dict]:
    """The class examples when the method uses prior preservation and class images exist."""
    uses_prior = (
        settings.method in personalization.DREAMBOOTH_METHODS
        and settings.prior_loss_weight > 0
        and settings.class_batch_size > 0
    )
    if not uses_prior:
        return None, {"prior_preservation": False}
    info_file = Path(class_dir) / INFO_NAME
    if not info_file.is_file():
        raise DataError(f"{class_dir}: no {INFO_NAME}; run the class-images stage")
    info = json.loads(info_file.read_text())
    if info["class_noun"] != subject.class_noun or info["base_model"] != settings.base_model:
        raise DataError(
            f"{class_dir}: class images of {info['class_noun']!r} by {info['base_model']!r}, but "
            f"the subject is a {subject.class_noun!r} on {settings.base_model!r}; they are "
            "stale, rerun the class-images stage"
        )
    paths = sorted((Path(class_dir) / "images").glob("*.png"))
    if not paths:
        return None, {"prior_preservation": False}
    examples = personalization.make_examples(
        pipeline, paths, [info["prompt"]] * len(paths), settings.resolution, cache_text
    )
    return examples, {
        "prior_preservation": True,
        "class_prompt": info["prompt"],
        "class_images": len(paths),
        "prior_loss_weight": settings.prior_loss_weight,
        "class_batch_size": settings.class_batch_size,
    }


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
    """Train one subject's adapter. `stop_after` (tests) ends after that step, writing only the
    checkpoints, as a killed run would."""
    settings, seed = params.personalize, params.shared.seed
    subject = subject_of(params, subject_name)
    started = time.perf_counter()
    device = diffusion.configure_torch()
    accelerator = Accelerator(
        cpu=device.type == "cpu",  # also under `accelerate launch` on CPU: processes over gloo
        mixed_precision=personalization.resolve_mixed_precision(settings.mixed_precision),
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
    )
    set_seed(seed)
    image_paths = [s.image for s in read_yolo_folder(images, len(params.shared.class_names))]
    image_captions = diffusion.read_captions(captions, image_paths)
    token = captioning.concept_token(subject.identifier, settings.method)
    pipeline = diffusion.load_pipeline(settings.base_model, builtin_base, vae=settings.vae)
    pipeline.to(accelerator.device)
    family = diffusion.family_of(pipeline)
    prompts = [
        template.format(identifier=token, class_noun=subject.class_noun)
        for template in settings.validation_prompts
    ]
    validation = (
        prompts,
        settings.validation_seeds,
        settings.resolution,
        settings.validation_steps,
    )
    stage_params = {
        "personalize": dataclasses.asdict(settings),
        "subject": subject_name,
        **{f"subject.{k}": v for k, v in dataclasses.asdict(subject).items()},
        "family": family,
        "seed": seed,
        "images": len(image_paths),
        "mixed_precision": accelerator.mixed_precision,
        "processes": accelerator.num_processes,
    }

    # Under `accelerate launch` every process trains on its own batches; the main process alone
    # validates, writes the outputs and logs.
    main_process = accelerator.is_main_process
    tracked = (
        tracking.stage_run(
            f"personalize@{subject_name}", params.shared.mlflow_experiment, stage_params
        )
        if main_process
        else contextlib.nullcontext()
    )
    with tracked as run_log:
        if main_process:
            base_images = personalization.validation_images(pipeline, *validation)
            eval_loss_base = personalization.evaluation_loss(
                pipeline, image_paths, image_captions, settings.resolution, seed
            )
        dtype = personalization.weight_dtype(accelerator.mixed_precision)
        trainable = personalization.setup_method(
            pipeline, settings, token, subject.class_noun, dtype
        )
        cache_text = not trainable.text_trains
        instance = personalization.make_examples(
            pipeline, image_paths, image_captions, settings.resolution, cache_text
        )
        prior, prior_info = load_prior(pipeline, class_images, subject, settings, cache_text)
        base_fingerprint = diffusion.model_fingerprint(settings.base_model, builtin_base)
        fingerprint = personalization.run_fingerprint(
            settings=dataclasses.asdict(settings),
            subject=dataclasses.asdict(subject),
            seed=seed,
            base=base_fingerprint,
            captions=image_captions,
            images=[diffusion.sha256_of(p) for p in image_paths],
            prior=prior_info,
        )
        curve = diffusion.LossCurve(run_log)
        on_step = curve.recorder(settings.method) if main_process else lambda step, loss: None
        result = personalization.train(
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
        if stop_after is not None or not main_process:
            return {"steps": result.steps, "resumed_from": result.resumed_from}
        personalised_images = personalization.validation_images(pipeline, *validation)
        with accelerator.autocast():
            eval_loss = personalization.evaluation_loss(
                pipeline, image_paths, image_captions, settings.resolution, seed
            )

        with atomic_path(out) as folder:
            files = personalization.save_adapter(pipeline, trainable, settings.method, folder)
            info = {
                "subject": subject_name,
                "identifier": token,
                "class_noun": subject.class_noun,
                "instance_prompt": f"a photo of {token}"
                + ("" if settings.method == "textual_inversion" else f" {subject.class_noun}"),
                "method": settings.method,
                "family": family,
                "pipeline_class": type(pipeline).__name__,
                "base_model": settings.base_model,
                "base_fingerprint": base_fingerprint,
                "vae": settings.vae,
                "weight_files": files,
                "sha256": diffusion.files_sha256(folder, files),
                "resolution": settings.resolution,
                "max_train_steps": settings.max_train_steps,
                "train_text_encoder": trainable.text_trains
                and settings.method != "textual_inversion",
                "lora": settings.lora if "lora" in settings.method else None,
                "textual_inversion": dataclasses.asdict(settings.textual_inversion)
                if settings.method == "textual_inversion"
                else None,
                "seed": seed,
                **prior_info,
            }
            write_json(folder / diffusion.ADAPTER_INFO_NAME, info)
        grid = personalization.validation_grid(base_images, personalised_images)
        with atomic_path(metrics_dir) as folder:
            folder.mkdir()
            grid.save(folder / "validation.png")
            (folder / "loss.tsv").write_text(curve.tsv())
            metrics = {
                "images": len(image_paths),
                "class_images": prior_info.get("class_images", 0),
                "loss_initial": curve.initial(settings.method),
                "loss_final": curve.final(settings.method),
                # fixed noise and timesteps, the same for both: lower = fits the subject better
                "eval_loss_base": eval_loss_base,
                "eval_loss_personalised": eval_loss,
                "resumed_from": result.resumed_from,
                "seconds": time.perf_counter() - started,
            }
            (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        run_log.log_metrics(metrics)
        run_log.log_artifact(metrics_dir)
        run_log.log_artifact(out)
    if checkpoints is not None:
        shutil.rmtree(checkpoints, ignore_errors=True)  # the run is complete: nothing to resume
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subject", required=True, help="a key of shared.subjects")
    parser.add_argument("--images", type=Path, required=True, help="the subject's images (YOLO)")
    parser.add_argument("--captions", type=Path, required=True, help="the subject's captions")
    parser.add_argument("--class-images", type=Path, required=True, help="class-images output")
    parser.add_argument("--builtin-base", type=Path, required=True, help="builtin:tiny folder")
    parser.add_argument("--out", type=Path, required=True, help="adapter folder")
    parser.add_argument("--metrics", type=Path, required=True, help="loss, grid, metrics folder")
    parser.add_argument("--checkpoints", type=Path, help="resumable training states")
    args = parser.parse_args()
    run_stage(
        lambda params: run(
            params,
            args.subject,
            args.images,
            args.captions,
            args.class_images,
            args.builtin_base,
            args.out,
            args.metrics,
            args.checkpoints,
        )
    )


if __name__ == "__main__":
    main()
