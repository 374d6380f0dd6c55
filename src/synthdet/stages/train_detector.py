"""Stages train-*: train one YOLO detector per data variant and seed.

Every variant and seed trains with the same `train_detector` params (`train_args()`: the `yolo`
block, overridden by the `preset` if one is set); only the training images
(`synthdet.detectors.variants`) and the seed differ. The stage gets the variant's fields (`--real`,
`--extra`, ...), not its name, and writes them next to the weights (`variant.json`,
synthdet.artifacts.detector). The `real` detector of shared.seed is also the baseline that annotates
the synthetic images. Training sets smaller than `images_per_epoch` (by default the train split's
image count, from prepare's metrics) are repeated to that many images an epoch
(synthdet.detectors.variants.epoch_plan).

Several detectors can train in one process, each unit's flags after a `--then` (`--stage a ...
--then --stage b ...`): interpreter start, imports and the MLflow store are paid once, each unit
still writes its own folders and MLflow run, and trains to the same bits as alone in a process
(tests/test_detection.py). Units run in order; a failing one stops the rest.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from synthdet.artifacts.detector import DetectorVariant
from synthdet.artifacts.metrics import read_prepare_metrics
from synthdet.core.cli import run_stage
from synthdet.core.data import DataError
from synthdet.core.errors import warn
from synthdet.core.tracking import stage_run
from synthdet.detectors import detection, variants
from synthdet.params import Params, ParamsError, TrainDetectorParams


def images_per_epoch(config: TrainDetectorParams, prepare_metrics: Path | None) -> int:
    """The images an epoch of a smaller training set is topped up to (0: none): an explicit
    train_detector.min_images_per_epoch, or when it is null the prepared train split's image
    count, `train.images` of prepare's metrics file `prepare_metrics` (metrics/prepare.json),
    read only then. ParamsError when null and no file is given; DataError when the file cannot
    be read or holds no train count.
    """
    if config.min_images_per_epoch is not None:
        return config.min_images_per_epoch
    if prepare_metrics is None:
        raise ParamsError(
            "train_detector.min_images_per_epoch is null (the train split's image count), but "
            "no --prepare-metrics file gives that count: pass metrics/prepare.json, or set the "
            "number: -S 'train_detector.min_images_per_epoch=<images>'"
        )
    count = read_prepare_metrics(prepare_metrics).train.images
    if count is None:
        raise DataError(
            f"{prepare_metrics}: no train.images count, which train_detector."
            "min_images_per_epoch: null reads; rerun prepare (dvc repro prepare), or set the "
            "number: -S 'train_detector.min_images_per_epoch=<images>'"
        )
    return count


def run(
    params: Params,
    stage: str,
    variant: variants.Variant,
    seed: int,
    folders: Mapping[str, Path | None],
    val_folder: Path,
    out_dir: Path,
    results_csv: Path,
    prepare_metrics: Path | None = None,
    draw: int | None = None,
) -> dict:
    """Train the detector of one variant and seed; return its metrics (also logged to MLflow).

    `folders`: `real` (labelled train YOLO folder), `handful` (the draw's handful folder, one
    YOLO folder per subject) and `extra` (the variant's extra source), each None when the
    variant does not use it. `prepare_metrics`: prepare's metrics/prepare.json, read for the
    train split's image count when train_detector.min_images_per_epoch is null
    (`images_per_epoch`). `draw`: the handful draw (few_shot.draws) whose folders these are,
    None for `real`; its seed orders the images. Writes the detector to `out_dir`, its
    per-epoch validation metrics to `results_csv` and the variant, draw and seed to
    `out_dir/variant.json`. Raises DataError when a folder the variant needs is missing or holds
    too few images, ParamsError or DataError when the images per epoch cannot be resolved; warns
    (and sets `empty_label_set`) when no training label has a box.
    """
    config = params.train_detector
    recorded = DetectorVariant(variant, seed, draw)  # before training: a drawn variant needs a draw
    per_epoch = images_per_epoch(config, prepare_metrics)
    train_args = config.train_args()
    if overridden := config.overridden_by_preset():
        warn(
            f"train_detector.preset={config.preset} overrides train_detector.yolo "
            f"({'; '.join(overridden)}); the MLflow run's yolo param records what was used."
        )
    logged_params = {
        "variant": variant.name,
        "draw": draw,
        "real": variant.real.kind.value,
        "real_count": variant.real.count,
        "real_share": variant.real.share,
        "extra": variant.extra,
        "extra_images": variant.extra_images,
        "extra_fraction": variant.extra_fraction,
        "model": config.model_source,
        "preset": config.preset,
        "seed": seed,
        "images_per_epoch": per_epoch,  # min_images_per_epoch as resolved (null: train split)
        "val_every": config.val_every,
        **{f"{name}_dir": str(folder) for name, folder in folders.items()},
        "val": str(val_folder),
        "yolo": train_args,
    }
    with (
        stage_run(stage, params.shared.mlflow_experiment, logged_params) as mlflow_run,
        tempfile.TemporaryDirectory(prefix="synthdet-variant-") as scratch,
    ):
        training = variants.training_folders(
            params,
            variant,
            folders.get("real"),
            folders.get("handful"),
            folders.get("extra"),
            Path(scratch),
            per_epoch,
            draw or 0,
        )
        composition = training.composition
        boxes = {
            "real_boxes": variants.label_boxes(composition.real),
            "extra_boxes": variants.label_boxes(composition.extra),
        }
        empty = sum(boxes.values()) == 0
        empty_extra = bool(composition.extra) and boxes["extra_boxes"] == 0
        if empty:
            images = len(composition.real) + len(composition.extra)
            warn(detection.empty_variant_warning(variant.name, seed, images))
        elif empty_extra:
            extra = variant.extra or "extra"
            warn(
                detection.empty_extra_labels_warning(
                    variant.name, seed, extra, len(composition.extra)
                )
            )
        result = detection.train_detector(
            model=config.model_source,
            train_folders=training.folders,
            val_folder=val_folder,
            class_names=params.shared.class_names,
            seed=seed,
            yolo_args=train_args,
            out_dir=out_dir,
            on_epoch=lambda row: mlflow_run.log_metrics(row, step=int(row["epoch"])),
            val_every=config.val_every,
        )
        detection.write_epochs_csv(result.epochs, results_csv)
        recorded.write(out_dir)
        metrics = {
            "train_images": result.train_images,
            "real_images": len(composition.real),
            "extra_images": len(composition.extra),
            "extra_share": round(composition.extra_share, 6),
            "repeats": training.repeats,
            "top_up_images": training.top_up,
            **boxes,
            "empty_label_set": int(empty),  # 1: no box to learn from (a number, for MLflow)
            "empty_extra_labels": int(empty_extra),  # 1: extra images, none with a box
            "epochs": len(result.epochs),
            **{f"best.{name}": value for name, value in result.best.items()},
        }
        mlflow_run.log_metrics(metrics)
        mlflow_run.log_artifact(out_dir, "detector")
        mlflow_run.log_artifact(results_csv)
    print(
        f"{stage}: {variant.name} seed {seed}, {len(composition.real)} real + "
        f"{len(composition.extra)} extra images, {len(result.epochs)} epochs, "
        f"val mAP50-95 {result.best.get('metrics/mAP50-95', float('nan')):.3f}"
    )
    return metrics


def variant_from_args(args: argparse.Namespace) -> variants.Variant:
    """The variant the command line describes; ParamsError naming the flags if none."""
    if args.generated is not None:
        if args.real is not None or args.real_share is not None or args.extra is not None:
            raise ParamsError("--generated stands for the whole variant: drop --real and --extra")
        return variants.generated(args.generated)
    if (args.real is None) == (args.real_share is None):
        raise ParamsError("give one of --real (all, handful, none or a count) and --real-share")
    real = (
        variants.RealImages.from_arg(args.real)
        if args.real is not None
        else variants.RealImages(variants.RealKind.SHARE, share=args.real_share)
    )
    return variants.Variant(real, args.extra, args.extra_images, args.extra_fraction)


UNIT_SEPARATOR = "--then"


def split_units(argv: list[str]) -> list[list[str]]:
    """`a --then b --then c` -> [a, b, c]: the command lines of the units to train in turn."""
    units: list[list[str]] = [[]]
    for arg in argv:
        if arg == UNIT_SEPARATOR:
            units.append([])
        else:
            units[-1].append(arg)
    return units


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=f"Several detectors in one process: UNIT {UNIT_SEPARATOR} UNIT ...",
    )
    parser.add_argument("--stage", required=True, help="the DVC stage name (the MLflow run name)")
    parser.add_argument("--seed", type=int, required=True, help="training seed")
    parser.add_argument(
        "--draw", type=int, default=None, help="handful draw (few_shot.draws); none for real"
    )
    what = parser.add_argument_group("the variant (synthdet.detectors.variants.Variant)")
    what.add_argument(
        "--real", default=None, help="labelled real train images: all, handful, none or a count"
    )
    what.add_argument(
        "--real-share", type=float, default=None, help="or the first share of them, in (0, 1]"
    )
    what.add_argument("--extra", default=None, help="extra images' source, e.g. synthetic")
    what.add_argument("--extra-images", type=int, default=None, help="this many extra images")
    what.add_argument(
        "--extra-fraction",
        type=float,
        default=None,
        help="or as many as make up this share of the training set (default: all of them)",
    )
    what.add_argument(
        "--generated",
        default=None,
        help="a train_detector.variants value instead: synthetic (generated images only) or "
        "mixed (every real train image too)",
    )
    parser.add_argument("--train", type=Path, default=None, help="labelled real train YOLO folder")
    parser.add_argument(
        "--handful", type=Path, default=None, help="the draw's handful folder (one per subject)"
    )
    parser.add_argument(
        "--extra-folder", type=Path, default=None, help="YOLO folder of the extra images"
    )
    parser.add_argument("--val", type=Path, required=True, help="YOLO folder to validate on")
    parser.add_argument("--out", type=Path, required=True, help="output detector folder")
    parser.add_argument("--results", type=Path, required=True, help="per-epoch results CSV")
    parser.add_argument(
        "--prepare-metrics",
        type=Path,
        default=None,
        help="prepare's metrics/prepare.json: the train split's image count, read when "
        "train_detector.min_images_per_epoch is null",
    )
    argv = sys.argv[1:] if argv is None else argv
    units = [parser.parse_args(unit) for unit in split_units(argv)]

    for args in units:
        train(args)


def train(args: argparse.Namespace) -> None:
    """Train one unit; params are loaded and checked per unit (hundredths of a CPU-second)."""
    run_stage(
        lambda params: run(
            params,
            args.stage,
            variant_from_args(args),
            args.seed,
            {"real": args.train, "handful": args.handful, "extra": args.extra_folder},
            args.val,
            args.out,
            args.results,
            args.prepare_metrics,
            args.draw,
        )
    )


if __name__ == "__main__":
    main()
