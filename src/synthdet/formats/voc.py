"""Pascal VOC XML datasets: one annotation file per image."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from synthdet.core.data import DataError
from synthdet.formats.records import Record, _pair_by_stem, gathered
from synthdet.formats.survey import ClassLookup, Survey


def _voc_number(text: str | None, where: str, what: str, default: float = math.nan) -> float:
    """A number of a VOC file; an empty or missing element is `default`."""
    try:
        value = float(text) if text is not None and text.strip() else default
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{where}: {what} must be a number, got {text!r}")
    return value


def _record(
    image: Path, xml_file: Path, root: ET.Element, lookup: ClassLookup, repairs: Counter
) -> Record:
    """The record of one VOC file; DataError for an element of a wrong value."""
    width = _voc_number(root.findtext("size/width"), str(xml_file), "size/width", 0)
    height = _voc_number(root.findtext("size/height"), str(xml_file), "size/height", 0)
    if width < 0 or height < 0 or width != int(width) or height != int(height):
        raise DataError(
            f"{xml_file}: size {width:g}x{height:g} is not a whole number of pixels; "
            "correct it or remove <size> (it is then read from the image)"
        )
    size = (int(width), int(height)) if width > 0 and height > 0 else None
    record = Record(image, str(xml_file), size, "voc_size_from_image")
    for number, obj in enumerate(root.iter("object")):
        where = f"{xml_file} object #{number}"
        flag = (obj.findtext("difficult") or "").strip().lower()
        flag = {"true": "1", "false": "0"}.get(flag, flag)  # some tools write booleans
        difficult = _voc_number(flag, where, "difficult", 0)
        if difficult not in (0, 1):
            raise DataError(f"{where}: difficult must be 0 or 1, got {difficult:g}")
        corners = [
            _voc_number(obj.findtext(f"bndbox/{k}"), where, f"bndbox/{k}")
            for k in ("xmin", "ymin", "xmax", "ymax")
        ]
        class_id = lookup.index((obj.findtext("name") or "").strip(), where)
        if difficult:
            repairs["voc_difficult_objects"] += 1
            continue
        if class_id is not None:
            record.pixel_boxes.append((class_id, *corners, where))
    return record


def read_voc(
    found: Survey, class_names: Sequence[str], repairs: Counter
) -> tuple[list[Record], set[Path]]:
    """Every problem of a kind is named at once: files that are no VOC annotation, then
    annotations with a wrong element, then objects of unknown classes."""
    if not found.images:
        raise DataError(f"{found.folder}: Pascal VOC layout needs images (JPEGImages/ or images/)")
    files = found.with_suffix(".xml")
    parsed, problems = {}, []
    for path in files:
        try:
            root = ET.fromstring(path.read_bytes())
        except (ET.ParseError, ValueError, LookupError, RecursionError) as exc:
            problems.append(f"{path}: not a valid Pascal VOC annotation ({exc})")
            continue
        except OSError as exc:
            problems.append(f"{path}: cannot be read ({exc.strerror or exc})")
            continue
        if root.tag != "annotation":
            problems.append(
                f"{path}: not a Pascal VOC annotation (root element <{root.tag}>, expected "
                "<annotation>); export the dataset as Pascal VOC (one XML per image)"
            )
            continue
        parsed[path] = root
    if error := gathered(problems, "files are not readable Pascal VOC annotations"):
        raise error
    stems = (
        (path, [path.stem, *([Path(n).stem] if (n := root.findtext("filename")) else [])])
        for path, root in parsed.items()
    )
    pairs = _pair_by_stem(found.images, stems, "annotation", found.folder, repairs)
    records, lookup = [], ClassLookup(class_names)
    for image in found.images:
        xml_file = pairs.get(image)
        if xml_file is None:
            records.append(Record(image, labelled=False))
            continue
        try:
            records.append(_record(image, xml_file, parsed[xml_file], lookup, repairs))
        except DataError as exc:
            problems.append(str(exc))
    if error := gathered(problems, "Pascal VOC annotations hold a wrong value"):
        raise error
    lookup.check(found.folder)
    return records, set(files)
