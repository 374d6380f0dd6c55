"""check-images: the generated images checked before any detector trains on them.

Right after generate: the leakage guard (a generated image that is a near-copy of a test image
fails the run, naming both files: a test photo reached personalisation, and every detector
trained on such images would be scored on its own training data), FID and KID from the
Inception features generate cached (computed here only for images it did not see), shared with
the leak guard (`metrics.realism_of_features`), the CLIP score of each image with its prompt
when `evaluate.clip_model` is set (else `clip_score: null` and the reason), the real-vs-generated
classifier test and the subject check (`synthdet.image_checks.classifiers`; each with `valid`
1/0 and `invalid_reason`, and a warning when invalid), and the object-level fidelity of the
generated boxes' crops (`synthdet.image_checks.fidelity`, `objects.*`; a warning when they
drift). Writes `metrics/draws/draw<d>/images.json`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from synthdet.artifacts.manifest import MANIFEST
from synthdet.core.cli import run_stage
from synthdet.core.data import (
    DataError,
    Sample,
    list_images,
    read_jsonl,
    read_yolo_folder,
    write_json,
)
from synthdet.core.errors import warn
from synthdet.core.tracking import stage_run
from synthdet.generation.filters import FEATURES_FILE, FeatureCache
from synthdet.image_checks import classifiers, fidelity, metrics
from synthdet.params import GenerateParams, Params


def check_test_leakage(
    generated: list[Path],
    test: list[Path],
    threshold: float,
    inception: torch.nn.Module,
    generated_features: torch.Tensor | None = None,
) -> float:
    """Raise DataError when a generated image is a near-copy (cosine similarity of Inception
    features above `threshold`) of a test image; return the highest similarity. The test images
    are compared at the generated images' size, whose features (`metrics.inception_features`,
    computed at their own size) can be passed in."""
    with Image.open(generated[0]) as first:
        size = max(first.size)
    matches = metrics.nearest_matches(generated, test, size, inception, generated_features)
    leaks = sorted((m for m in matches if m.similarity > threshold), key=lambda m: -m.similarity)
    if leaks:
        pairs = "; ".join(f"{m.image} ~ {m.match} ({m.similarity:.3f})" for m in leaks[:5])
        raise DataError(
            f"{len(leaks)} generated images are near-copies of test images (similarity above "
            f"evaluate.leak_threshold={threshold}): {pairs}. Check that no val/test photo "
            "reached the personalize split."
        )
    return max(m.similarity for m in matches)


def clip_metrics(manifest: Path, images: Sequence[Path], model: str | None) -> dict:
    if model is None:
        return {
            "clip_score": None,
            "clip_score_reason": "evaluate.clip_model is null: no CLIP model configured (the "
            "offline default has none); set it to a hub id or a local CLIP folder",
        }
    if not manifest.is_file():
        return {"clip_score": None, "clip_score_reason": f"{manifest} is missing (no prompts)"}
    prompts = {row.get("file"): row.get("prompt") for row in read_jsonl(manifest)}
    missing = [image.name for image in images if not prompts.get(image.name)]
    if missing:
        raise DataError(f"{manifest}: no prompt for {', '.join(missing[:5])}")
    score = metrics.clip_score(images, [prompts[image.name] for image in images], model)
    return {"clip_score": round(score, 4), "clip_score_reason": None}


def classifier_metrics(
    params: Params,
    real: Sequence[Path],
    generated: Sequence[Path],
    train: Sequence[Sample],
    val: Sequence[Sample],
) -> dict[str, float | int | str | None]:
    config, seed = params.evaluate, params.shared.seed
    net = (config.classifier_model, config.classifier_size, config.classifier_epochs)
    two_sample = classifiers.two_sample_test(real, generated, *net, config.classifier_folds, seed)
    subject = classifiers.subject_check(train, val, generated, *net, seed)
    if not subject.valid:
        warn(
            f"check-images: the subject check is invalid: {subject.invalid_reason}; its shares "
            "are null. Raise evaluate.classifier_epochs or evaluate.classifier_size, or label "
            "more train images (more held-out crops), so that the classifier beats chance on "
            "held-out crops before its shares mean anything"
        )
    if not two_sample.valid:
        warn(
            f"check-images: the real-vs-generated test is invalid: {two_sample.invalid_reason}. "
            "Raise evaluate.classifier_epochs or evaluate.classifier_size (or use a larger "
            "evaluate.classifier_model) until it fits its training images"
        )
    return {
        **{f"real_vs_generated.{k}": v for k, v in two_sample.summary().items()},
        **{f"subject.{k}": v for k, v in subject.summary().items()},
    }


def object_metrics(
    generated: Sequence[Path],
    generated_dir: Path,
    train: Sequence[Sample],
    val: Sequence[Sample],
    inception: torch.nn.Module,
    seed: int,
    *,
    generate: GenerateParams,
) -> dict[str, float | int | str | None]:
    """`objects.*`: the generated objects (their sources' boxes, from the manifest) against the
    handful's and real val's (`fidelity.object_fidelity`); warns when they drift, with what to
    change for how `generate` made them, or when the check cannot run (no manifest, no source
    boxes, too few crops)."""
    if not (generated_dir / MANIFEST).is_file():
        result: fidelity.ObjectFidelity | str = (
            f"{generated_dir / MANIFEST} is missing: no source boxes for the generated images"
        )
    else:
        with_boxes, sources = fidelity.generated_samples(generated, generated_dir, train)
        result = fidelity.object_fidelity(with_boxes, sources, val, inception, seed)
    if isinstance(result, str):
        warn(f"check-images: the object check did not run: {result}")
        summary = fidelity.invalid_summary(result)
    else:
        summary = result.summary()
        if summary["drift"]:
            warn(
                f"check-images: the generated objects drift from the handful's beyond real "
                f"objects' own spread: {summary['drift_reason']}. "
                + (
                    "With img2img the base VAE's round trip sets the objects' colour "
                    "(docs/generation.md, recipes): -S generate.vae_residual=true (the "
                    "default) keeps the source's colours; or fine-tune the VAE on your images "
                    "(base.vae_steps)"
                    if generate.mode == "img2img" and not generate.vae_residual
                    else "Start from a base checkpoint whose domain has such objects "
                    "(base.init), fine-tune it on your images (base.vae_steps, "
                    "base.unet_steps) or personalise longer (personalize.max_train_steps)"
                )
            )
    return {f"objects.{key}": value for key, value in summary.items()}


def run(
    params: Params,
    generated_dir: Path,
    test_dir: Path,
    real_images_dir: Path,
    train_dir: Path,
    val_dir: Path,
    metrics_path: Path,
) -> dict:
    """Check `generated_dir/images` against the test images (leak), the real images of
    `real_images_dir` (FID, KID, classifier), the train/val subject crops and the object crops
    (generated boxes from `generated_dir/manifest.jsonl`'s sources in `train_dir`); write and
    return the metrics. Raises DataError on a leak or a manifest source that is not in train."""
    config = params.evaluate
    generated = list_images(generated_dir / "images")
    if not generated:
        raise DataError(f"{generated_dir / 'images'}: no generated image to check")
    test = list_images(test_dir / "images")
    logged = {"evaluate": vars(config), "generated": len(generated), "test": len(test)}
    with stage_run("check-images", params.shared.mlflow_experiment, logged) as mlflow_run:
        inception = metrics.FidInceptionFeatures()
        # generate's feature cache (by file hash, read only here) already holds the generated
        # and usually the real images' features: one Inception pass per image in the pipeline.
        cache = FeatureCache(generated_dir / FEATURES_FILE, inception)
        features = torch.from_numpy(cache.get(generated))
        leak = check_test_leakage(generated, test, config.leak_threshold, inception, features)
        summary: dict = {"leak_max_similarity": round(leak, 6)}
        real = list_images(real_images_dir)
        real_features = torch.from_numpy(cache.get(real))
        realism = metrics.realism_of_features(real_features, features, params.shared.seed)
        summary |= {
            "fid": round(realism.fid, 4),
            "kid_mean": round(realism.kid_mean, 6),
            "kid_std": round(realism.kid_std, 6),
            "kid_subset_size": realism.kid_subset_size,
            "fid_real_images": len(real),
            "fid_generated_images": len(generated),
        }
        manifest = generated_dir / MANIFEST
        summary |= clip_metrics(manifest, generated, config.clip_model)
        classes = len(params.shared.class_names)
        train = read_yolo_folder(train_dir, classes)
        val = read_yolo_folder(val_dir, classes)
        summary |= classifier_metrics(params, real, generated, train, val)
        summary |= object_metrics(
            generated,
            generated_dir,
            train,
            val,
            inception,
            params.shared.seed,
            generate=params.generate,
        )
        write_json(metrics_path, summary)
        mlflow_run.log_metrics(summary)
    share = summary["subject.generated_share"]
    print(
        f"check-images: {len(generated)} images, no leak (max similarity "
        f"{summary['leak_max_similarity']:.3f}), FID {summary['fid']:.1f}, KID "
        f"{summary['kid_mean']:.3f}, subject in "
        + (f"{share:.2f}" if share is not None else "n/a (invalid check)")
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generated", type=Path, required=True, help="generate's folder")
    parser.add_argument("--test", type=Path, required=True, help="real test YOLO folder")
    parser.add_argument(
        "--real-images", type=Path, required=True, help="real images for FID, KID, classifier"
    )
    parser.add_argument("--train", type=Path, required=True, help="real train YOLO folder")
    parser.add_argument("--val", type=Path, required=True, help="real val YOLO folder")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    args = parser.parse_args()
    run_stage(
        lambda params: run(
            params, args.generated, args.test, args.real_images, args.train, args.val, args.metrics
        )
    )


if __name__ == "__main__":
    main()
