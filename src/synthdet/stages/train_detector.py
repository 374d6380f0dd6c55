"""Stage train-detector: train one YOLO detector per data variant and seed.

Every variant and seed trains with the same `train_detector` params (`train_args()`: the `yolo`
block, overridden by the `preset` if one is set); only the training images (`synthdet.variants`)
and the seed differ. The `real` detector of shared.seed is also the baseline that annotates the
synthetic images.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

from synthdet import detection, variants
from synthdet.cli import run_stage
from synthdet.data import DataError, list_images
from synthdet.errors import warn
from synthdet.params import Params
from synthdet.tracking import stage_run


def training_folders(
    variant: variants.Variant,
    real_dir: Path,
    synthetic_dir: Path | None,
    seed: int,
    scratch: Path,
) -> tuple[list[Path], variants.Composition]:
    """YOLO folders holding exactly the variant's images: the sources themselves when a variant
    uses all of a source, otherwise linked subsets in `scratch`."""
    if variant.uses_synthetic and synthetic_dir is None:
        raise DataError(f"variant {variant.name} trains on synthetic images: pass --synthetic")
    real_images = list_images(Path(real_dir) / "images")
    synthetic_images = list_images(Path(synthetic_dir) / "images") if variant.uses_synthetic else []
    composition = variants.compose(variant, real_images, synthetic_images, seed)
    folders = []
    for name, source, chosen, available in (
        ("real", real_dir, composition.real, real_images),
        ("synthetic", synthetic_dir, composition.synthetic, synthetic_images),
    ):
        if not chosen:
            continue
        if len(chosen) == len(available):
            folders.append(Path(source))
        else:
            folders.append(variants.subset_view(Path(source), chosen, scratch / name))
    return folders, composition


def label_boxes(images: Sequence[Path], folder: Path | None) -> int:
    """The boxes in the YOLO labels of `images` of `folder` (no label file: a background image)."""
    total = 0
    for image in images:
        label = Path(folder) / "labels" / f"{Path(image).stem}.txt"
        if label.is_file():
            total += sum(1 for line in label.read_text().splitlines() if line.strip())
    return total


def empty_labels_warning(variant: str, seed: int, images: int) -> str:
    return (
        f"detector variant {variant} (seed {seed}) trains on {images} images whose labels hold "
        "no box: it can only learn that there is nothing to find (its metrics say "
        "empty_label_set: 1). For auto-labelled images lower annotate_with_baseline.confidence, "
        "or label by construction with generate.mode=img2img and "
        "annotate_with_baseline.source_boxes=true."
    )


def run(
    params: Params,
    variant_name: str,
    seed: int,
    real_dir: Path,
    synthetic_dir: Path | None,
    val_folder: Path,
    out_dir: Path,
    results_csv: Path,
) -> dict:
    config = params.train_detector
    variant = variants.parse(variant_name)
    train_args = config.train_args()
    logged_params = {
        "variant": variant.name,
        "real_share": variant.real_share,
        "synthetic_fraction": variant.synthetic_fraction,
        "model": config.model_source,
        "preset": config.preset,
        "seed": seed,
        "real": str(real_dir),
        "synthetic": str(synthetic_dir),
        "val": str(val_folder),
        "yolo": train_args,
    }
    stage = f"train-detector@{variant.name}-{seed}"
    with (
        stage_run(stage, params.shared.mlflow_experiment, logged_params) as tracking,
        tempfile.TemporaryDirectory(prefix="synthdet-variant-") as scratch,
    ):
        folders, composition = training_folders(
            variant, real_dir, synthetic_dir, params.shared.seed, Path(scratch)
        )
        boxes = {
            "real_boxes": label_boxes(composition.real, real_dir),
            "synthetic_boxes": label_boxes(composition.synthetic, synthetic_dir),
        }
        empty = sum(boxes.values()) == 0
        if empty:
            images = len(composition.real) + len(composition.synthetic)
            warn(empty_labels_warning(variant.name, seed, images))
        result = detection.train_detector(
            model=config.model_source,
            train_folders=folders,
            val_folder=val_folder,
            class_names=params.shared.class_names,
            seed=seed,
            yolo_args=train_args,
            out_dir=out_dir,
            on_epoch=lambda row: tracking.log_metrics(row, step=int(row["epoch"])),
        )
        detection.write_epochs_csv(result.epochs, results_csv)
        metrics = {
            "train_images": result.train_images,
            "real_images": len(composition.real),
            "synthetic_images": len(composition.synthetic),
            "synthetic_share": round(composition.synthetic_share, 6),
            **boxes,
            "empty_label_set": int(empty),  # 1: no box to learn from (a number, for MLflow)
            "epochs": len(result.epochs),
            **{f"best.{name}": value for name, value in result.best.items()},
        }
        tracking.log_metrics(metrics)
        tracking.log_artifact(out_dir, "detector")
        tracking.log_artifact(results_csv)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variant", required=True, help="real, synthetic, mixed or mix-r<share>-f<fraction>"
    )
    parser.add_argument("--seed", type=int, required=True, help="training seed")
    parser.add_argument("--real", type=Path, required=True, help="real train YOLO folder")
    parser.add_argument(
        "--synthetic", type=Path, default=None, help="auto-labelled synthetic YOLO folder"
    )
    parser.add_argument("--val", type=Path, required=True, help="YOLO folder to validate on")
    parser.add_argument("--out", type=Path, required=True, help="output detector folder")
    parser.add_argument("--results", type=Path, required=True, help="per-epoch results CSV")
    args = parser.parse_args()
    run_stage(
        lambda params: run(
            params,
            args.variant,
            args.seed,
            args.real,
            args.synthetic,
            args.val,
            args.out,
            args.results,
        )
    )


if __name__ == "__main__":
    main()
