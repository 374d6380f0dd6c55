"""What prepare checks on the split dataset and says about it at the end.

A dataset, or a train / val / test split, without a single box stops the stage (`check_boxes`);
a class without a box in a split, held-out splits holding a sliver of the images and objects too
small or needlessly large at the detector's `imgsz` are warned about (`warnings`, with
`fitting_imgsz`); `summary` is the few lines a successful prepare prints.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from synthdet.core.data import DataError, Sample, group_of
from synthdet.formats.importer import DROP_KEYS, LAYOUT, REPAIR_KEYS, Imported

# The median object, px at the detector's imgsz, should lie in this range: YOLOv8's finest
# stride is 8 px (smaller objects fall between its cells); above 4 cells of its coarsest stride
# (32 px) a smaller, cheaper imgsz sees them as well.
MIN_OBJECT_PX = 8
MAX_OBJECT_PX = 128
MIN_HELD_OUT_SHARE = 0.05  # a val / test split under this share of the images: warn
SUGGESTED_HELD_OUT_SHARE = 0.15  # ... and suggest this many groups instead
SPLITS = ("train", "val", "test")


def fitting_imgsz(median_px: float | None, imgsz: int) -> int:
    """`imgsz` if the median object (`median_px` at `imgsz`, None: no boxes) lies within
    [MIN_OBJECT_PX, MAX_OBJECT_PX]; otherwise the multiple of 32 nearest to `imgsz` that brings
    it into range: the smallest one for too small objects, the largest for too large ones."""
    if median_px is None or MIN_OBJECT_PX <= median_px <= MAX_OBJECT_PX:
        return imgsz
    per_px = median_px / imgsz  # object px per imgsz px: the letterbox scales both alike
    if median_px < MIN_OBJECT_PX:
        return math.ceil(MIN_OBJECT_PX / per_px / 32) * 32
    return max(32, math.floor(MAX_OBJECT_PX / per_px / 32) * 32)


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
    few images (val_groups and test_groups count groups), a median object outside
    [MIN_OBJECT_PX, MAX_OBJECT_PX] px at the detector's imgsz."""
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
    median = imported.median_object_px(imgsz)
    fitting = fitting_imgsz(median, imgsz)
    if median is not None and fitting != imgsz:
        why = (
            f"under the {MIN_OBJECT_PX} px of the detector's finest stride, so small objects vanish"
            if median < MIN_OBJECT_PX
            else f"over {MAX_OBJECT_PX} px ({MAX_OBJECT_PX // 32} cells of the coarsest, "
            "32 px stride): a smaller imgsz sees them as well, at a cost that grows with "
            "imgsz squared"
        )
        lines.append(
            f"the median object is {median:.0f} px at train_detector.yolo.imgsz={imgsz} (box "
            f"side sqrt(w*h) after the longer image side is resized to imgsz), {why}; "
            f"-S train_detector.yolo.imgsz={fitting} makes it "
            f"{median * fitting / imgsz:.0f} px"
        )
    return lines


def summary(stats: dict[str, float], imported: Imported, groups: dict[str, int]) -> list[str]:
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
        f"  repaired: {counted(REPAIR_KEYS, 'repairs') or 'nothing'}",
        f"  dropped: {counted(DROP_KEYS, 'dropped') or 'nothing'}",
        *(f"  {note}" for note in imported.notes),
    ]
