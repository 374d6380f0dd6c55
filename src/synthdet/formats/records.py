"""One image as an annotation format describes it, and annotation files paired with images."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from synthdet.core.data import Box, DataError
from synthdet.formats.survey import _names


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


def gathered(messages: Sequence[str], what: str) -> DataError | None:
    """One error naming every per-file problem found (None: none), so that a user fixes them
    all after one run rather than one per run: `what` says what the problems are, e.g.
    "annotation files are not valid Pascal VOC"; a single problem keeps its own message."""
    if not messages:
        return None
    if len(messages) == 1:
        return DataError(messages[0])
    return DataError(
        f"{len(messages)} {what}: " + " ".join(f"({n}) {m}" for n, m in enumerate(messages, 1))
    )
