"""Data formats: YOLO image/label folders, validation, group splits, atomic file writes."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
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
from PIL import Image, ImageOps, UnidentifiedImageError

from synthdet.core.errors import SynthdetError

# What Pillow decodes and prepare reads; .jfif / .jpe / .mpo are JPEGs under other names.
IMAGE_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".webp",
    ".tif",
    ".tiff",
    ".jfif",
    ".jpe",
    ".mpo",
)
MIN_IMAGE_SIDE = 10  # ultralytics' minimum: smaller images cannot hold an object
DATASET_YAML = "dataset.yaml"  # the ultralytics dataset description next to YOLO folders


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
            f"{where}: box has zero or negative size ({x0:.4f},{y0:.4f})-({x1:.4f},{y1:.4f}); "
            "correct its corners or remove it"
        )
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if not (0 <= cx <= 1 and 0 <= cy <= 1):
        raise DataError(
            f"{where}: box centre ({cx:.4f}, {cy:.4f}) lies outside the image (0-1 of its width "
            "and height); correct the box or remove it"
        )
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, 1.0), min(y1, 1.0))
    if clipped != (x0, y0, x1, y1):
        repairs["clipped_boxes"] += 1
        x0, y0, x1, y1 = clipped
    return Box(class_id, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)


def read_text(path: Path) -> str:
    """A text file as UTF-8 (a byte-order mark is dropped); anything else is a `DataError`."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if b"\x00" in raw and raw[:2] not in (b"\xff\xfe", b"\xfe\xff"):
        # Text never holds NUL bytes; UTF-16 without a byte-order mark is the usual cause.
        raise DataError(
            f"{path}: not UTF-8 text (a NUL byte at offset {raw.index(0)}: UTF-16 without a "
            "byte-order mark, or not a text file); save it as UTF-8"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        found = (
            "it starts with a UTF-16 byte-order mark"
            if raw[:2] in (b"\xff\xfe", b"\xfe\xff")
            else f"byte 0x{raw[exc.start]:02x} at offset {exc.start} is not UTF-8"
        )
        raise DataError(f"{path}: not UTF-8 text ({found}); save it as UTF-8") from exc


def _class_id(field: str) -> int | None:
    """'0', '0.0' and '0.000e+00' are class 0, as ultralytics reads them; None if not whole."""
    try:
        return int(field)
    except ValueError:
        value = float(field)  # ValueError for non-numbers is the caller's
        return int(value) if math.isfinite(value) and value == int(value) else None


def _is_float(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def drop_duplicate_boxes(boxes: Iterable[Box], repairs: Counter) -> tuple[Box, ...]:
    """Identical boxes (class and coordinates as written, 6 decimals) of one image are one
    object: later copies are dropped and counted (`duplicate_boxes`), as ultralytics does."""
    kept: dict[str, Box] = {}
    for box in boxes:
        key = format_label([box])
        if key in kept:
            repairs["duplicate_boxes"] += 1
        else:
            kept[key] = box
    return tuple(kept.values())


def parse_label_file(
    path: Path, num_classes: int, repairs: Counter | None = None
) -> tuple[Box, ...]:
    """Read a YOLO label file, rejecting malformed rows with file:line and the problem.

    A row is `class cx cy w h` (normalised), or a segmentation polygon `class x1 y1 x2 y2 x3 y3
    ...` whose enclosing box is taken and counted (`polygon_boxes`), as ultralytics does.
    """
    repairs = Counter() if repairs is None else repairs
    boxes = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        polygon = len(fields) >= 7 and len(fields) % 2 == 1
        if len(fields) != 5 and not polygon:
            raise DataError(
                f"{where}: expected 'class cx cy w h' (5 numbers separated by spaces) or a "
                f"polygon 'class x1 y1 x2 y2 x3 y3 ...', got {len(fields)} field(s) in "
                f"{line.strip()!r}"
                + (
                    "; a 6th column (a score?) does not belong in a label"
                    if len(fields) == 6
                    else ""
                )
            )
        try:
            class_id = _class_id(fields[0])
            values = [float(v) for v in fields[1:]]
        except ValueError as exc:
            hint = ""
            if all(_is_float(v) for v in fields[1:]):
                hint = (
                    f"; the class {fields[0]!r} is written as a name: a YOLO row starts with the "
                    "class id, its index in shared.class_names (0 for the first)"
                )
            raise DataError(f"{where}: not a number in {line.strip()!r}{hint}") from exc
        if class_id is None:
            raise DataError(f"{where}: class id {fields[0]!r} is not a whole number")
        if not all(math.isfinite(v) for v in values):
            raise DataError(f"{where}: not a finite number in {line.strip()!r}")
        if not 0 <= class_id < num_classes:
            raise DataError(
                f"{where}: class id {class_id} is not in the {num_classes} class names "
                "(shared.class_names); list every class of the dataset there, in the order of "
                "its ids"
            )
        if max(values) > 2:  # normalised: a centre in [0, 1], a size clipped to it
            raise DataError(
                f"{where}: coordinates {line.strip()!r} look like pixels; YOLO labels hold "
                "fractions of the image width and height (0-1): divide them by the image size"
            )
        if polygon:
            xs, ys = values[0::2], values[1::2]
            corners = (min(xs), min(ys), max(xs), max(ys))
            repairs["polygon_boxes"] += 1
        else:
            cx, cy, w, h = values
            corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        boxes.append(clip_box(class_id, *corners, where=where, repairs=repairs))
    return drop_duplicate_boxes(boxes, repairs)


def format_label(boxes: Iterable[Box]) -> str:
    return "".join(f"{b.class_id} {b.cx:.6f} {b.cy:.6f} {b.w:.6f} {b.h:.6f}\n" for b in boxes)


@dataclass(frozen=True)
class ImageInfo:
    """What `inspect_image` learns from decoding an image once."""

    size: tuple[int, int]  # (width, height) of the upright image, as `prepare` writes it
    stored_size: tuple[int, int]  # (width, height) as stored, before the EXIF orientation
    orientation: int  # EXIF orientation tag (1 = upright as stored)
    digest: str  # sha256 of the upright RGB pixels: equal for the same picture under two names


def upright_rgb(image: Image.Image) -> Image.Image:
    """The picture as prepare writes it: EXIF orientation applied, 8-bit RGB (16-bit greyscale
    keeps its top 8 bits, alpha is dropped)."""
    upright = ImageOps.exif_transpose(image)
    if upright.mode in ("I;16", "I;16B", "I;16L", "I"):
        upright = upright.point(lambda v: v / 256).convert("L")
    return upright.convert("RGB")


def _decode(path: Path, inspect: bool) -> ImageInfo | tuple[int, int]:
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes)")
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        with Image.open(path) as image:
            image.load()
            if not inspect:
                return image.size
            orientation = image.getexif().get(0x0112, 1)
            upright = upright_rgb(image)
            digest = hashlib.sha256(f"{upright.size}".encode())
            digest.update(upright.tobytes())
            return ImageInfo(upright.size, image.size, orientation, digest.hexdigest())
    except UnidentifiedImageError as exc:
        with open(path, "rb") as file:
            start = file.read(64)
        if start.startswith(b"version https://git-lfs"):
            raise DataError(
                f"{path}: a Git LFS pointer, not the image itself; fetch the images "
                "(git lfs pull) before running prepare"
            ) from exc
        raise DataError(
            f"{path}: not an image file Pillow can read (it starts with {start[:12]!r}); "
            "re-export it as JPEG or PNG, or remove it"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"{path}: image too large to open safely ({exc}); downscale it (an object detector "
            "sees a few hundred pixels anyway) or split it into tiles"
        ) from exc
    except DataError:
        raise
    except Exception as exc:  # any decoder failure on a bad file: name the file, no traceback
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from exc


def verify_image(path: Path) -> tuple[int, int]:
    """Fully decode an image (catches truncation); return (width, height)."""
    return _decode(Path(path), inspect=False)  # type: ignore[return-value]


def inspect_image(path: Path) -> ImageInfo:
    """Fully decode an image: its upright and stored sizes, orientation and a content hash."""
    return _decode(Path(path), inspect=True)  # type: ignore[return-value]


def label_file(folder: Path, image: Path | str) -> Path:
    """The label file of `image` in the YOLO folder `folder`: `labels/<stem>.txt`."""
    return Path(folder) / "labels" / f"{Path(image).stem}.txt"


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
        label = label_file(folder, image)
        if not label.is_file():
            raise DataError(f"{image}: no label file {label} (write an empty one for background)")
        samples.append(Sample(image, parse_label_file(label, num_classes)))
    orphans = sorted(
        p.name for p in labels_dir.glob("*.txt") if p.is_file() and p.stem not in stems
    )
    if orphans:
        raise DataError(
            f"{labels_dir}: {len(orphans)} label file(s) match no image in {images_dir}, their "
            f"boxes would be lost: {', '.join(orphans[:5])}; add the images or remove the labels"
        )
    return samples


def group_of(stem: str, pattern: re.Pattern[str] | None) -> str:
    """The group (photo) of a file stem: `pattern`'s group 'group' or 1; None: the stem itself."""
    if pattern is None:
        return stem
    match = pattern.fullmatch(stem)
    if match is None:
        raise DataError(
            f"file stem {stem!r} does not match prepare.group_pattern '{pattern.pattern}'; "
            "set prepare.group_pattern to a regex whose first group names the photo of a file "
            "stem, or to null if every image is its own photo (not a tile): "
            "-S prepare.group_pattern=null, or a regex in quotes inside the shell's quotes, "
            """-S "prepare.group_pattern='(.+)-\\d+'" (see README 'Your own data')"""
        )
    return match.group("group") if "group" in pattern.groupindex else match.group(1)


def split_by_group(
    samples: list[Sample], pattern: str | None, val_groups: int, test_groups: int, seed: int
) -> dict[str, list[Sample]]:
    """Seeded train / val / test split that keeps every group (photo) on one side."""
    compiled = None if pattern is None else re.compile(pattern)
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
    return {
        "train": [s for g in sorted(train) for s in groups[g]],
        "val": [s for g in sorted(val) for s in groups[g]],
        "test": [s for g in sorted(test) for s in groups[g]],
    }


def draw_seed(seed: int, draw: int) -> int:
    """The seed of handful draw `draw` (few_shot.draws) under `seed` (shared.seed): seed + draw,
    so draw 0 is the pipeline's first handful. The one rule of the handful stages, the train
    stages' image orders and benchmarks/protocol.py."""
    return seed + draw


def draw_folder(root: Path, draw: int) -> Path:
    """Handful draw `draw`'s folder under `root` (`<root>/draw<draw>`), as dvc.yaml spells it for
    the handfuls, captions, adapters, generated and extra images, detectors and metrics."""
    return Path(root) / f"draw{draw}"


def subject_images(
    train: list[Sample], subject: str, stem_pattern: str, count: int, seed: int
) -> list[Sample]:
    """`count` images of the train split for personalising `subject`, seeded per subject.

    Candidates are the train images whose stem matches `stem_pattern` (re.search), so val/test
    images can never be chosen. The draw depends on (seed, subject) only: changing one subject
    leaves the images of the others unchanged.
    """
    compiled = re.compile(stem_pattern)
    # by file name: the draw does not depend on the order the split was read in (prepare's
    # import order and a YOLO folder's sorted order give the same handful)
    candidates = sorted(
        (s for s in train if compiled.search(s.image.stem)), key=lambda s: s.image.name
    )
    if len(candidates) < count:
        raise DataError(
            f"shared.subjects.{subject}: images={count} but only {len(candidates)} train images "
            f"match stem_pattern {stem_pattern!r}; lower shared.subjects.{subject}.images, "
            "widen its stem_pattern, or give the train split more groups (lower "
            "prepare.val_groups / test_groups)"
        )
    chosen = random.Random(f"{seed}:{subject}").sample(candidates, count)
    return sorted(chosen, key=lambda s: s.image.name)


def write_dataset_yaml(
    folder: Path,
    class_names: Iterable[str],
    train: str | list[str],
    val: str,
    test: str | None = None,
    root: Path | None = None,
) -> Path:
    """Write `folder/dataset.yaml` for ultralytics: image folders relative to `root` (its `path`
    key), or to the yaml's own folder when `root` is None; returns the yaml's path."""
    dataset: dict[str, object] = {} if root is None else {"path": str(root)}
    dataset.update(train=train, val=val)
    if test is not None:
        dataset["test"] = test
    dataset["names"] = dict(enumerate(class_names))
    path = Path(folder) / DATASET_YAML
    write_text(path, yaml.safe_dump(dataset, sort_keys=False))
    return path


def link_yolo_folder(source: Path, view: Path, images: Iterable[Path] | None = None) -> Path:
    """A YOLO folder at `view` whose files are symlinks to `source`'s: every file of its images/
    and labels/, or only `images` and their label files.

    Ultralytics resolves directory symlinks and would write `labels.cache` into the source, so
    the folders are real directories and only the files are links.
    """
    source, view = Path(source), Path(view)
    (view / "images").mkdir(parents=True)
    (view / "labels").mkdir()
    if images is None:
        links = {sub: sorted((source / sub).iterdir()) for sub in ("images", "labels")}
    else:
        chosen = [Path(image) for image in images]
        labels = [label_file(source, image) for image in chosen]
        links = {"images": chosen, "labels": labels}
    for sub, files in links.items():
        for file in files:
            (view / sub / file.name).symlink_to(file.resolve())
    return view


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
