"""What prepare checks on the split dataset and says about it at the end.

A dataset, or a train / val / test split, without a single box stops the stage (`check_boxes`);
a class without a box in a split, held-out splits holding a sliver of the images and images far
from the detector's `imgsz` are warned about (`warnings`); `summary` is the few lines a successful
prepare prints.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from synthdet.data import DataError, Sample, group_of
from synthdet.formats.importer import DROP_KEYS, LAYOUT, REPAIR_KEYS, Imported

IMGSZ_FACTOR = 2  # images this many times larger or smaller than the detector's imgsz: warn
MIN_HELD_OUT_SHARE = 0.05  # a val / test split under this share of the images: warn
SUGGESTED_HELD_OUT_SHARE = 0.15  # ... and suggest this many groups instead
SPLITS = ("train", "val", "test")


def check_boxes(imported: Imported, split: dict[str, list[Sample]], raw: Path) -> None:
    """A detector cannot learn from, nor be measured on, a set without a single box."""
    if not any(s.boxes for s in imported.samples):
        raise DataError(
            f"{raw}: no box in the whole dataset ({len(imported.samples)} images read as "
            f"{LAYOUT[imported.format]}, all background); check that the labels sit "
            "where that layout expects them (see README 'Your own data') or set prepare.format"
        )
    fixes = {
        "train": "lower prepare.val_groups / test_groups",
        "val": "raise prepare.val_groups",
        "test": "raise prepare.test_groups",
    }
    for name, fix in fixes.items():
        if not any(s.boxes for s in split[name]):
            raise DataError(
                f"{raw}: the {name} split ({len(split[name])} images) has no box, so the "
                f"detector cannot be {'trained' if name == 'train' else 'measured'} on it; "
                f"prepare.val_groups and test_groups count groups (photos), not images: {fix}, "
                "or set prepare.group_pattern so that the boxed images form more groups (null: "
                "each image is its own group)"
            )


def group_counts(split: dict[str, list[Sample]], pattern: str | None) -> dict[str, int]:
    """Groups (photos) per split under `prepare.group_pattern`."""
    compiled = None if pattern is None else re.compile(pattern)
    return {name: len({group_of(s.image.stem, compiled) for s in split[name]}) for name in SPLITS}


def warnings(
    imported: Imported,
    split: dict[str, list[Sample]],
    groups: dict[str, int],
    imgsz: int,
    class_names: Sequence[str],
) -> list[str]:
    """What the user most likely did not intend, for `errors.warn`: a class without a box in a
    split (not learnt, or not measured: mAP averages the classes present), a held-out split of a
    few images (val_groups and test_groups count groups), images far from the detector's imgsz."""
    lines = []
    for class_id, name in enumerate(class_names):
        counts = {
            split_name: sum(b.class_id == class_id for s in split[split_name] for b in s.boxes)
            for split_name in SPLITS
        }
        missing = [split_name for split_name, count in counts.items() if not count]
        if missing:
            found = ", ".join(f"{count} in {where}" for where, count in counts.items() if count)
            lines.append(
                f"class {name!r} of shared.class_names has no box in the {' and '.join(missing)} "
                f"split{'s' if len(missing) > 1 else ''} ({found or 'none in the dataset'}): "
                "the detector "
                f"{'never learns it' if 'train' in missing else 'is not measured on it there'}; "
                "check the labels, or give that split more groups (prepare.val_groups / "
                "test_groups, prepare.group_pattern)"
                + ("" if found else ", or remove the class from shared.class_names")
            )
    total_images, total_groups = len(imported.samples), sum(groups.values())
    for name in ("val", "test"):
        share = len(split[name]) / total_images
        if share < MIN_HELD_OUT_SHARE:
            wanted = max(round(SUGGESTED_HELD_OUT_SHARE * total_groups), groups[name] + 1)
            lines.append(
                f"the {name} split holds {len(split[name])} of {total_images} images "
                f"({share:.0%}): prepare.{name}_groups={groups[name]} counts groups (photos), "
                f"not images, and the dataset has {total_groups} groups; for about "
                f"{SUGGESTED_HELD_OUT_SHARE:.0%} set "
                f"-S prepare.{name}_groups={wanted}"
            )
    side = imported.median_long_side
    if max(side / imgsz, imgsz / side) >= IMGSZ_FACTOR:
        size = round(side / 32) * 32 or 32
        lines.append(
            f"the images are {side:g} px on their longer side (median) but "
            f"train_detector.yolo.imgsz is {imgsz}: the detector "
            f"{'shrinks' if imgsz < side else 'enlarges'} every image, and object, to "
            f"{imgsz / side:.2g}x its size; if that is not intended, set -S "
            f"train_detector.yolo.imgsz={size}"
        )
    return lines


def summary(
    stats: dict[str, float], imported: Imported, groups: dict[str, int], subjects: list[str]
) -> list[str]:
    """What a successful prepare did, in a few lines."""

    def counted(keys: tuple[str, ...], prefix: str) -> str:
        values = {key.replace("_", " "): stats[f"{prefix}.{key}"] for key in keys}
        return ", ".join(f"{key} {value}" for key, value in values.items() if value)

    splits = " | ".join(
        f"{name} {stats[f'{name}.images']} images "
        f"({groups[name]} group{'s' if groups[name] != 1 else ''}), "
        f"{stats[f'{name}.boxes']} boxes"
        for name in SPLITS
    )
    return [
        f"prepare: {len(imported.samples)} images read as {LAYOUT[imported.format]}",
        f"  {splits}",
        "  personalize: "
        + ", ".join(f"{name} {stats[f'personalize.{name}.images']}" for name in subjects),
        f"  repaired: {counted(REPAIR_KEYS, 'repairs') or 'nothing'}",
        f"  dropped: {counted(DROP_KEYS, 'dropped') or 'nothing'}",
        *(f"  {note}" for note in imported.notes),
    ]
