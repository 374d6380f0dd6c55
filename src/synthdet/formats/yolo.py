"""YOLO txt datasets: the class list a dataset states, and labels/<stem>.txt per image."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import yaml

from synthdet.core.data import DataError, parse_label_file, read_text
from synthdet.formats.records import Record, _pair_by_stem, gathered
from synthdet.formats.survey import Survey


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
                return _names_by_id(names, path)
            if names is None or isinstance(names, list):
                return None if names is None else [str(name) for name in names]
            raise DataError(
                f"{path}: 'names' must be a list of class names or a mapping id -> name, got "
                f"{names!r}; fix it or move it out of prepare.raw_dir"
            )
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


def _names_by_id(names: dict, path: Path) -> list[str]:
    """A `names` mapping as a list indexed by class id; keys may be strings ('10': pear), as
    ultralytics reads them (`int(key)`), so id 10 never sorts before id 2."""
    try:
        by_id = {int(key): str(name) for key, name in names.items()}
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{path}: 'names' keys must be class ids (0, 1, ...), got {list(names)}; fix it or "
            "move it out of prepare.raw_dir"
        ) from exc
    if sorted(by_id) != list(range(len(by_id))):
        raise DataError(
            f"{path}: 'names' must number the classes 0-{len(by_id) - 1} without a gap, got ids "
            f"{sorted(by_id)}; YOLO class ids index this list, so renumber the labels and names"
        )
    return [by_id[i] for i in range(len(by_id))]


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


def read_yolo(
    found: Survey, class_names: Sequence[str], repairs: Counter
) -> tuple[list[Record], set[Path]]:
    labels = found.with_suffix(".txt")
    pairs = _pair_by_stem(
        found.images, ((p, [p.stem]) for p in labels), "label", found.folder, repairs
    )
    records, problems = [], []
    for image in found.images:
        label = pairs.get(image)
        try:
            boxes = () if label is None else parse_label_file(label, len(class_names), repairs)
        except DataError as exc:  # every malformed label file is named in one error
            problems.append(str(exc))
            continue
        records.append(Record(image, str(label), boxes=boxes, labelled=label is not None))
    if error := gathered(problems, "label files cannot be read"):
        raise error
    return records, set(labels)
