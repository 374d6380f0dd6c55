"""Stage metrics that another stage reads: prepare's and annotate-with-baseline's.

Each is a frozen dataclass with the metrics file's name and a read function. The files are
flat JSON written by their stage (`metrics/<FILE>`); a value the file lacks reads as None, which
the report prints as "n/a".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from synthdet.core.data import DataError

PREPARE_METRICS = "prepare.json"
HANDFUL_METRICS = "handful.json"  # a handful draw's: images and boxes, in all and per subject
ANNOTATE_METRICS = "annotate.json"
COPY_PASTE_METRICS = "copy_paste.json"
PSEUDO_METRICS = "pseudo.json"
IMAGES_METRICS = "images.json"  # check-images'
DRAW_METRICS = "draws"  # under metrics/: draw<d>/ holds the files of one handful draw's stages


@dataclass(frozen=True)
class SplitCounts:
    images: int | None = None
    boxes: int | None = None


@dataclass(frozen=True)
class PrepareMetrics:
    """The real splits as prepare wrote them (`<split>.images`, `<split>.boxes`)."""

    train: SplitCounts
    val: SplitCounts
    test: SplitCounts

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PrepareMetrics:
        names = [split.name for split in fields(cls)]
        return cls(**{n: SplitCounts(raw.get(f"{n}.images"), raw.get(f"{n}.boxes")) for n in names})

    def splits(self) -> dict[str, SplitCounts]:
        """{split name: counts}, in the order train, val, test."""
        return {split.name: getattr(self, split.name) for split in fields(self)}


@dataclass(frozen=True)
class AnnotatorQuality:
    """The annotator on the real val split at the labelling settings (`annotator.*`)."""

    precision: float | None = None  # None: it kept no box
    recall: float | None = None
    map50: float | None = None
    map50_95: float | None = None
    val_images: int | None = None
    val_boxes: int | None = None
    val_boxes_per_image: float | None = None
    val_mean_confidence: float | None = None  # None: it kept no box


@dataclass(frozen=True)
class AnnotateMetrics:
    """The auto-labelled set as annotate-with-baseline wrote it."""

    images: int | None = None
    boxes: int | None = None
    images_without_boxes: int | None = None
    boxes_per_image: float | None = None
    mean_confidence: float | None = None  # None: no box from the baseline
    corrected_images: int = 0
    corrections_unused: int = 0
    duplicate_boxes_dropped: int = 0
    empty_label_set: bool = False  # no box in any image
    annotator: AnnotatorQuality = AnnotatorQuality()

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AnnotateMetrics:
        own = {f.name for f in fields(cls)} - {"annotator"}
        prefix = "annotator."
        quality = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
        known = {f.name for f in fields(AnnotatorQuality)}
        return cls(
            **{k: v for k, v in raw.items() if k in own},
            annotator=AnnotatorQuality(**{k: v for k, v in quality.items() if k in known}),
        )


@dataclass(frozen=True)
class ExtraImagesMetrics:
    """An extra-image set of the few-shot variants as its stage wrote it (copy-paste,
    pseudo-label): images and boxes; the rest of the file is the stage's own."""

    images: int | None = None
    boxes: int | None = None
    empty_label_set: bool = False  # an annotation pass (pseudo-label) that labelled no box

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExtraImagesMetrics:
        return cls(raw.get("images"), raw.get("boxes"), bool(raw.get("empty_label_set")))


def read_metrics_json(path: Path) -> dict[str, Any]:
    """A flat metrics JSON of an earlier stage; DataError naming the file if unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the metrics JSON ({exc}); run dvc repro") from exc


def read_prepare_metrics(path: Path) -> PrepareMetrics:
    """prepare's metrics file (`metrics/prepare.json`)."""
    return PrepareMetrics.from_dict(read_metrics_json(path))


def read_annotate_metrics(path: Path) -> AnnotateMetrics:
    """annotate-with-baseline's metrics file (`metrics/draws/draw<d>/annotate.json`)."""
    return AnnotateMetrics.from_dict(read_metrics_json(path))


def read_extra_images_metrics(path: Path) -> ExtraImagesMetrics:
    """copy-paste's, pseudo-label's or the handful's metrics file (`metrics/draws/draw<d>/`
    `copy_paste.json`, `pseudo.json`, `handful.json`): images and boxes."""
    return ExtraImagesMetrics.from_dict(read_metrics_json(path))
