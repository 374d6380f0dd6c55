"""What is in a dataset folder: images, candidate annotation files, skipped files; the format."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from synthdet.core.data import IMAGE_SUFFIXES, DataError

ANNOTATION_SUFFIX = {"yolo": ".txt", "coco": ".json", "voc": ".xml"}

DOCUMENTATION = re.compile(
    r"(readme|licen[cs]e|notice|citation|changelog|copying|authors)([ ._-].*)?", re.IGNORECASE
)
SPLIT_LISTS = ("train.txt", "val.txt", "valid.txt", "test.txt", "trainval.txt")
# Folders a file system or NAS adds: macOS zips, Synology thumbnails, Windows drive roots.
SYSTEM_FOLDERS = ("__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information")


@dataclass
class Survey:
    """The files under a dataset folder: images, candidate annotation files, skipped files."""

    folder: Path
    images: list[Path]
    others: list[Path]  # every other file that is not skipped
    skipped: dict[Path, str]  # file -> why it is not data

    def with_suffix(self, suffix: str) -> list[Path]:
        return [p for p in self.others if p.suffix.lower() == suffix]


def skip_reason(path: Path, folder: Path, image_stems: frozenset[str] = frozenset()) -> str | None:
    """Why a file under the dataset folder is not data (None: it is data).

    Images, and label files named after an image (`license_plate_1.txt`, `classes.txt` beside
    `classes.jpg`), are data whatever their name says; `image_stems` holds the images' lower-case
    stems and file names.
    """
    relative = path.relative_to(folder)
    name, suffix = path.name.lower(), path.suffix.lower()
    if any(part.startswith(".") or part in SYSTEM_FOLDERS for part in relative.parts):
        return "hidden or system file"
    if name in ("thumbs.db", "desktop.ini"):
        return "system file"
    lowered = [part.lower() for part in relative.parts[:-1]]
    if "imagesets" in lowered:
        return "VOC split list (prepare makes its own split)"
    if "segmentationclass" in lowered or "segmentationobject" in lowered:
        return "VOC segmentation mask"
    if suffix in IMAGE_SUFFIXES:
        return None
    if suffix in ANNOTATION_SUFFIX.values() and path.stem.lower() in image_stems:
        return None  # an image's label, whatever its name says
    if DOCUMENTATION.fullmatch(path.name) or suffix in (".md", ".rst", ".pdf", ".html", ".htm"):
        return "documentation"
    if suffix in (".yaml", ".yml", ".data"):
        return "dataset description"
    if name in ("classes.txt", "notes.json", "labelmap.txt") or suffix == ".names":
        return "class list"
    if suffix == ".cache":
        return "ultralytics label cache"
    if (path.parent == folder and name in SPLIT_LISTS) or (
        suffix == ".txt" and _lists_images(path)
    ):
        return "split list (prepare makes its own split)"
    return None


def _lists_images(path: Path) -> bool:
    """Whether a text file is a list of image paths (CVAT's `Validation.txt`, ultralytics'
    `autosplit_train.txt`), not a label file: every line ends in an image suffix."""
    try:
        lines = [line.strip() for line in path.read_bytes().decode("utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError):
        return False  # not readable as a list: the label reader names the file
    lines = [line for line in lines if line]
    return bool(lines) and all(Path(line).suffix.lower() in IMAGE_SUFFIXES for line in lines)


def _files(folder: Path) -> list[Path]:
    """Every file under `folder`, following symlinked folders (pathlib's rglob skips them,
    which would drop a linked images/ without a word); a link loop is followed once."""
    files, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        files += [Path(root, name) for name in names]
    broken = sorted(p for p in files if not p.exists() and skip_reason(p, folder) is None)
    if broken:
        raise DataError(
            f"{folder}: {len(broken)} symbolic link(s) point to nothing: "
            f"{_names(broken, folder)}; restore their targets (with DVC: dvc checkout or dvc "
            "pull) or remove the links"
        )
    return sorted(p for p in files if p.is_file())


def survey(folder: Path) -> Survey:
    files = _files(folder)
    candidates = [
        p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and skip_reason(p, folder) is None
    ]
    # Stems, and whole names for labels named `x.jpg.txt`.
    stems = frozenset(key for p in candidates for key in (p.stem.lower(), p.name.lower()))
    skipped = {p: reason for p in files if (reason := skip_reason(p, folder, stems)) is not None}
    images = [p for p in candidates if p not in skipped]
    others = [p for p in files if p not in skipped and p.suffix.lower() not in IMAGE_SUFFIXES]
    return Survey(folder, images, others, skipped)


def detect_format(folder: Path, found: Survey | None = None) -> str:
    found = survey(folder) if found is None else found
    kinds = {
        fmt: files
        for fmt in ("yolo", "coco", "voc")
        if (files := found.with_suffix(ANNOTATION_SUFFIX[fmt]))
    }
    if len(kinds) == 1:
        return next(iter(kinds))
    if not kinds and any(p.name.lower() == "labels" and p.is_dir() for p in folder.rglob("*")):
        return "yolo"  # a YOLO dataset whose label files are all missing: background only
    if kinds:
        listing = "; ".join(
            f"{len(files)} *{ANNOTATION_SUFFIX[fmt]} ({_names(files, folder, 2)})"
            for fmt, files in kinds.items()
        )
        raise DataError(
            f"{folder}: cannot tell the dataset format, it holds label files of several "
            f"formats: {listing}; set prepare.format (yolo | coco | voc) and move the others out"
        )
    unread = f" and {_names(found.others, folder, 3)}" if found.others else ""
    raise DataError(
        f"{folder}: cannot tell the dataset format; found {len(found.images)} images{unread} "
        "but no label files prepare reads: expected images + labels/*.txt (YOLO), a COCO *.json "
        "(beside images/ or in annotations/), or Annotations/*.xml (Pascal VOC), in any folder; "
        "export the labels in one of these formats (CSV and other layouts are not read), or set "
        "prepare.format"
    )


def _names(paths: Sequence[Path], folder: Path, limit: int = 5) -> str:
    shown = ", ".join(str(p.relative_to(folder)) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


class ClassLookup:
    """Class names -> ids (their index in shared.class_names); names not there are gathered so
    that one error lists every one of them, with counts, rather than the first object only."""

    def __init__(self, class_names: Sequence[str]):
        self.class_names = list(class_names)
        self.unknown: dict[str, list[str]] = {}  # name -> where each object is

    def index(self, name: str, where: str) -> int | None:
        if name in self.class_names:
            return self.class_names.index(name)
        self.unknown.setdefault(name, []).append(where)
        return None

    def check(self, folder: Path) -> None:
        if not self.unknown:
            return
        found = ", ".join(
            f"{name!r} ({len(wheres)}, first {wheres[0]})" for name, wheres in self.unknown.items()
        )
        count = sum(map(len, self.unknown.values()))
        raise DataError(
            f"{folder}: {count} object(s) of classes not in shared.class_names "
            f"{self.class_names}: {found}; add the classes to shared.class_names in params.yaml "
            "(-S 'shared.class_names=[...]'), or remove those objects"
        )
