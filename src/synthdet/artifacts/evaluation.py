"""`evaluation.json`: every number evaluate computed, read by the report (and MLflow).

`Evaluation` is the typed record: the chance baseline, one `VariantRecord` per detector variant (mAP
mean and std over its units, a unit being a (handful draw, seed) pair, margin over chance,
real-image equivalent, flags), one `DrawScores` per variant and handful draw (few_shot.draws; not
for `real`, which no draw changes), one `Comparison` per (variant, reference) pair with whether it
is evidence, the headroom check and the test split's size. On disk it is a flat dict of dotted keys
(`<variant>.<key>`, `<variant>.draw<d>.<key>`, `<variant>-vs-<reference>.<key>`, `chance.<key>`,
`headroom.<key>`, `target_difference`, `test_images`, `test_boxes`) so that `dvc metrics` and MLflow
see plain numbers; `to_flat` and `from_flat` are the only code that knows those keys, and
`from_flat` refuses a missing, mistyped or unknown key by name.

A file without `target_difference` was written before evaluate judged evidence, headroom and
identifiability (issue 23): it reads with those fields None, and every other key is still
required.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthdet.core.data import DataError, write_json

EVALUATION = "evaluation.json"
HEADLINE_METRICS = "evaluate.json"  # the headline numbers `dvc exp show` prints (a plain dict)

MAP_KEYS = ("map50_95", "map50", "map75")
SIZE_KEYS = ("map_small", "map_medium", "map_large")  # COCO object sizes, synthdet.analysis.metrics
CHANCE = "chance"  # one whole-image box per test image, score 1
VERSUS = "-vs-"  # joins a comparison's variant and reference in its key prefix
EQUIVALENT = "real_image_equivalent"
HEADROOM = "headroom"
TARGET = "target_difference"
DRAW = re.compile(r"^(?P<variant>.+)\.draw(?P<draw>\d+)$")  # `<variant>.draw<d>` prefixes
BOUNDS = ("below", "above")  # outside the real-image curve (synthdet.analysis.stats.Equivalent)


@dataclass(frozen=True)
class MeanStd:
    """A test mAP (0-1) over a variant's seeds."""

    mean: float | None  # None only for an object size the test split has no box of
    std: float | None  # sample std; None with one seed (undefined) or without a mean


@dataclass(frozen=True)
class RealImageEquivalent:
    """The labelled real images that score like the variant, on the real-image curve."""

    images: float | None  # interpolated count; None when outside the curve (see `bound`)
    low: float | None  # the same for the mean - std and mean + std (std 0 with one seed)
    high: float | None
    bound: str | None  # "below" the handful or "above" all real images; None on the curve
    # why there is no number although the curve was trained ("not identifiable: ..."); None when
    # identifiable, or in a file written before evaluate checked (no `target_difference`)
    reason: str | None = None


@dataclass(frozen=True)
class DrawScores:
    """One variant's detectors of one handful draw: test mAP@[.5:.95] over their seeds."""

    seeds: int
    map50_95: MeanStd


@dataclass(frozen=True)
class VariantRecord:
    """One detector variant on the real test split, over its units: (draw, seed) pairs, one per
    seed for `real` (no draw changes it), so with one draw the seeds."""

    seeds: int  # units (draws x seeds)
    map50_95: MeanStd
    map50: MeanStd
    map75: MeanStd
    map_small: MeanStd
    map_medium: MeanStd
    map_large: MeanStd
    margin_over_chance: float  # mean mAP@[.5:.95] minus the chance baseline's
    below_annotation_confidence: bool  # no test box scored above the annotation confidence
    train_boxes: int  # boxes in its training labels (real + extra, each image once)
    empty_label_set: bool  # trained on no box at all
    empty_extra_labels: bool  # it has extra images, and none holds a box
    # None when the run trained fewer than two points of the curve (handful, real-n…, real)
    real_image_equivalent: RealImageEquivalent | None


@dataclass(frozen=True)
class Comparison:
    """Paired difference in test mAP@[.5:.95] (variant - reference), over the (draw, seed) units
    both have; `real`'s detector of a seed pairs with every draw's of that seed."""

    variant: str
    reference: str
    diff_map50_95: float
    diff_std: float | None  # None with one seed: no std, interval, p-value nor MDD
    diff_low: float | None  # 95 % t interval
    diff_high: float | None
    seeds: int  # paired units
    p_value: float | None
    p_holm: float | None  # Holm-adjusted over every comparison of the run
    mdd: float | None  # minimum detectable difference at 80 % power, 5 % level
    # >= 2 seeds and mdd <= the evaluation's target_difference; None in a file written before
    # evaluate judged it
    evidence: bool | None = None
    evidence_reason: str | None = None  # why not evidence; None when it is

    @property
    def key(self) -> str:
        return f"{self.variant}{VERSUS}{self.reference}"


@dataclass(frozen=True)
class ChanceScores:
    """The trivial detector: one whole-image box of class 0 per test image."""

    map50_95: float
    map50: float
    map75: float


@dataclass(frozen=True)
class Headroom:
    """Whether the data leaves room to see extra images' worth: `real` well above `handful` and
    above chance (mAP@[.5:.95] differences of the means over seeds)."""

    real_minus_handful: float
    real_minus_chance: float
    seed_std: float | None  # pooled seed std of real and handful; None with one seed
    ok: bool
    reason: str | None  # what is missing and the settings to try; None when all is


@dataclass(frozen=True)
class Evaluation:
    """Everything evaluate measured; `variants` keeps evaluate's order (a file read back: by
    name)."""

    chance: ChanceScores
    variants: Mapping[str, VariantRecord]
    comparisons: tuple[Comparison, ...]
    test_images: int
    test_boxes: int
    # the smallest difference worth detecting (evaluate.target_difference, mAP@[.5:.95]); None
    # in a file written before evaluate judged evidence
    target_difference: float | None = None
    headroom: Headroom | None = None  # None without both `real` and `handful` (or an old file)
    # {variant: {draw: scores}} of the variants trained per handful draw (every one but `real`)
    draws: Mapping[str, Mapping[int, DrawScores]] = field(default_factory=dict)

    def variant(self, name: str) -> VariantRecord:
        """The record of variant `name`; DataError if evaluate did not score it."""
        if name not in self.variants:
            raise DataError(
                f"{EVALUATION} has no variant {name!r} (it has {', '.join(self.variants)}); "
                "rerun evaluate with the params the report uses (dvc repro)"
            )
        return self.variants[name]

    def comparison(self, variant: str, reference: str) -> Comparison:
        """The comparison of `variant` against `reference`; DataError if evaluate made none."""
        for comparison in self.comparisons:
            if (comparison.variant, comparison.reference) == (variant, reference):
                return comparison
        raise DataError(
            f"{EVALUATION} has no comparison {variant}{VERSUS}{reference}; rerun evaluate with "
            "the params the report uses (dvc repro)"
        )

    def to_flat(self) -> dict[str, Any]:
        """The flat dotted-key dict of `evaluation.json` (flags as 0/1, for MLflow)."""
        flat: dict[str, Any] = {f"{CHANCE}.{key}": getattr(self.chance, key) for key in MAP_KEYS}
        for name, record in self.variants.items():
            flat[f"{name}.seeds"] = record.seeds
            for key in MAP_KEYS + SIZE_KEYS:
                scores: MeanStd = getattr(record, key)
                flat[f"{name}.{key}"] = scores.mean
                flat[f"{name}.{key}_std"] = scores.std
            flat[f"{name}.margin_over_chance"] = record.margin_over_chance
            for flag in ("below_annotation_confidence", "empty_label_set", "empty_extra_labels"):
                flat[f"{name}.{flag}"] = int(getattr(record, flag))
            flat[f"{name}.train_boxes"] = record.train_boxes
            equivalent = record.real_image_equivalent
            if equivalent is not None:
                flat[f"{name}.{EQUIVALENT}"] = equivalent.images
                flat[f"{name}.{EQUIVALENT}_low"] = equivalent.low
                flat[f"{name}.{EQUIVALENT}_high"] = equivalent.high
                flat[f"{name}.{EQUIVALENT}_bound"] = equivalent.bound
                if self.target_difference is not None:
                    flat[f"{name}.{EQUIVALENT}_reason"] = equivalent.reason
        for name, by_draw in self.draws.items():
            for draw, scores in by_draw.items():
                flat[f"{name}.draw{draw}.seeds"] = scores.seeds
                flat[f"{name}.draw{draw}.map50_95"] = scores.map50_95.mean
                flat[f"{name}.draw{draw}.map50_95_std"] = scores.map50_95.std
        for comparison in self.comparisons:
            for key in _COMPARISON_FIELDS:
                flat[f"{comparison.key}.{key}"] = getattr(comparison, key)
            if self.target_difference is not None:
                flat[f"{comparison.key}.evidence"] = int(bool(comparison.evidence))
                flat[f"{comparison.key}.evidence_reason"] = comparison.evidence_reason
        if self.target_difference is not None:
            flat[TARGET] = self.target_difference
        if self.headroom is not None:
            headroom = self.headroom
            flat[f"{HEADROOM}.real_minus_handful"] = headroom.real_minus_handful
            flat[f"{HEADROOM}.real_minus_chance"] = headroom.real_minus_chance
            flat[f"{HEADROOM}.seed_std"] = headroom.seed_std
            flat[f"{HEADROOM}.ok"] = int(headroom.ok)
            flat[f"{HEADROOM}.reason"] = headroom.reason
        flat["test_images"] = self.test_images
        flat["test_boxes"] = self.test_boxes
        return flat

    def write(self, path: Path) -> None:
        """Write the flat dict to `path` (metrics/evaluation.json) atomically, keys sorted."""
        write_json(path, self.to_flat())

    @classmethod
    def from_flat(cls, raw: Mapping[str, Any], source: str = EVALUATION) -> Evaluation:
        """Parse the flat dict of `evaluation.json` (`source` names it in errors).

        Raises DataError naming the key when one is missing, has the wrong type or is unknown
        (a key renamed by another synthdet version)."""
        keys = _Keys(raw, source)
        chance = ChanceScores(*(keys.number(f"{CHANCE}.{key}") for key in MAP_KEYS))
        prefixes = sorted(
            {key.rpartition(".")[0] for key in raw if "." in key} - {CHANCE, HEADROOM}
        )
        drawn = [match for match in map(DRAW.match, prefixes) if match]
        names = [p for p in prefixes if VERSUS not in p and not DRAW.match(p)]
        with_curve = [n for n in names if any(f"{n}.{EQUIVALENT}{s}" in raw for s in _EQ_SUFFIX)]
        judged = TARGET in raw  # written since evaluate judges evidence (module docstring)
        records = {name: keys.variant(name, bool(with_curve), judged) for name in names}
        comparisons = tuple(keys.comparison(p, judged) for p in prefixes if VERSUS in p)
        headroom = None
        if any(key.startswith(f"{HEADROOM}.") for key in raw):
            headroom = keys.headroom()
        evaluation = cls(
            chance,
            records,
            comparisons,
            keys.count("test_images"),
            keys.count("test_boxes"),
            target_difference=keys.number(TARGET) if judged else None,
            headroom=headroom,
            draws=keys.draws(drawn),
        )
        keys.refuse_unknown()
        return evaluation

    @classmethod
    def read(cls, path: Path) -> Evaluation:
        """`path` (metrics/evaluation.json) parsed; DataError naming the file and the key."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read the evaluation ({exc}); run dvc repro") from exc
        if not isinstance(raw, dict):
            raise DataError(f"{path}: not a JSON object of metrics; rerun evaluate (dvc repro)")
        return cls.from_flat(raw, str(path))


_COMPARISON_FIELDS = (
    "diff_map50_95",
    "diff_std",
    "diff_low",
    "diff_high",
    "seeds",
    "p_value",
    "p_holm",
    "mdd",
)
_EQ_SUFFIX = ("", "_low", "_high", "_bound")


class _Keys:
    """Typed reads of the flat dict, remembering which keys were read."""

    def __init__(self, raw: Mapping[str, Any], source: str) -> None:
        self.raw, self.source, self.read = raw, source, set()

    def _get(self, key: str) -> Any:
        if key not in self.raw:
            raise DataError(
                f"{self.source}: key {key!r} missing; the file was written by another version "
                "of evaluate or edited: rerun evaluate (dvc repro)"
            )
        self.read.add(key)
        return self.raw[key]

    def _invalid(self, key: str, value: Any, expected: str) -> DataError:
        return DataError(
            f"{self.source}: key {key!r} is {value!r}, expected {expected}; rerun evaluate "
            "(dvc repro)"
        )

    def number(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._invalid(key, value, "a number")
        return value

    def optional(self, key: str) -> float | None:
        return None if self._get(key) is None else self.number(key)

    def count(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._invalid(key, value, "a count (an integer >= 0)")
        return value

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if value not in (0, 1) or isinstance(value, bool | float):
            raise self._invalid(key, value, "0 or 1")
        return bool(value)

    def text(self, key: str) -> str | None:
        value = self._get(key)
        if value is not None and not isinstance(value, str):
            raise self._invalid(key, value, "null or a string")
        return value

    def bound(self, key: str) -> str | None:
        value = self._get(key)
        if value is not None and value not in BOUNDS:
            raise self._invalid(key, value, f"null or one of {list(BOUNDS)}")
        return value

    def variant(self, name: str, curve: bool, judged: bool) -> VariantRecord:
        def scores(key: str) -> MeanStd:
            mean = (
                self.optional(f"{name}.{key}") if key in SIZE_KEYS else self.number(f"{name}.{key}")
            )
            return MeanStd(mean, self.optional(f"{name}.{key}_std"))

        equivalent = None
        if curve:
            prefix = f"{name}.{EQUIVALENT}"
            equivalent = RealImageEquivalent(
                self.optional(prefix),
                self.optional(f"{prefix}_low"),
                self.optional(f"{prefix}_high"),
                self.bound(f"{prefix}_bound"),
                self.text(f"{prefix}_reason") if judged else None,
            )
        return VariantRecord(
            seeds=self.count(f"{name}.seeds"),
            **{key: scores(key) for key in MAP_KEYS + SIZE_KEYS},
            margin_over_chance=self.number(f"{name}.margin_over_chance"),
            below_annotation_confidence=self.flag(f"{name}.below_annotation_confidence"),
            train_boxes=self.count(f"{name}.train_boxes"),
            empty_label_set=self.flag(f"{name}.empty_label_set"),
            empty_extra_labels=self.flag(f"{name}.empty_extra_labels"),
            real_image_equivalent=equivalent,
        )

    def comparison(self, prefix: str, judged: bool) -> Comparison:
        variant, _, reference = prefix.partition(VERSUS)
        return Comparison(
            variant,
            reference,
            diff_map50_95=self.number(f"{prefix}.diff_map50_95"),
            diff_std=self.optional(f"{prefix}.diff_std"),
            diff_low=self.optional(f"{prefix}.diff_low"),
            diff_high=self.optional(f"{prefix}.diff_high"),
            seeds=self.count(f"{prefix}.seeds"),
            p_value=self.optional(f"{prefix}.p_value"),
            p_holm=self.optional(f"{prefix}.p_holm"),
            mdd=self.optional(f"{prefix}.mdd"),
            evidence=self.flag(f"{prefix}.evidence") if judged else None,
            evidence_reason=self.text(f"{prefix}.evidence_reason") if judged else None,
        )

    def draws(self, prefixes: list[re.Match]) -> dict[str, dict[int, DrawScores]]:
        found: dict[str, dict[int, DrawScores]] = {}
        for match in sorted(prefixes, key=lambda m: (m["variant"], int(m["draw"]))):
            prefix = match.group(0)
            found.setdefault(match["variant"], {})[int(match["draw"])] = DrawScores(
                self.count(f"{prefix}.seeds"),
                MeanStd(self.number(f"{prefix}.map50_95"), self.optional(f"{prefix}.map50_95_std")),
            )
        return found

    def headroom(self) -> Headroom:
        return Headroom(
            real_minus_handful=self.number(f"{HEADROOM}.real_minus_handful"),
            real_minus_chance=self.number(f"{HEADROOM}.real_minus_chance"),
            seed_std=self.optional(f"{HEADROOM}.seed_std"),
            ok=self.flag(f"{HEADROOM}.ok"),
            reason=self.text(f"{HEADROOM}.reason"),
        )

    def refuse_unknown(self) -> None:
        unknown = sorted(set(self.raw) - self.read)
        if unknown:
            raise DataError(
                f"{self.source}: unknown keys {', '.join(map(repr, unknown[:5]))}; the file was "
                "written by another version of evaluate or edited: rerun evaluate (dvc repro)"
            )
