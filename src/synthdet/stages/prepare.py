"""prepare: validate the raw dataset and split it by photo into train/val/test.

Each subject of `shared.subjects` gets `personalize/<subject>/` (YOLO): its handful of images,
drawn from the train split only. A dataset, or a train / val / test split, without a single box
stops the stage; the end prints a summary (images and boxes per split, repairs, what was dropped
or skipped) and warns when the images' size and `train_detector.yolo.imgsz` disagree.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from synthdet import data, formats, tracking
from synthdet.cli import run_stage
from synthdet.params import Params


def split_statistics(split: dict[str, list[data.Sample]]) -> dict[str, float]:
    stats: dict[str, float] = {}
    for name, samples in split.items():
        boxes = sum(len(s.boxes) for s in samples)
        stats[f"{name}.images"] = len(samples)
        stats[f"{name}.boxes"] = boxes
        stats[f"{name}.boxes_per_image"] = round(boxes / len(samples), 3) if samples else 0.0
    return stats


IMGSZ_FACTOR = 2  # images this many times larger or smaller than the detector's imgsz: warn
ULTRALYTICS_IMGSZ = 640  # ultralytics' default when train_detector.yolo sets none


def check_boxes(imported: formats.Imported, split: dict[str, list[data.Sample]], raw: Path) -> None:
    """A detector cannot learn from, nor be measured on, a set without a single box."""
    if not any(s.boxes for s in imported.samples):
        raise data.DataError(
            f"{raw}: no box in the whole dataset ({len(imported.samples)} images read as "
            f"{formats.LAYOUT[imported.format]}, all background); check that the labels sit "
            "where that layout expects them (see README 'Your own data') or set prepare.format"
        )
    fixes = {
        "train": "lower prepare.val_groups / test_groups",
        "val": "raise prepare.val_groups",
        "test": "raise prepare.test_groups",
    }
    for name, fix in fixes.items():
        if not any(s.boxes for s in split[name]):
            raise data.DataError(
                f"{raw}: the {name} split ({len(split[name])} images) has no box, so the "
                f"detector cannot be {'trained' if name == 'train' else 'measured'} on it; "
                f"prepare.val_groups and test_groups count groups (photos), not images: {fix}, "
                "or set prepare.group_pattern so that the boxed images form more groups (null: "
                "each image is its own group)"
            )


def imgsz_warning(params: Params, imported: formats.Imported) -> str | None:
    """The detector sees images at `train_detector.yolo.imgsz`: tuned for 320 px tiles."""
    imgsz = params.train_detector.yolo.get("imgsz", ULTRALYTICS_IMGSZ)
    if not isinstance(imgsz, int | float) or isinstance(imgsz, bool) or imgsz <= 0:
        return None
    side = imported.median_long_side
    if max(side / imgsz, imgsz / side) < IMGSZ_FACTOR:
        return None
    size = round(side / 32) * 32 or 32
    return (
        f"warning: the images are {side:g} px on their longer side (median) but "
        f"train_detector.yolo.imgsz is {imgsz}: the detector sees every object "
        f"{side / imgsz:.2g}x its size; if that is not intended, set -S "
        f"train_detector.yolo.imgsz={size} -S annotate_with_baseline.imgsz={size} -S "
        f"evaluate.imgsz={size}"
    )


def summary(
    stats: dict[str, float], imported: formats.Imported, subjects: list[str], warning: str | None
) -> str:
    """What a successful prepare did, in a few lines."""

    def counted(keys: tuple[str, ...], prefix: str) -> str:
        values = {key.replace("_", " "): stats[f"{prefix}.{key}"] for key in keys}
        return ", ".join(f"{key} {value}" for key, value in values.items() if value)

    splits = " | ".join(
        f"{name} {stats[f'{name}.images']} images, {stats[f'{name}.boxes']} boxes"
        for name in ("train", "val", "test")
    )
    lines = [
        f"prepare: {len(imported.samples)} images read as {formats.LAYOUT[imported.format]}",
        f"  {splits}",
        "  personalize: "
        + ", ".join(f"{name} {stats[f'personalize.{name}.images']}" for name in subjects),
        f"  repaired: {counted(formats.REPAIR_KEYS, 'repairs') or 'nothing'}",
        f"  dropped: {counted(formats.DROP_KEYS, 'dropped') or 'nothing'}",
        *(f"  {note}" for note in imported.notes),
    ]
    return "\n".join(lines + ([warning] if warning else []))


def run(params: Params, raw_dir: Path, out_dir: Path, metrics_path: Path) -> dict[str, float]:
    p = params.prepare
    with tracking.stage_run(
        "prepare", params.shared.mlflow_experiment, {"prepare": vars(p)}
    ) as mlflow_run:
        imported = formats.import_dataset(raw_dir, p.format, params.shared.class_names)
        samples, repairs = imported.samples, imported.repairs
        split = data.split_by_group(
            samples, p.group_pattern, p.val_groups, p.test_groups, params.shared.seed
        )
        check_boxes(imported, split, Path(raw_dir))
        subjects = {
            name: data.subject_images(
                split["train"], name, subject.stem_pattern, subject.images, params.shared.seed
            )
            for name, subject in params.shared.subjects.items()
        }
        train_images = {s.image for s in split["train"]}
        held_out = {s.image for name in ("val", "test") for s in split[name]}
        for name, chosen in subjects.items():
            # The leakage guard at the source: personalisation sees train images only.
            if not {s.image for s in chosen} <= train_images - held_out:
                raise data.DataError(f"subject {name}: a val/test image reached personalisation")
        # Each split is its own DVC output, written whole or not at all.
        for name in ("train", "val", "test"):
            with data.atomic_path(out_dir / name) as tmp:
                formats.write_yolo_folder(split[name], tmp, repairs)
        with data.atomic_path(out_dir / "personalize") as tmp:
            for name, chosen in subjects.items():
                # personalize images are train images too: count their repairs once.
                formats.write_yolo_folder(chosen, tmp / name, Counter())
        data.write_text(out_dir / "dataset.yaml", data.dataset_yaml(params.shared.class_names))
        split["personalize"] = [s for chosen in subjects.values() for s in chosen]
        split.update({f"personalize.{name}": chosen for name, chosen in subjects.items()})
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
    print(summary(stats, imported, list(subjects), imgsz_warning(params, imported)))
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
