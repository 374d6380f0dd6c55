"""The whole import: read a dataset in any format, check and repair it, count what was done."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from synthdet.core.data import (
    IMAGE_SUFFIXES,
    MIN_IMAGE_SIDE,
    DataError,
    Sample,
    clip_box,
    drop_duplicate_boxes,
    format_label,
    inspect_image,
)
from synthdet.formats.coco import read_coco
from synthdet.formats.records import Record, gathered
from synthdet.formats.survey import Survey, _names, detect_format, survey
from synthdet.formats.voc import read_voc
from synthdet.formats.yolo import check_class_lists, read_yolo

Format = Literal["auto", "yolo", "coco", "voc"]

LAYOUT = {
    "yolo": "images + labels/<stem>.txt (YOLO)",
    "coco": "images + COCO *.json",
    "voc": "images + Annotations/<stem>.xml (Pascal VOC)",
}

# Counted in metrics/prepare.json, in this order: repairs (the data is used, fixed) ...
REPAIR_KEYS = (
    "background_images",
    "clipped_boxes",
    "polygon_boxes",
    "reencoded_images",
    "voc_size_from_image",
    "coco_size_from_image",
    "label_stem_case",
    "label_named_after_image",
    "coco_file_name_resolved",
)
# ... and what a policy leaves out.
DROP_KEYS = (
    "coco_crowd_regions",
    "voc_difficult_objects",
    "duplicate_boxes",
    "tiny_images",
    "duplicate_images",
)
OTHER_IMAGE_SUFFIXES = (
    *(".heic", ".heif", ".avif", ".gif", ".jp2", ".j2k", ".jxl", ".svg", ".pfm", ".ico"),
    *(".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf", ".psd", ".pgm", ".ppm"),
)
ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height

READERS = {"yolo": read_yolo, "coco": read_coco, "voc": read_voc}


@dataclass
class Imported:
    """A read and checked dataset: samples, counts, and what the summary should name."""

    format: str
    samples: list[Sample]
    repairs: Counter
    notes: list[str]  # files skipped or dropped, by name
    sizes: dict[Path, tuple[int, int]]  # upright (width, height) of every sample's image

    @property
    def median_long_side(self) -> float:
        return statistics.median(max(size) for size in self.sizes.values())

    def median_object_px(self, imgsz: int) -> float | None:
        """The median box's side, px, as the detector sees it: sqrt(width * height) after the
        letterbox resize of the image's longer side to `imgsz` (None: no box at all)."""
        sides = [
            math.sqrt(box.w * width * box.h * height) * imgsz / max(width, height)
            for sample in self.samples
            for width, height in [self.sizes[sample.image]]
            for box in sample.boxes
        ]
        return statistics.median(sides) if sides else None


def _check_image_formats(found: Survey) -> None:
    """Before any label is paired: a photo in another format would make its label an orphan."""
    other_images = [p for p in found.others if p.suffix.lower() in OTHER_IMAGE_SUFFIXES]
    if other_images:
        raise DataError(
            f"{found.folder}: {len(other_images)} image(s) in a format prepare does not read: "
            f"{_names(other_images, found.folder)}; convert them to JPEG or PNG "
            f"(read: {', '.join(IMAGE_SUFFIXES)})"
        )


def _check_unused(found: Survey, used: set[Path], fmt: str) -> None:
    unused = [p for p in found.others if p not in used]
    if unused:
        raise DataError(
            f"{found.folder}: {len(unused)} file(s) are not part of the {LAYOUT[fmt]} dataset "
            f"and would be ignored: {_names(unused, found.folder)}; move them out of "
            "prepare.raw_dir (or set prepare.format if they are the labels)"
        )


def _check_stems(images: Sequence[Path]) -> None:
    seen: dict[str, Path] = {}
    problems = []
    for image in images:
        other = seen.setdefault(image.stem.lower(), image)
        if other is not image:
            how = "file stem" if other.stem == image.stem else "file stem up to letter case"
            folders = (
                ""
                if other.parent == image.parent
                else "; or, if one of the folders holds no images of the dataset (masks, "
                "thumbnails, previews), move it out of prepare.raw_dir"
            )
            problems.append(
                f"{image}: duplicate {how}, also {other}; the prepared splits are flat folders "
                f"keyed by stem, so rename one{folders}"
            )
    if error := gathered(problems, "images share a file stem"):
        raise error


def _finish(record: Record, repairs: Counter) -> tuple[Sample, tuple[int, int], str]:
    """Check a record against its decoded image; return the sample, upright size and digest."""
    info = inspect_image(record.image)
    width, height = info.size
    if record.size is not None and record.size != info.size:
        hint = ""
        if record.size == info.stored_size:
            hint = (
                f"; that is the stored size: the photo has EXIF orientation {info.orientation}, "
                "which prepare applies (labels refer to the upright image, as annotation tools "
                "show it), so these boxes were drawn on the unrotated image: re-annotate it "
                "upright, or remove its EXIF orientation tag if the stored image is the right way"
            )
        raise DataError(
            f"{record.where}: declares the image size {record.size[0]}x{record.size[1]} "
            f"but {record.image} is {width}x{height} upright{hint}; otherwise correct the "
            "declared size (and the boxes, if they were drawn at another size)"
        )
    if record.size is None and record.pixel_boxes:
        if info.orientation in ROTATING_ORIENTATIONS and any(
            x1 > width + 1 or y1 > height + 1 for _, _, _, x1, y1, _ in record.pixel_boxes
        ):
            raise DataError(
                f"{record.where}: declares no image size and its boxes reach beyond "
                f"{record.image} upright ({width}x{height}, EXIF orientation "
                f"{info.orientation}): they were drawn on the unrotated image; re-annotate it "
                "upright or declare the size"
            )
        repairs[record.size_key] += 1
    if record.pixel_boxes and all(max(box[1:5]) <= 1 for box in record.pixel_boxes):
        # Every box within the first pixel: fractions of the image size written as pixels.
        raise DataError(
            f"{record.pixel_boxes[0][5]}: every box of {record.image.name} lies within its "
            f"first pixel ({width}x{height} px image): the coordinates look normalised (0-1), but "
            "COCO and Pascal VOC boxes are in pixels; multiply them by the image width and height"
        )
    boxes = list(record.boxes)
    for class_id, x0, y0, x1, y1, where in record.pixel_boxes:
        corners = (x0 / width, y0 / height, x1 / width, y1 / height)
        boxes.append(clip_box(class_id, *corners, where=where, repairs=repairs))
    return Sample(record.image, drop_duplicate_boxes(boxes, repairs)), info.size, info.digest


def import_dataset(folder: Path, fmt: Format, class_names: Sequence[str]) -> Imported:
    """Read and validate a user's dataset: every file is used, counted, skipped by name or
    refused with a message naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder (unpack it)" if folder.is_file() else "not found"
        raise DataError(f"{folder}: dataset folder {what} (prepare.raw_dir)")
    found = survey(folder)
    fmt = detect_format(folder, found) if fmt == "auto" else fmt
    if fmt == "yolo":
        check_class_lists(found, class_names)
    repairs: Counter = Counter()
    _check_image_formats(found)
    _check_stems(found.images)
    records, used = READERS[fmt](found, class_names, repairs)
    _check_unused(found, used, fmt)
    if not records:
        raise DataError(f"{folder}: empty dataset, no images ({', '.join(IMAGE_SUFFIXES)})")
    notes = []
    if found.skipped:
        listed = [f"{p.relative_to(folder)} ({why})" for p, why in found.skipped.items()]
        more = f" and {len(listed) - 8} more" if len(listed) > 8 else ""
        notes.append(f"skipped, not data: {', '.join(listed[:8])}{more}")
    repairs["skipped_files"] = len(found.skipped)
    finished, problems = [], []
    for record in records:
        try:
            finished.append((record, *_finish(record, repairs)))
        except DataError as exc:
            problems.append(str(exc))
    if error := gathered(problems, "images or their annotations cannot be used"):
        raise error
    samples, sizes, first_of = [], {}, {}
    for record, sample, size, digest in finished:
        if min(size) < MIN_IMAGE_SIDE:
            repairs["tiny_images"] += 1
            notes.append(
                f"dropped {record.image.relative_to(folder)}: {size[0]}x{size[1]} px, under "
                f"{MIN_IMAGE_SIDE} px (ultralytics' minimum)"
            )
            continue
        original = first_of.setdefault(digest, sample)
        if original is not sample:
            if sorted(map(format_label, ([b] for b in original.boxes))) != sorted(
                map(format_label, ([b] for b in sample.boxes))
            ):
                problems.append(
                    f"{sample.image}: the same picture as {original.image} but with other labels"
                )
                continue
            repairs["duplicate_images"] += 1
            notes.append(
                f"dropped {sample.image.relative_to(folder)}: the same picture as "
                f"{original.image.relative_to(folder)} (and the same labels)"
            )
            continue
        if not record.labelled:
            repairs["background_images"] += 1
        samples.append(sample)
        sizes[sample.image] = size
    if problems:
        one = len(problems) == 1
        raise DataError(
            f"{folder}: {len(problems)} picture{'' if one else 's'} repeat another with other "
            f"labels ({'; '.join(problems)}); a copy would also leak between splits: keep one "
            "of each, with the right labels"
        )
    if not samples:
        dropped = [note for note in notes if note.startswith("dropped")]
        more = f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""
        raise DataError(
            f"{folder}: no usable image left, every image was dropped: "
            f"{'; '.join(dropped[:5])}{more}"
        )
    return Imported(fmt, samples, repairs, notes, sizes)
