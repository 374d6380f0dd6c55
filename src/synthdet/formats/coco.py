"""COCO JSON datasets: one or more files anywhere under the folder, file names resolved."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

from synthdet.core.data import DataError, read_text
from synthdet.formats.records import Record, gathered
from synthdet.formats.survey import ClassLookup, Survey, _names


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


def _coco_id(value: Any) -> int | str | None:
    """An id as pycocotools looks it up: an integer (a whole JSON number such as 1.0 is the
    same key) or, for images, a string; None for anything else (bool, fraction, list...)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    return value if isinstance(value, int | str) else None


def _coco_size(image: dict, where: str) -> tuple[int, int] | None:
    width, height = image.get("width"), image.get("height")
    if any(v is None or (_is_number(v) and v == 0) for v in (width, height)):
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
        """(image, whether it took more than joining `file_name` to a usual root); a name
        taken from a URL (`my%20photo.jpg`, Label Studio) is also tried decoded."""
        image, repaired = self._find(file_name, annotation)
        if image is None and unquote(file_name) != file_name:
            return self._find(unquote(file_name), annotation)[0], True
        return image, repaired

    def _find(self, file_name: str, annotation: Path) -> tuple[Path | None, bool]:
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
    """Every problem of a kind is named at once (`records.gathered`): files that are no COCO
    detection file, then every wrong category, image and annotation entry of all files (each
    with its file, section, number and id), then objects of unknown classes, then images no
    file lists. An annotation of a refused image or category is not named again."""
    files = found.with_suffix(".json")
    if not files:
        raise DataError(
            f"{found.folder}: no COCO *.json found (looked in the whole folder, e.g. beside "
            "images/ or in annotations/); export the labels as COCO or set prepare.format"
        )
    loaded, problems = {}, []
    for path in files:
        try:
            loaded[path] = _load_coco(path)
        except DataError as exc:
            problems.append(str(exc))
    if error := gathered(problems, "files are not COCO detection files"):
        raise error
    index = _ImageIndex(found.folder, found.images)
    records: dict[Path, Record] = {}
    listed_in: dict[Path, str] = {}
    lookup = ClassLookup(class_names)
    for path, coco in loaded.items():
        categories, refused_categories = _categories(path, coco, problems)
        images, refused_images = _images(path, coco, found, index, listed_in, repairs, problems)
        records.update((record.image, record) for record in images.values())
        for number, ann in enumerate(coco.get("annotations", [])):
            where = _coco_where(path, "annotation", number, ann)
            try:
                _annotate(ann, where, images, categories, lookup, repairs)
            except DataError as exc:
                refused = isinstance(ann, dict) and (
                    _coco_id(ann.get("image_id")) in refused_images
                    or _coco_id(ann.get("category_id")) in refused_categories
                )
                if not refused:  # else its image or category is named already
                    problems.append(str(exc))
    if error := gathered(problems, "COCO entries hold a wrong value"):
        raise error
    lookup.check(found.folder)
    unlisted = [p for p in found.images if p not in records]
    if unlisted:
        raise DataError(
            f"{found.folder}: {len(unlisted)} image(s) are in no COCO file "
            f"({_names(files, found.folder, 3)}): {_names(unlisted, found.folder)}; add them to "
            "'images' (with no annotation an image is background) or move them out of "
            "prepare.raw_dir"
        )
    return sorted(records.values(), key=lambda r: r.image.name), set(files)


def _categories(path: Path, coco: dict, problems: list[str]) -> tuple[dict[int, str], set]:
    """A file's categories, {id: name}, and the ids of the entries refused (their problems
    appended to `problems`)."""
    categories: dict[int, str] = {}
    refused = set()
    for number, category in enumerate(coco["categories"]):
        where = _coco_where(path, "category", number, category)
        raw_id = category.get("id") if isinstance(category, dict) else None
        category_id = _coco_id(raw_id)
        if not isinstance(category_id, int) or not isinstance(category.get("name"), str):
            problems.append(
                f"{where}: needs an integer 'id' and a string 'name'{_string_hint(raw_id)}"
            )
            refused.add(category_id)
            continue
        if categories.setdefault(category_id, category["name"]) != category["name"]:
            problems.append(
                f"{where}: category id {category_id} is {category['name']!r} here but "
                f"{categories[category_id]!r} before; give each category its own id"
            )
    return categories, refused - {None}


def _images(
    path: Path,
    coco: dict,
    found: Survey,
    index: _ImageIndex,
    listed_in: dict[Path, str],
    repairs: Counter,
    problems: list[str],
) -> tuple[dict[Any, Record], set]:
    """A file's images, {id: record} (their image files resolved, `listed_in` updated: image
    file -> the entry that lists it, across files), and the ids of the entries refused (their
    problems appended to `problems`)."""
    images: dict[Any, Record] = {}
    refused = set()
    for number, image in enumerate(coco["images"]):
        where = _coco_where(path, "image", number, image)
        image_id = _coco_id(image.get("id")) if isinstance(image, dict) else None
        try:
            if not isinstance(image, dict) or not isinstance(image.get("file_name"), str):
                raise DataError(f"{where}: needs a string 'file_name'")
            if image_id is None:
                raise DataError(f"{where}: needs an integer 'id', got {image.get('id')!r}")
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
            size = _coco_size(image, where)
        except DataError as exc:
            problems.append(str(exc))
            if image_id not in images:  # a second entry of an id: the first one stays
                refused.add(image_id)
            continue
        listed_in[resolved] = where
        repairs["coco_file_name_resolved"] += repaired
        images[image_id] = Record(resolved, where, size, "coco_size_from_image", labelled=False)
    return images, refused - {None}


def _annotate(
    ann: Any,
    where: str,
    images: dict[Any, Record],
    categories: dict[int, str],
    lookup: ClassLookup,
    repairs: Counter,
) -> None:
    """Add an annotation's box to its image's record (a crowd region is counted, not added);
    DataError for a wrong value."""
    if not isinstance(ann, dict):
        raise DataError(f"{where}: an annotation must be an object, got {ann!r}")
    image_id = _coco_id(ann.get("image_id"))
    record = images.get(image_id) if image_id is not None else None
    if record is None:
        raise DataError(
            f"{where}: image_id {ann.get('image_id')!r} is not in 'images'"
            f"{_string_hint(ann.get('image_id'))}"
        )
    record.labelled = True
    category = _coco_id(ann.get("category_id"))
    if not isinstance(category, int) or category not in categories:
        raise DataError(
            f"{where}: category_id {ann.get('category_id')!r} is not in 'categories' "
            f"(ids {sorted(categories)}){_string_hint(ann.get('category_id'))}"
        )
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1):
        raise DataError(f"{where}: iscrowd must be 0 or 1, got {crowd!r}")
    if crowd:  # a region over many objects: ignored, as COCO evaluation does
        repairs["coco_crowd_regions"] += 1
        return
    if ann.get("ignore", 0) not in (0, False):
        # Kept, it would become an object; pycocotools overrides the flag with iscrowd
        # and detectron2 refuses it, so the user says which it is.
        raise DataError(
            f"{where}: 'ignore' is {ann['ignore']!r}; prepare has no ignore flag (as "
            "detectron2): set 'iscrowd': 1 for a region to ignore (dropped, counted), "
            "or 'ignore': 0 for an object"
        )
    corners = _corners(ann, where, repairs)
    class_id = lookup.index(categories[category], where)
    if class_id is not None:
        record.pixel_boxes.append((class_id, *corners, where))


def _corners(ann: dict, where: str, repairs: Counter) -> tuple[float, float, float, float]:
    """Pixel corners (x0, y0, x1, y1) of an annotation's `bbox`; without one, of its polygon
    `segmentation`, whose enclosing box is the COCO bbox by definition (counted as
    `polygon_boxes`, as YOLO polygon rows are)."""
    bbox, polygons = ann.get("bbox"), ann.get("segmentation")
    if bbox is None and isinstance(polygons, list) and polygons:
        if not all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(_is_number, p))
            for p in polygons
        ):
            raise DataError(
                f"{where}: no 'bbox', and 'segmentation' is not a list of polygons [x1, y1, x2, "
                "y2, x3, y3, ...]; add the 'bbox' [x, y, width, height]"
            )
        xs = [float(v) for p in polygons for v in p[0::2]]
        ys = [float(v) for p in polygons for v in p[1::2]]
        repairs["polygon_boxes"] += 1
        return min(xs), min(ys), max(xs), max(ys)
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
        found = "a run-length mask" if isinstance(polygons, dict) and bbox is None else repr(bbox)
        raise DataError(
            f"{where}: 'bbox' must be [x, y, width, height], got {found}; add it (pycocotools' "
            "mask.toBbox gives it for a mask) or remove the annotation"
        )
    x, y, w, h = (float(v) for v in bbox)
    return x, y, x + w, y + h


def _string_hint(value: Any) -> str:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return f"; it is the string {value!r}: COCO ids are integers, write {value.strip()}"
    return ""
