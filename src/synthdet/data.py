"""Data formats: YOLO image/label folders, validation, group splits, atomic file writes."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from PIL import Image, UnidentifiedImageError

from synthdet.errors import SynthdetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLITS = ("train", "val", "test", "personalize")


class DataError(SynthdetError):
    """The input data is unusable; the message names the file and the problem."""


@dataclass(frozen=True)
class Box:
    """One YOLO box: class id and centre/size normalised to [0, 1]."""

    class_id: int
    cx: float
    cy: float
    w: float
    h: float

    def xyxy(self, width: int, height: int) -> tuple[float, float, float, float]:
        return (
            (self.cx - self.w / 2) * width,
            (self.cy - self.h / 2) * height,
            (self.cx + self.w / 2) * width,
            (self.cy + self.h / 2) * height,
        )


@dataclass(frozen=True)
class Sample:
    image: Path
    boxes: tuple[Box, ...]


# ---------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final` to write into; rename it over `final` on success.

    Works for files and directories. On error the temporary is removed and `final` is untouched,
    so a crash never leaves a half-written output behind; temporaries of a killed run are removed
    by the next write of the same output.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of a run killed with SIGKILL (no cleanup possible then); one writer per output.
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent)) / final.name
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not a JSON line: {exc}") from exc
    return rows


# ---------------------------------------------------------------- YOLO folders


def clip_box(
    class_id: int, x0: float, y0: float, x1: float, y1: float, where: str, repairs: Counter
) -> Box:
    """Normalised corners -> YOLO box; a box partly outside the image is clipped and counted."""
    if x1 <= x0 or y1 <= y0:
        raise DataError(
            f"{where}: box has zero or negative size ({x0:.4f},{y0:.4f})-({x1:.4f},{y1:.4f})"
        )
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if not (0 <= cx <= 1 and 0 <= cy <= 1):
        raise DataError(f"{where}: box centre ({cx:.4f}, {cy:.4f}) lies outside the image")
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, 1.0), min(y1, 1.0))
    if clipped != (x0, y0, x1, y1):
        repairs["clipped_boxes"] += 1
        x0, y0, x1, y1 = clipped
    return Box(class_id, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)


def parse_label_file(
    path: Path, num_classes: int, repairs: Counter | None = None
) -> tuple[Box, ...]:
    """Read a YOLO label file, rejecting malformed rows with file:line and the problem."""
    repairs = Counter() if repairs is None else repairs
    boxes = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) != 5:
            raise DataError(f"{where}: expected 'class cx cy w h' (5 fields), got {len(fields)}")
        try:
            class_id = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError as exc:
            raise DataError(f"{where}: not a number in {line.strip()!r}") from exc
        if not 0 <= class_id < num_classes:
            raise DataError(
                f"{where}: class id {class_id} is not in the {num_classes} class names "
                "(shared.class_names)"
            )
        corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        boxes.append(clip_box(class_id, *corners, where=where, repairs=repairs))
    return tuple(boxes)


def format_label(boxes: Iterable[Box]) -> str:
    return "".join(f"{b.class_id} {b.cx:.6f} {b.cy:.6f} {b.w:.6f} {b.h:.6f}\n" for b in boxes)


def verify_image(path: Path) -> tuple[int, int]:
    """Fully decode an image (catches truncation); return (width, height)."""
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not an image file") from exc
    except OSError as exc:
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from exc


def read_yolo_folder(folder: Path, num_classes: int) -> list[Sample]:
    """Read `folder/images/*` with `folder/labels/<stem>.txt`, validating every file."""
    folder = Path(folder)
    images_dir, labels_dir = folder / "images", folder / "labels"
    if not images_dir.is_dir():
        raise DataError(f"{folder}: expected an images/ folder (YOLO layout images/ + labels/)")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    stems: dict[str, Path] = {}
    samples = []
    for image in images:
        if image.stem in stems:
            raise DataError(f"{image}: duplicate file stem, also {stems[image.stem]}")
        stems[image.stem] = image
        verify_image(image)
        label = labels_dir / f"{image.stem}.txt"
        if not label.is_file():
            raise DataError(f"{image}: no label file {label} (write an empty one for background)")
        samples.append(Sample(image, parse_label_file(label, num_classes)))
    return samples


def group_of(stem: str, pattern: re.Pattern[str]) -> str:
    match = pattern.fullmatch(stem)
    if match is None:
        raise DataError(
            f"file stem {stem!r} does not match prepare.group_pattern {pattern.pattern!r}"
        )
    return match.group("group") if "group" in pattern.groupindex else match.group(1)


def split_by_group(
    samples: list[Sample],
    pattern: str,
    val_groups: int,
    test_groups: int,
    personalize_images: int,
    seed: int,
) -> dict[str, list[Sample]]:
    """Seeded split that keeps every group (photo) on one side.

    `personalize` is drawn from the train groups' images, so nothing from val/test can reach the
    diffusion model.
    """
    compiled = re.compile(pattern)
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(group_of(sample.image.stem, compiled), []).append(sample)
    names = sorted(groups)
    needed = val_groups + test_groups + 1
    if len(names) < needed:
        raise DataError(
            f"only {len(names)} groups (photos) found, need at least {needed}: "
            f"{val_groups} val + {test_groups} test + 1 train (prepare.val_groups/test_groups)"
        )
    random.Random(seed).shuffle(names)
    test, val, train = (
        names[:test_groups],
        names[test_groups : test_groups + val_groups],
        names[test_groups + val_groups :],
    )
    split = {
        "train": [s for g in sorted(train) for s in groups[g]],
        "val": [s for g in sorted(val) for s in groups[g]],
        "test": [s for g in sorted(test) for s in groups[g]],
    }
    if len(split["train"]) < personalize_images:
        raise DataError(
            f"prepare.personalize_images={personalize_images} but the train split has only "
            f"{len(split['train'])} images"
        )
    split["personalize"] = sorted(
        random.Random(seed + 1).sample(split["train"], personalize_images),
        key=lambda s: s.image.name,
    )
    return split


def subject_images(
    train: list[Sample], subject: str, stem_pattern: str, count: int, seed: int
) -> list[Sample]:
    """`count` images of the train split for personalising `subject`, seeded per subject.

    Candidates are the train images whose stem matches `stem_pattern` (re.search), so val/test
    images can never be chosen. The draw depends on (seed, subject) only: changing one subject
    leaves the images of the others unchanged.
    """
    compiled = re.compile(stem_pattern)
    candidates = [s for s in train if compiled.search(s.image.stem)]
    if len(candidates) < count:
        raise DataError(
            f"shared.subjects.{subject}: images={count} but only {len(candidates)} train images "
            f"match stem_pattern {stem_pattern!r}"
        )
    chosen = random.Random(f"{seed}:{subject}").sample(candidates, count)
    return sorted(chosen, key=lambda s: s.image.name)


def dataset_yaml(class_names: Iterable[str]) -> str:
    """An ultralytics dataset yaml with paths relative to the yaml's own folder."""
    names = dict(enumerate(class_names))
    return yaml.safe_dump(
        {"train": "train/images", "val": "val/images", "test": "test/images", "names": names},
        sort_keys=False,
    )


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
