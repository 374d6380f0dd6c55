"""Users' datasets in: YOLO txt, COCO JSON and Pascal VOC XML, as they really come.

Everything is read into `Sample`s (an image path and YOLO boxes); `prepare` then writes the
internal layout (images/ + labels/, RGB, upright). Every file under the dataset folder is used,
repaired and counted, skipped by name with a printed note, or named in an error:

- **Layouts.** Images anywhere under the folder, at any depth (`images/`, `images/<split>/`,
  `<split>/images/`, `JPEGImages/`, beside their labels); a label or VOC file is paired with the
  image of the same file stem wherever both sit (stems are unique, the prepared splits are flat).
  COCO files anywhere (beside `images/`, in `annotations/`, one per split); a `file_name` with a
  folder prefix or Windows separators is found by its longest unique path suffix.
- **Skipped, named in the summary** (`skipped_files`): documentation (README, LICENSE, *.md),
  dataset descriptions and class lists (data.yaml, classes.txt, *.names, notes.json: the class
  names are checked against shared.class_names for YOLO), VOC `ImageSets/` and segmentation
  masks, ultralytics *.cache, hidden and system files.
- **Repairs** (`repairs.*`): images with no label are background; boxes partly outside the
  image are clipped; RGBA, palette, greyscale, 16-bit and TIFF images, files whose content is not
  what their suffix says and EXIF-rotated photos are re-encoded upright as RGB. Labels refer to
  the upright image, as annotation tools display it; a missing or 0x0 declared size (VOC, COCO)
  is read from the upright image; a label file whose stem differs from its image's only in letter
  case, or that is named after the whole image file (`x.jpg.txt`), is paired and counted.
- **Policies** (`dropped.*`): COCO `iscrowd` regions are ignored, as COCO evaluation and
  ultralytics' converter do; VOC `difficult` objects are dropped, as ultralytics' VOC converter
  does; a box repeated in one image is kept once, as ultralytics does; images under 10 px are
  dropped (ultralytics' minimum); an image whose pixels repeat another's under a second name
  is dropped when the labels agree (an error when they differ), so no copy can straddle splits.
- **Errors** name the file, what is wrong and the fix: a declared size that differs from the
  upright image, an unreadable, truncated or oversized image, a label file in another encoding,
  a label or annotation file that matches no image, a file no reader uses.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from PIL import Image, ImageOps

from synthdet.data import (
    IMAGE_SUFFIXES,
    MIN_IMAGE_SIDE,
    Box,
    DataError,
    Sample,
    clip_box,
    drop_duplicate_boxes,
    format_label,
    inspect_image,
    label_file,
    parse_label_file,
    read_text,
)

Format = Literal["auto", "yolo", "coco", "voc"]
SUFFIX_OF_FORMAT = {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",)}
LAYOUT = {
    "yolo": "images + labels/<stem>.txt (YOLO)",
    "coco": "images + COCO *.json",
    "voc": "images + Annotations/<stem>.xml (Pascal VOC)",
}
ANNOTATION_SUFFIX = {"yolo": ".txt", "coco": ".json", "voc": ".xml"}
# Counted in metrics/prepare.json, in this order: repairs (the data is used, fixed) ...
REPAIR_KEYS = (
    "background_images",
    "clipped_boxes",
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
OTHER_IMAGE_SUFFIXES = (".heic", ".heif", ".avif", ".gif", ".jp2", ".dng", ".cr2", ".nef", ".arw")
DOCUMENTATION = re.compile(
    r"(readme|licen[cs]e|notice|citation|changelog|copying|authors)([ ._-].*)?", re.IGNORECASE
)
SPLIT_LISTS = ("train.txt", "val.txt", "valid.txt", "test.txt", "trainval.txt")
ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


# ---------------------------------------------------------------- what is in the folder


@dataclass
class Survey:
    """The files under a dataset folder: images, candidate annotation files, skipped files."""

    folder: Path
    images: list[Path]
    others: list[Path]  # every other file that is not skipped
    skipped: dict[Path, str]  # file -> why it is not data

    def with_suffix(self, suffix: str) -> list[Path]:
        return [p for p in self.others if p.suffix.lower() == suffix]


def skip_reason(path: Path, folder: Path) -> str | None:
    """Why a file under the dataset folder is not data (None: it is data)."""
    relative = path.relative_to(folder)
    name, suffix = path.name.lower(), path.suffix.lower()
    if any(part.startswith(".") or part == "__MACOSX" for part in relative.parts):
        return "hidden or system file"
    if name in ("thumbs.db", "desktop.ini"):
        return "system file"
    if DOCUMENTATION.fullmatch(path.name) or suffix in (".md", ".rst", ".pdf", ".html", ".htm"):
        return "documentation"
    if suffix in (".yaml", ".yml", ".data"):
        return "dataset description"
    if name in ("classes.txt", "notes.json", "labelmap.txt") or suffix == ".names":
        return "class list"
    if suffix == ".cache":
        return "ultralytics label cache"
    lowered = [part.lower() for part in relative.parts[:-1]]
    if "imagesets" in lowered:
        return "VOC split list (prepare makes its own split)"
    if "segmentationclass" in lowered or "segmentationobject" in lowered:
        return "VOC segmentation mask"
    return None


def survey(folder: Path) -> Survey:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    skipped = {p: reason for p in files if (reason := skip_reason(p, folder)) is not None}
    images = [p for p in files if p not in skipped and p.suffix.lower() in IMAGE_SUFFIXES]
    stems = {p.stem.lower() for p in images}
    others = []
    for p in files:
        if p in skipped or p.suffix.lower() in IMAGE_SUFFIXES:
            continue
        if p.parent == folder and p.name.lower() in SPLIT_LISTS and p.stem.lower() not in stems:
            skipped[p] = "split list (prepare makes its own split)"
            continue
        others.append(p)
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
    raise DataError(
        f"{folder}: cannot tell the dataset format; found {len(found.images)} images but no "
        "label files: expected images + labels/*.txt (YOLO), a COCO *.json (beside images/ or "
        "in annotations/), or Annotations/*.xml (Pascal VOC); or set prepare.format"
    )


def _names(paths: Sequence[Path], folder: Path, limit: int = 5) -> str:
    shown = ", ".join(str(p.relative_to(folder)) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def class_index(name: str, class_names: Sequence[str], where: str) -> int:
    if name not in class_names:
        raise DataError(f"{where}: class {name!r} is not in shared.class_names {list(class_names)}")
    return class_names.index(name)


def declared_class_names(path: Path) -> list[str] | None:
    """The class names a YOLO dataset states (data.yaml `names`, classes.txt, *.names,
    Label Studio's notes.json), None if the file states none."""
    text = read_text(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            content = yaml.safe_load(text)
            names = content.get("names") if isinstance(content, dict) else None
            if isinstance(names, dict):  # {0: apple, 1: pear}
                order = sorted(
                    names,
                    key=lambda k: (not isinstance(k, int), k if isinstance(k, int) else str(k)),
                )
                return [str(names[key]) for key in order]
            return [str(name) for name in names] if isinstance(names, list) else None
        if suffix == ".json":
            content = json.loads(text)
            categories = content.get("categories") if isinstance(content, dict) else None
            if not isinstance(categories, list):
                return None
            ordered = sorted(categories, key=lambda c: c["id"])
            return [str(c["name"]) for c in ordered]
    except (yaml.YAMLError, json.JSONDecodeError, RecursionError) as exc:
        raise DataError(
            f"{path}: cannot be parsed ({exc}); fix it or move it out of prepare.raw_dir"
        ) from exc
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(
            f"{path}: 'categories' must be a list of {{id, name}}; fix it or move it out of "
            "prepare.raw_dir"
        ) from exc
    if suffix in (".txt", ".names"):
        return [line.strip() for line in text.splitlines() if line.strip()]
    return None


def check_class_lists(found: Survey, class_names: Sequence[str]) -> None:
    """YOLO class ids index a list of names: the dataset's own list must be shared.class_names."""
    for path, reason in found.skipped.items():
        if reason not in ("class list", "dataset description"):
            continue
        names = declared_class_names(path)
        if names is not None and names != list(class_names):
            raise DataError(
                f"{path}: the dataset names its classes {names} but shared.class_names is "
                f"{list(class_names)}; YOLO class ids index these names, so set "
                "shared.class_names to the dataset's list in params.yaml"
            )


# ---------------------------------------------------------------- readers


@dataclass
class Record:
    """One image as an annotation format describes it, before the image itself is checked."""

    image: Path
    where: str = ""  # the annotation (file, entry) declaring `size` and the pixel boxes
    size: tuple[int, int] | None = None  # declared (width, height); None: not declared
    size_key: str = ""  # repair counted when the size is read from the image
    boxes: tuple[Box, ...] = ()  # normalised (YOLO)
    pixel_boxes: list[tuple[int, float, float, float, float, str]] = field(default_factory=list)
    labelled: bool = True  # False: no label file / annotation at all (counted as background)


def _pair_by_stem(
    images: Sequence[Path],
    annotations: Iterable[tuple[Path, Sequence[str]]],
    kind: str,
    folder: Path,
    repairs: Counter,
) -> dict[Path, Path]:
    """image -> its annotation file, matched on file stem (exactly, else by the whole image
    file name `x.jpg.txt`, else ignoring letter case, both counted); orphans are an error."""
    tables = (  # (image by key, fold case, repair counted)
        ({p.stem: p for p in images}, False, ""),
        ({p.name: p for p in images}, False, "label_named_after_image"),
        ({p.stem.lower(): p for p in images}, True, "label_stem_case"),
        ({p.name.lower(): p for p in images}, True, "label_named_after_image"),
    )
    pairs: dict[Path, Path] = {}
    orphans = []
    for annotation, stems in annotations:
        image, key = None, ""
        for table, fold, repair in tables:
            image = next(
                (
                    table[s.lower() if fold else s]
                    for s in stems
                    if (s.lower() if fold else s) in table
                ),
                None,
            )
            if image is not None:
                key = repair
                break
        if image is None:
            orphans.append(annotation)
            continue
        if image in pairs:
            raise DataError(
                f"{image}: several {kind} files for one image: {pairs[image]} and {annotation}; "
                "keep one"
            )
        pairs[image] = annotation
        if key:
            repairs[key] += 1
    if orphans:
        raise DataError(
            f"{folder}: {len(orphans)} {kind} file(s) match no image, their boxes would be lost: "
            f"{_names(orphans, folder)}; a {kind} file must have its image's file stem "
            f"(photo_1.jpg <-> photo_1{orphans[0].suffix}): rename them, add the images, or "
            "remove them from prepare.raw_dir"
        )
    return pairs


def read_yolo(
    found: Survey, class_names: Sequence[str], repairs: Counter
) -> tuple[list[Record], set[Path]]:
    labels = found.with_suffix(".txt")
    pairs = _pair_by_stem(
        found.images, ((p, [p.stem]) for p in labels), "label", found.folder, repairs
    )
    records = []
    for image in found.images:
        label = pairs.get(image)
        boxes = () if label is None else parse_label_file(label, len(class_names), repairs)
        records.append(Record(image, str(label), boxes=boxes, labelled=label is not None))
    return records, set(labels)


def _coco_where(path: Path, section: str, number: int, item: Any) -> str:
    name = item.get("id") if isinstance(item, dict) else None
    return f"{path} {section} #{number}" + (f" (id {name!r})" if name is not None else "")


def _load_coco(path: Path) -> dict:
    try:
        coco = json.loads(read_text(path))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); fix or re-export it") from exc
    if not isinstance(coco, dict) or not all(
        isinstance(coco.get(key), list) for key in ("images", "categories")
    ):
        raise DataError(
            f"{path}: not a COCO detection file (it needs the lists 'images' and 'categories'); "
            "export the dataset as COCO, or move this file out of prepare.raw_dir"
        )
    if not isinstance(coco.get("annotations", []), list):
        raise DataError(f"{path}: not a COCO detection file ('annotations' is not a list)")
    return coco


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _coco_size(image: dict, where: str) -> tuple[int, int] | None:
    width, height = image.get("width"), image.get("height")
    if width in (None, 0) or height in (None, 0):
        return None
    if not all(_is_number(v) and v > 0 and v == int(v) for v in (width, height)):
        raise DataError(
            f"{where}: width and height must be positive whole numbers, got {width!r} x "
            f"{height!r}; fix them or remove both (the size is then read from the image)"
        )
    return int(width), int(height)


class _ImageIndex:
    """Finds a COCO `file_name` among the images under the dataset folder."""

    def __init__(self, folder: Path, images: Sequence[Path]):
        self.folder = folder
        self.images = set(images)
        self.paths = {p.relative_to(folder).as_posix(): p for p in images}

    def find(self, file_name: str, annotation: Path) -> tuple[Path | None, bool]:
        """(image, whether it took more than joining `file_name` to a usual root)."""
        parts = [p for p in re.split(r"[\\/]+", file_name) if p not in ("", ".")]
        if parts and re.fullmatch(r"[A-Za-z]:", parts[0]):  # a Windows drive
            parts = parts[1:]
        if ".." in parts:
            parts = parts[len(parts) - parts[::-1].index("..") :]
        if not parts:
            return None, False
        plain = "/".join(parts) == file_name
        here, up = annotation.parent, annotation.parent.parent  # up: for annotations/*.json
        for root in (here, here / "images", up, up / "images", self.folder, self.folder / "images"):
            if root.joinpath(*parts) in self.images:
                return root.joinpath(*parts), not plain
        for fold in (False, True):
            for length in range(len(parts), 0, -1):
                suffix = "/".join(parts[-length:])
                suffix = suffix.lower() if fold else suffix
                matches = [
                    path
                    for key, path in self.paths.items()
                    if (key.lower() if fold else key) == suffix
                    or (key.lower() if fold else key).endswith("/" + suffix)
                ]
                if len(matches) == 1:
                    return matches[0], True
                if len(matches) > 1:
                    raise DataError(
                        f"{annotation}: file_name {file_name!r} matches several images: "
                        f"{_names(matches, self.folder)}; give it a path that names one"
                    )
        return None, False


def read_coco(
    found: Survey, class_names: Sequence[str], repairs: Counter
) -> tuple[list[Record], set[Path]]:
    files = found.with_suffix(".json")
    if not files:
        raise DataError(
            f"{found.folder}: no COCO *.json found (looked in the whole folder, e.g. beside "
            "images/ or in annotations/); export the labels as COCO or set prepare.format"
        )
    index = _ImageIndex(found.folder, found.images)
    records: dict[Path, Record] = {}
    listed_in: dict[Path, str] = {}
    for path in files:
        coco = _load_coco(path)
        categories: dict[int, str] = {}
        for number, category in enumerate(coco["categories"]):
            where = _coco_where(path, "category", number, category)
            ok = isinstance(category, dict) and isinstance(category.get("name"), str)
            if not ok or not isinstance(category.get("id"), int):
                raise DataError(f"{where}: needs an integer 'id' and a string 'name'")
            categories[category["id"]] = category["name"]
        images: dict[Any, Record] = {}
        for number, image in enumerate(coco["images"]):
            where = _coco_where(path, "image", number, image)
            if not isinstance(image, dict) or not isinstance(image.get("file_name"), str):
                raise DataError(f"{where}: needs a string 'file_name'")
            image_id = image.get("id")
            if not isinstance(image_id, int | str) or isinstance(image_id, bool):
                raise DataError(f"{where}: needs an integer 'id'")
            if image_id in images:
                raise DataError(f"{where}: image id {image_id!r} is listed twice")
            file_name = image["file_name"]
            resolved, repaired = index.find(file_name, path)
            if resolved is None:
                raise DataError(
                    f"{where}: image file_name {file_name!r} not found under {found.folder} "
                    f"(no image with the file name {PurePosixPath(file_name).name!r}); add the "
                    "image or remove its entry"
                )
            if resolved in listed_in:
                raise DataError(
                    f"{where}: file_name {file_name!r} is {resolved}, already listed in "
                    f"{listed_in[resolved]}; list each image once"
                )
            listed_in[resolved] = where
            repairs["coco_file_name_resolved"] += repaired
            size = _coco_size(image, where)
            images[image_id] = records[resolved] = Record(
                resolved, where, size, "coco_size_from_image", labelled=False
            )
        for number, ann in enumerate(coco.get("annotations", [])):
            where = _coco_where(path, "annotation", number, ann)
            if not isinstance(ann, dict):
                raise DataError(f"{where}: an annotation must be an object, got {ann!r}")
            image_id = ann.get("image_id")
            record = images.get(image_id) if isinstance(image_id, int | str) else None
            if record is None:
                raise DataError(
                    f"{where}: image_id {image_id!r} is not in 'images'"
                    f"{_string_hint(ann.get('image_id'))}"
                )
            record.labelled = True
            category = ann.get("category_id")
            if (
                not isinstance(category, int)
                or isinstance(category, bool)
                or (category not in categories)
            ):
                raise DataError(
                    f"{where}: category_id {category!r} is not in 'categories' "
                    f"(ids {sorted(categories)}){_string_hint(category)}"
                )
            crowd = ann.get("iscrowd", 0)
            if crowd not in (0, 1):
                raise DataError(f"{where}: iscrowd must be 0 or 1, got {crowd!r}")
            if crowd:  # a region over many objects: ignored, as COCO evaluation does
                repairs["coco_crowd_regions"] += 1
                continue
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
                raise DataError(f"{where}: 'bbox' must be [x, y, width, height], got {bbox!r}")
            class_id = class_index(categories[category], class_names, where)
            x, y, w, h = (float(v) for v in bbox)
            record.pixel_boxes.append((class_id, x, y, x + w, y + h, where))
    unlisted = [p for p in found.images if p not in records]
    if unlisted:
        raise DataError(
            f"{found.folder}: {len(unlisted)} image(s) are in no COCO file "
            f"({_names(files, found.folder, 3)}): {_names(unlisted, found.folder)}; add them to "
            "'images' (with no annotation an image is background) or move them out of "
            "prepare.raw_dir"
        )
    return sorted(records.values(), key=lambda r: r.image.name), set(files)


def _string_hint(value: Any) -> str:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return f"; it is the string {value!r}: COCO ids are integers, write {value.strip()}"
    return ""


def _voc_number(text: str | None, where: str, what: str, default: float = math.nan) -> float:
    """A number of a VOC file; an empty or missing element is `default`."""
    try:
        value = float(text) if text is not None and text.strip() else default
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{where}: {what} must be a number, got {text!r}")
    return value


def read_voc(
    found: Survey, class_names: Sequence[str], repairs: Counter
) -> tuple[list[Record], set[Path]]:
    if not found.images:
        raise DataError(f"{found.folder}: Pascal VOC layout needs images (JPEGImages/ or images/)")
    files = found.with_suffix(".xml")
    parsed = {}
    for path in files:
        try:
            root = ET.fromstring(path.read_bytes())
        except (ET.ParseError, ValueError, LookupError, RecursionError) as exc:
            raise DataError(f"{path}: not a valid Pascal VOC annotation ({exc})") from exc
        except OSError as exc:
            raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        if root.tag != "annotation":
            raise DataError(
                f"{path}: not a Pascal VOC annotation (root element <{root.tag}>, expected "
                "<annotation>); export the dataset as Pascal VOC (one XML per image)"
            )
        parsed[path] = root
    stems = (
        (path, [path.stem, *([Path(n).stem] if (n := root.findtext("filename")) else [])])
        for path, root in parsed.items()
    )
    pairs = _pair_by_stem(found.images, stems, "annotation", found.folder, repairs)
    records = []
    for image in found.images:
        xml_file = pairs.get(image)
        if xml_file is None:
            records.append(Record(image, labelled=False))
            continue
        root = parsed[xml_file]
        width = _voc_number(root.findtext("size/width"), str(xml_file), "size/width", 0)
        height = _voc_number(root.findtext("size/height"), str(xml_file), "size/height", 0)
        size = (int(width), int(height)) if width > 0 and height > 0 else None
        record = Record(image, str(xml_file), size, "voc_size_from_image")
        for number, obj in enumerate(root.iter("object")):
            where = f"{xml_file} object #{number}"
            difficult = _voc_number(obj.findtext("difficult"), where, "difficult", 0)
            if difficult not in (0, 1):
                raise DataError(f"{where}: difficult must be 0 or 1, got {difficult:g}")
            corners = [
                _voc_number(obj.findtext(f"bndbox/{k}"), where, f"bndbox/{k}")
                for k in ("xmin", "ymin", "xmax", "ymax")
            ]
            class_id = class_index((obj.findtext("name") or "").strip(), class_names, where)
            if difficult:
                repairs["voc_difficult_objects"] += 1
                continue
            record.pixel_boxes.append((class_id, *corners, where))
        records.append(record)
    return records, set(files)


READERS = {"yolo": read_yolo, "coco": read_coco, "voc": read_voc}


# ---------------------------------------------------------------- the whole import


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


def _check_unused(found: Survey, used: set[Path], fmt: str) -> None:
    unused = [p for p in found.others if p not in used]
    other_images = [p for p in unused if p.suffix.lower() in OTHER_IMAGE_SUFFIXES]
    if other_images:
        raise DataError(
            f"{found.folder}: {len(other_images)} image(s) in a format prepare does not read: "
            f"{_names(other_images, found.folder)}; convert them to JPEG or PNG "
            f"(read: {', '.join(IMAGE_SUFFIXES)})"
        )
    if unused:
        raise DataError(
            f"{found.folder}: {len(unused)} file(s) are not part of the {LAYOUT[fmt]} dataset "
            f"and would be ignored: {_names(unused, found.folder)}; move them out of "
            "prepare.raw_dir (or set prepare.format if they are the labels)"
        )


def _check_stems(images: Sequence[Path]) -> None:
    seen: dict[str, Path] = {}
    for image in images:
        other = seen.setdefault(image.stem.lower(), image)
        if other is not image:
            how = "file stem" if other.stem == image.stem else "file stem up to letter case"
            raise DataError(
                f"{image}: duplicate {how}, also {other}; the prepared splits are flat folders "
                "keyed by stem, so rename one"
            )


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
    samples, sizes, first_of = [], {}, {}
    for record in records:
        sample, size, digest = _finish(record, repairs)
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
                raise DataError(
                    f"{sample.image}: the same picture as {original.image} but with other "
                    "labels; a copy would also leak between splits: keep one, with the right "
                    "labels"
                )
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
    if not samples:
        raise DataError(f"{folder}: no usable image left (every image was dropped, see above)")
    return Imported(fmt, samples, repairs, notes, sizes)


# ---------------------------------------------------------------- writing


def write_yolo_folder(samples: Sequence[Sample], folder: Path, repairs: Counter) -> None:
    """The internal layout: images/ (RGB, upright) and labels/<stem>.txt for every image."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for sample in samples:
        write_normalised_image(sample.image, folder / "images", repairs)
        label_file(folder, sample.image).write_text(format_label(sample.boxes))


def write_normalised_image(source: Path, folder: Path, repairs: Counter) -> Path:
    """Copy an RGB JPEG/PNG as is; re-encode anything else upright as RGB PNG (counted)."""
    with Image.open(source) as image:
        suffix_ok = source.suffix.lower() in SUFFIX_OF_FORMAT.get(image.format or "", ())
        rotated = image.getexif().get(0x0112, 1) != 1  # EXIF orientation tag
        if suffix_ok and image.mode == "RGB" and not rotated:
            target = folder / source.name
            target.write_bytes(source.read_bytes())
            return target
        upright = ImageOps.exif_transpose(image)
        if upright.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit greyscale: keep the top 8 bits.
            upright = upright.point(lambda v: v / 256).convert("L")
        target = folder / f"{source.stem}.png"
        upright.convert("RGB").save(target)
        repairs["reencoded_images"] += 1
        return target


def coco_dict(samples: Sequence[Sample], class_names: Sequence[str], image_root: Path) -> dict:
    """COCO detection JSON of `samples`; file names relative to `image_root`."""
    images, annotations = [], []
    for image_id, sample in enumerate(samples, 1):
        with Image.open(sample.image) as image:
            width, height = image.size
        file_name = sample.image.resolve().relative_to(image_root.resolve()).as_posix()
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for box in sample.boxes:
            x0, y0, x1, y1 = box.xyxy(width, height)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": box.class_id + 1,  # COCO ids start at 1
                    "bbox": [round(v, 3) for v in (x0, y0, x1 - x0, y1 - y0)],
                    "area": round((x1 - x0) * (y1 - y0), 3),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}
