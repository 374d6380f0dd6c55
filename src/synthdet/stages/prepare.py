"""prepare: validate the raw dataset and split it by photo into train/val/test.

The subjects' handfuls are drawn from the train split by the `handful@<draw>` stages
(synthdet.stages.handful), one per few_shot.draws value. A dataset, or a train / val / test split,
without a single box stops the stage; the end prints a summary (images, groups and boxes per split,
repairs, what was dropped or skipped: `formats.summary`) and warns when a class of
`shared.class_names` has no box in a split, a val / test split holds under 5 % of the images or the
median object at `train_detector.yolo.imgsz` is under 8 px or over 128 px
(`formats.summary.fitting_imgsz`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from synthdet import formats
from synthdet.core import data, tracking
from synthdet.core.cli import run_stage
from synthdet.core.errors import warn
from synthdet.formats import summary
from synthdet.params import Params

STAGE = "prepare"  # the DVC stage, and its MLflow run's name


def split_statistics(split: dict[str, list[data.Sample]]) -> dict[str, float]:
    stats: dict[str, float] = {}
    for name, samples in split.items():
        boxes = sum(len(s.boxes) for s in samples)
        stats[f"{name}.images"] = len(samples)
        stats[f"{name}.boxes"] = boxes
        stats[f"{name}.boxes_per_image"] = round(boxes / len(samples), 3) if samples else 0.0
    return stats


def run(params: Params, raw_dir: Path, out_dir: Path, metrics_path: Path) -> dict[str, float]:
    """Import the dataset at `raw_dir` and split it by photo.

    Inputs: `raw_dir`, a YOLO, COCO or Pascal VOC dataset (`prepare.format`, auto-detected by
    default). Outputs: under `out_dir`, the YOLO folders `train/`, `val/`, `test/` (each
    written whole or not at all) and `dataset.yaml`;
    `metrics_path` (images and boxes per split, repairs, drops: `artifacts.metrics`), also logged
    to MLflow; prints a summary; returns the metrics. Errors: DataError for unreadable data, a
    dataset or split without a box, or too few groups.
    """
    p = params.prepare
    logged = {"prepare": vars(p)}
    with tracking.stage_run(STAGE, params.shared.mlflow_experiment, logged) as mlflow_run:
        imported = formats.import_dataset(raw_dir, p.format, params.shared.class_names)
        samples, repairs = imported.samples, imported.repairs
        split = data.split_by_group(
            samples, p.group_pattern, p.val_groups, p.test_groups, params.shared.seed
        )
        summary.check_boxes(imported, split, Path(raw_dir))
        # Each split is its own DVC output, written whole or not at all.
        for name in ("train", "val", "test"):
            with data.atomic_path(out_dir / name) as tmp:
                formats.write_yolo_folder(split[name], tmp, repairs)
        names = params.shared.class_names
        data.write_dataset_yaml(out_dir, names, "train/images", "val/images", "test/images")
        stats = (
            split_statistics(split)
            | {f"repairs.{key}": repairs.get(key, 0) for key in formats.REPAIR_KEYS}
            | {f"dropped.{key}": repairs.get(key, 0) for key in formats.DROP_KEYS}
            | {
                "skipped_files": repairs.get("skipped_files", 0),
                "image_size.median_long_side": imported.median_long_side,
            }
        )
        data.write_json(metrics_path, stats)
        mlflow_run.log_metrics(stats)
    groups = summary.group_counts(split, p.group_pattern)
    print("\n".join(summary.summary(stats, imported, groups)), flush=True)
    warnings = summary.warnings(
        imported, split, groups, params.train_detector.imgsz, params.shared.class_names
    )
    for message in warnings:
        warn(message)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="dataset folder (prepare.raw_dir)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    run_stage(lambda params: run(params, args.raw, args.out, args.metrics))


if __name__ == "__main__":
    main()
