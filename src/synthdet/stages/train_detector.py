"""Stage train-detector: train one YOLO detector per data variant (real, synthetic, mixed).

Every variant trains with the same `train_detector` params; only the training folders differ.
The `real` variant is also the baseline that annotates the synthetic images.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from synthdet import detection
from synthdet.cli import run_stage
from synthdet.params import Params
from synthdet.tracking import stage_run


def run(
    params: Params,
    variant: str,
    train_folders: Sequence[Path],
    val_folder: Path,
    out_dir: Path,
    results_csv: Path,
) -> dict:
    config = params.train_detector
    logged_params = {
        "variant": variant,
        "model": config.model,
        "seed": params.shared.seed,
        "train": [str(folder) for folder in dict.fromkeys(train_folders)],
        "val": str(val_folder),
        "yolo": config.yolo,
    }
    stage = f"train-detector@{variant}"
    with stage_run(stage, params.shared.mlflow_experiment, logged_params) as tracking:
        result = detection.train_detector(
            model=config.model,
            train_folders=train_folders,
            val_folder=val_folder,
            class_names=params.shared.class_names,
            seed=params.shared.seed,
            yolo_args=config.yolo,
            out_dir=out_dir,
            on_epoch=lambda row: tracking.log_metrics(row, step=int(row["epoch"])),
        )
        detection.write_epochs_csv(result.epochs, results_csv)
        metrics = {
            "train_images": result.train_images,
            "epochs": len(result.epochs),
            **{f"best.{name}": value for name, value in result.best.items()},
        }
        tracking.log_metrics(metrics)
        tracking.log_artifact(Path(out_dir) / "best.pt", "weights")
        tracking.log_artifact(results_csv)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, help="name of the data variant, e.g. real")
    parser.add_argument(
        "--train",
        type=Path,
        action="append",
        required=True,
        help="YOLO folder (images/ + labels/) to train on; repeat for more",
    )
    parser.add_argument("--val", type=Path, required=True, help="YOLO folder to validate on")
    parser.add_argument("--out", type=Path, required=True, help="output folder for best.pt")
    parser.add_argument("--results", type=Path, required=True, help="per-epoch results CSV")
    args = parser.parse_args()
    run_stage(
        lambda params: run(params, args.variant, args.train, args.val, args.out, args.results)
    )


if __name__ == "__main__":
    main()
