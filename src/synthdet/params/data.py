"""The sections about the data: shared (seed, subjects, classes) and prepare."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from synthdet.params.parsing import ParamsError, _require

SUBJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class SubjectParams:
    """One personalised subject: its own images, identifier, class noun and adapter."""

    identifier: str  # the rare token that names the subject ("sks"); "<sks>" for textual inversion
    class_noun: str  # what the subject is ("apple tree"); also the prior/class prompt noun
    images: int  # how many train images the subject is personalised on
    stem_pattern: str  # regex (re.search) on the file stem choosing candidates; '.*' = any


@dataclass(frozen=True)
class SharedParams:
    seed: int
    # The diffusion image scale, in px: images are resized so their shorter side is this and
    # centre-cropped square, for base, class_images, personalize and generate alike.
    resolution: int
    subjects: dict[str, SubjectParams]  # name -> subject; each gets its own DVC stage and adapter
    class_names: tuple[str, ...]  # detector classes, index = YOLO class id
    mlflow_experiment: str

    def __post_init__(self) -> None:
        _require(
            0 <= self.seed < 2**32,
            "shared.seed",
            f"must be in [0, 2**32 - 1] (numpy's seed range), got {self.seed}",
        )
        _require(
            self.resolution >= 8 and self.resolution % 8 == 0,
            "shared.resolution",
            "must be a positive multiple of 8 (the VAE halves the image 3 times in SD), got "
            f"{self.resolution}",
        )
        _require(len(self.class_names) > 0, "shared.class_names", "must name at least one class")
        for i, name in enumerate(self.class_names):
            _require(
                bool(name.strip()) and name == name.strip(),
                f"shared.class_names[{i}]",
                f"must be a non-empty name without leading or trailing spaces, got {name!r}",
            )
        repeated = sorted({name for name in self.class_names if self.class_names.count(name) > 1})
        _require(
            not repeated,
            "shared.class_names",
            f"names {', '.join(map(repr, repeated))} more than once; each class needs its own "
            "name (the index is the YOLO class id)",
        )
        _require(
            bool(self.mlflow_experiment.strip()), "shared.mlflow_experiment", "must not be empty"
        )
        _require(len(self.subjects) > 0, "shared.subjects", "must hold at least one subject")
        for name, subject in self.subjects.items():
            key = f"shared.subjects.{name}"
            _require(
                SUBJECT_NAME.fullmatch(str(name)) is not None,
                key,
                "is not a valid subject name (letters, digits, '_' and '-'; it names a folder "
                "and a DVC stage)",
            )
            _require(
                bool(subject.identifier.strip()) and len(subject.identifier.split()) == 1,
                f"{key}.identifier",
                "must be one non-empty word",
            )
            _require(bool(subject.class_noun.strip()), f"{key}.class_noun", "must not be empty")
            _require(subject.images >= 1, f"{key}.images", "must be >= 1")
            try:
                re.compile(subject.stem_pattern)
            except re.error as exc:
                raise ParamsError(
                    f"params: '{key}.stem_pattern' is not a valid regex: {exc}"
                ) from exc


@dataclass(frozen=True)
class PrepareParams:
    raw_dir: str
    format: Literal["auto", "yolo", "coco", "voc"]
    # regex on the file stem; group 1 (or group 'group') names the photo; None: every image is
    # its own group
    group_pattern: str | None
    val_groups: int  # groups (photos), not images, drawn for val
    test_groups: int  # groups (photos), not images, drawn for test

    def __post_init__(self) -> None:
        _require(bool(self.raw_dir.strip()), "prepare.raw_dir", "must name the dataset folder")
        if self.group_pattern is not None:
            try:
                compiled = re.compile(self.group_pattern)
            except re.error as exc:
                raise ParamsError(
                    f"params: 'prepare.group_pattern' is not a valid regex: {exc}"
                ) from exc
            _require(
                compiled.groups >= 1,
                "prepare.group_pattern",
                "needs a capture group (or null: every image is its own group)",
            )
        _require(self.val_groups >= 1, "prepare.val_groups", "must be >= 1")
        _require(self.test_groups >= 1, "prepare.test_groups", "must be >= 1")
