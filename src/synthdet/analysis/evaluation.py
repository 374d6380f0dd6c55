"""Detector scores summarised into the typed `Evaluation` (synthdet.artifacts.evaluation):
per-variant mean and spread over seeds, paired comparisons with Holm's correction and whether
each is evidence, the chance baseline, the real-image equivalent where the curve identifies it,
the headroom check and sanity flags; and the CSV tables and headline numbers drawn from it.

What the data can detect (issue 23; docs/evidence.md): a comparison is evidence when it has >= 2
seeds and its minimum detectable difference (80 % power, 5 % level) is at most
`evaluate.target_difference`; the real-image equivalent is a number only when the curve's ends
(`handful` -> `real`) differ beyond their noise (>= 2 seeds, 95 % paired t interval above 0);
the headroom check asks that `real` beat `handful` and chance by HEADROOM_GAP, and `handful` by
HEADROOM_STDS seed stds.

Comparisons (`variants.comparisons`): each `handful-<source>` against `handful`, the question a
user with a handful of labels asks, and `handful-synthetic` against each cheap alternative;
every generated-data variant against `real` (Genfusion's table). A detector is one unit, a
(handful draw, seed) pair (few_shot.draws x train_detector.seeds): comparisons pair the units
both sides have, `real`'s detector of a seed (no draw changes it) with every draw's of that
seed. Holm's correction runs over all comparisons of one run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from synthdet.analysis import metrics, stats
from synthdet.artifacts.evaluation import (
    CHANCE,
    MAP_KEYS,
    SIZE_KEYS,
    VERSUS,
    ChanceScores,
    Comparison,
    DrawScores,
    Evaluation,
    Headroom,
    MeanStd,
    RealImageEquivalent,
    VariantRecord,
)
from synthdet.core.data import Sample, verify_image
from synthdet.detectors import variants

# The headroom rule of issue 23: below these gaps (mAP@[.5:.95]) the labelled images barely
# matter to the detector, so no extra data can show its worth on this test split.
HEADROOM_GAP = 0.05
HEADROOM_STDS = 3  # real - handful must also exceed this many pooled seed stds (>= 2 seeds)
# the settings that give more headroom or more units, named in the reasons
MORE_SEEDS = "-S 'train_detector.seeds=[42,43,44]'"
LONGER_TRAINING = (
    "longer detector training (-S train_detector.yolo.epochs=60; on the embedded orchard data "
    "30 epochs did not open the gap, 60 did: docs/evidence.md)"
)
PRETRAINED_DETECTOR = (
    "on web photos a pretrained detector (-S train_detector.model=yolov8n.pt, on a GPU machine)"
)


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def chance_baseline(samples: Sequence[Sample]) -> metrics.DetectionMetrics:
    """mAP of the trivial detector that predicts one whole-image box of class 0 per image: a
    variant must beat this to have learned where objects are."""
    predictions = []
    for sample in samples:
        width, height = verify_image(sample.image)
        predictions.append(
            {
                "boxes": torch.tensor([[0.0, 0.0, float(width), float(height)]]),
                "scores": torch.tensor([1.0]),
                "labels": torch.tensor([0]),
            }
        )
    return metrics.detection_metrics(predictions, [metrics.target_boxes(s) for s in samples])


Unit = tuple[int | None, int]  # (handful draw, seed); draw None: `real`, the same in every draw


@dataclass(frozen=True)
class Run:
    """One trained detector scored on the test split."""

    scores: metrics.DetectionMetrics
    max_confidence: float  # the highest score it gave any test box (0 if none)


def comparison_units(
    variant: Mapping[Unit, Run], reference: Mapping[Unit, Run]
) -> tuple[dict, dict]:
    """The two sides' test mAP@[.5:.95] keyed by the units a comparison pairs over: (draw, seed)
    when both sides are trained per draw (or neither is); the seed when only one side is (e.g.
    `handful` against `real`), that side averaged over its draws first, since the other side's
    one detector per seed would otherwise count once per draw as if the draws were
    independent units."""

    def drawn(units: Mapping[Unit, Run]) -> bool:
        return any(draw is not None for draw, _ in units)

    def score(units: Mapping[Unit, Run]) -> dict:
        return {unit: run.scores.map50_95 for unit, run in units.items()}

    if drawn(variant) == drawn(reference):
        return score(variant), score(reference)

    def per_seed(units: Mapping[Unit, Run]) -> dict[int, float]:
        by_seed: dict[int, list[float]] = {}
        for (_, seed), run in units.items():
            by_seed.setdefault(seed, []).append(run.scores.map50_95)
        return {seed: sum(values) / len(values) for seed, values in by_seed.items()}

    return per_seed(variant), per_seed(reference)


def summarise(
    runs: Mapping[str, Mapping[Unit, Run]],
    chance: metrics.DetectionMetrics,
    real_curve: Sequence[tuple[str, int]],
    pairs: Sequence[tuple[str, str]],
    annotate_confidence: float,
    compositions: Mapping[str, variants.Composition],
    test: Sequence[Sample],
    *,
    target_difference: float,
) -> Evaluation:
    """Every number of the run: per variant the mAP mean/std over seeds (rounded to 6 digits),
    margin over chance, real-image equivalent (with the curve's inverse of mean -/+ std; none,
    with the reason, where the curve does not rise beyond its noise), the flag
    `below_annotation_confidence` and its training labels' box count and flags; per (variant,
    reference) of `pairs` (`variants.comparisons`) the paired difference (95 % t interval, raw
    and Holm-adjusted p, minimum detectable difference) and whether it is evidence for a
    difference of `target_difference` (mAP@[.5:.95]); the chance baseline; the headroom check;
    the test split's size; per variant and handful draw the mAP over its seeds.

    `runs` by variant name, then (draw, seed) unit (`comparison_units` pairs them); `real_curve`:
    (variant, labelled images) from `handful` to `real`, increasing; `compositions`: every
    variant's training images (one draw's, for the label counts); `test`: the test split the
    runs were scored on."""
    scores: dict[str, dict[str, MeanStd]] = {}
    for name, seeds in runs.items():
        scores[name] = {}
        for key in MAP_KEYS + SIZE_KEYS:
            values = [getattr(r.scores, key) for r in seeds.values()]
            values = [v for v in values if v is not None]
            spread = metrics.spread(values) if values else None
            scores[name][key] = MeanStd(
                _round(spread.mean) if spread else None, _round(spread.std) if spread else None
            )
    equivalents = _equivalents(runs, scores, real_curve)
    records = {}
    for name, seeds in runs.items():
        composition = compositions[name]
        extra_boxes = variants.label_boxes(composition.extra)
        train_boxes = variants.label_boxes(composition.real) + extra_boxes
        records[name] = VariantRecord(
            seeds=len(seeds),
            **scores[name],
            margin_over_chance=_round(scores[name]["map50_95"].mean - chance.map50_95),
            below_annotation_confidence=max(r.max_confidence for r in seeds.values())
            < annotate_confidence,
            train_boxes=train_boxes,
            empty_label_set=train_boxes == 0,
            empty_extra_labels=bool(composition.extra) and not extra_boxes,
            real_image_equivalent=equivalents.get(name),
        )
    tested = []
    for name, reference in pairs:
        diff = stats.paired_difference(*comparison_units(runs[name], runs[reference]))
        tested.append((name, reference, diff))
    # keyed by the flat prefix, as Holm breaks ties of equal p-values by key
    adjusted = stats.holm({f"{a}{VERSUS}{b}": diff.p_value for a, b, diff in tested})
    comparisons = []
    for name, reference, diff in tested:
        mdd = stats.minimum_detectable_difference(diff.std, diff.seeds)
        reason = _evidence_reason(diff, mdd, target_difference)
        comparisons.append(
            Comparison(
                name,
                reference,
                diff_map50_95=_round(diff.mean),
                diff_std=_round(diff.std),
                diff_low=_round(diff.low),
                diff_high=_round(diff.high),
                seeds=diff.seeds,
                p_value=_round(diff.p_value),
                p_holm=_round(adjusted[f"{name}{VERSUS}{reference}"]),
                mdd=_round(mdd),
                evidence=reason is None,
                evidence_reason=reason,
            )
        )
    return Evaluation(
        ChanceScores(*(_round(getattr(chance, key)) for key in MAP_KEYS)),
        records,
        tuple(comparisons),
        test_images=len(test),
        test_boxes=sum(len(sample.boxes) for sample in test),
        target_difference=target_difference,
        headroom=_headroom(scores, chance.map50_95),
        draws=_per_draw(runs),
    )


def _per_draw(runs: Mapping[str, Mapping[Unit, Run]]) -> dict[str, dict[int, DrawScores]]:
    """{variant: {draw: mAP@[.5:.95] over its seeds}} of the variants trained per draw."""
    found: dict[str, dict[int, DrawScores]] = {}
    for name, units in runs.items():
        by_draw: dict[int, list[float]] = {}
        for (draw, _), run in sorted(units.items(), key=lambda item: item[0]):
            if draw is not None:
                by_draw.setdefault(draw, []).append(run.scores.map50_95)
        for draw, values in by_draw.items():
            spread = metrics.spread(values)
            found.setdefault(name, {})[draw] = DrawScores(
                len(values), MeanStd(_round(spread.mean), _round(spread.std))
            )
    return found


def _evidence_reason(diff: stats.PairedDifference, mdd: float | None, target: float) -> str | None:
    """Why a comparison cannot detect a difference of `target` (80 % power, 5 % level); None
    when it can."""
    if mdd is None:
        return f"{diff.seeds} seed: no spread of the differences, no minimum detectable difference"
    if diff.std == 0:
        # every unit gave the same difference (e.g. all mAP 0): the spread is not estimated
        return (
            f"the {diff.seeds} units' differences are all equal: no spread measured, so no "
            "minimum detectable difference"
        )
    if mdd <= target:
        return None
    needed = stats.seeds_to_detect(diff.std, target) if diff.std is not None else None
    more = f"about {needed} seeds would" if needed else "more than 100 seeds would"
    return (
        f"minimum detectable difference {mdd:.3f} > {target} with {diff.seeds} seeds; {more} "
        "reach it at the measured spread"
    )


def _headroom(scores: Mapping[str, Mapping[str, MeanStd]], chance: float) -> Headroom | None:
    """The headroom check of `real` over `handful` and chance (module docstring); None without
    both variants."""
    real, handful = (scores.get(v.name) for v in (variants.REAL, variants.HANDFUL))
    if real is None or handful is None:
        return None
    real_scores, handful_scores = real["map50_95"], handful["map50_95"]
    over_handful = round(real_scores.mean - handful_scores.mean, 6)
    over_chance = round(real_scores.mean - chance, 6)
    stds = (real_scores.std, handful_scores.std)
    # equal seed counts (both train every seed), so pooling is the root mean square
    pooled = None if None in stds else round(math.sqrt((stds[0] ** 2 + stds[1] ** 2) / 2), 6)
    missing, settings = [], []
    if over_chance < HEADROOM_GAP:
        missing.append(
            f"real scores {over_chance:+.3f} over the chance baseline (needs >= {HEADROOM_GAP}): "
            "the detector has barely learned the objects"
        )
        settings += [LONGER_TRAINING, PRETRAINED_DETECTOR]
    if over_handful < HEADROOM_GAP:
        missing.append(
            f"real - handful {over_handful:+.3f} (needs >= {HEADROOM_GAP}): every labelled image "
            "barely beats the handful, so no extra data can show its worth"
        )
        settings += [LONGER_TRAINING, PRETRAINED_DETECTOR]
    if pooled is not None and over_handful < HEADROOM_STDS * pooled:
        missing.append(
            f"real - handful {over_handful:+.3f} is under {HEADROOM_STDS}x the pooled seed std "
            f"of the two ({HEADROOM_STDS} x {pooled:.3f})"
        )
        settings += [LONGER_TRAINING, "more seeds (-S 'train_detector.seeds=[42,43,44,45,46]')"]
    notes = list(missing)
    if settings:
        notes.append(f"settings to try: {', '.join(dict.fromkeys(settings))}")
    if pooled is None:
        notes.append(
            "the seed-to-seed std is unknown with one seed, so the gaps are judged by their "
            f"means alone ({MORE_SEEDS} measures it)"
        )
    return Headroom(
        real_minus_handful=over_handful,
        real_minus_chance=over_chance,
        seed_std=pooled,
        ok=not missing,
        reason="; ".join(notes) or None,
    )


def _equivalents(
    runs: Mapping[str, Mapping[Unit, Run]],
    scores: Mapping[str, Mapping[str, MeanStd]],
    real_curve: Sequence[tuple[str, int]],
) -> dict[str, RealImageEquivalent]:
    """Each variant's real-image equivalent; none when fewer than two curve points trained, and
    no number (the reason instead) when the curve is not identifiable."""
    curve = [(name, count) for name, count in real_curve if name in runs]
    if len(curve) < 2:
        return {}
    reason = _unidentifiable(runs, curve[0][0], curve[-1][0])
    if reason is not None:
        return {name: RealImageEquivalent(None, None, None, None, reason) for name in runs}
    counts = [count for _, count in curve]
    means = [scores[name]["map50_95"].mean for name, _ in curve]
    found = {}
    for name in runs:
        mean, std = scores[name]["map50_95"].mean, scores[name]["map50_95"].std or 0.0
        at_mean, low, high = (
            stats.real_image_equivalent(counts, means, score)
            for score in (mean, mean - std, mean + std)
        )
        found[name] = RealImageEquivalent(
            _round(at_mean.images, 2), _round(low.images, 2), _round(high.images, 2), at_mean.bound
        )
    return found


def _unidentifiable(runs: Mapping[str, Mapping[Unit, Run]], first: str, last: str) -> str | None:
    """Why the real-image curve (`first` -> `last`, its ends) cannot be inverted: it must rise
    beyond its noise, the 95 % paired t interval of last - first over >= 2 seeds above 0 (a flat
    curve inverts noise: the same commit gave 8.55 and 21.6 images on two CPUs). None when it
    can."""
    diff = stats.paired_difference(*comparison_units(runs[last], runs[first]))
    if diff.low is None:
        return (
            f"not identifiable: 1 seed, no spread ({last} - {first} {diff.mean:+.3f} on one seed; "
            f"{MORE_SEEDS} measures it)"
        )
    if diff.low <= 0:
        return (
            f"not identifiable: the real-image curve ({first} -> {last}) does not rise beyond "
            f"its noise ({last} - {first} {diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}], "
            f"95 % t interval over {diff.seeds} seeds)"
        )
    return None


def _bounds(scores: MeanStd) -> tuple[float | None, float | None]:
    """mean -/+ std (std 0 with one seed); None without a mean."""
    if scores.mean is None:
        return None, None
    std = scores.std or 0.0
    return round(scores.mean - std, 6), round(scores.mean + std, 6)


def tables(
    evaluation: Evaluation,
    runs: Mapping[str, Mapping[Unit, Run]],
    trained: Sequence[variants.Variant],
    compositions: Mapping[str, variants.Composition],
) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """{file name: (header, rows)}: one row per detector (detection_runs.csv), per variant
    (detection_table.csv: the mAP bars), the real-image curve with every few-shot variant at the
    labelled images it used (real_image_curve.csv), mAP against the extra share
    (ratio_curve.csv) and the precision-recall curves (pr_curve.csv, mean over seeds).

    `runs` and `compositions` by variant name, in the order of `trained` (the variants)."""
    keys = MAP_KEYS + SIZE_KEYS
    result: dict[str, tuple[list[str], list[list[Any]]]] = {}
    result["detection_runs.csv"] = (
        ["variant", "draw", "seed", *keys],
        [
            [name, draw, seed, *(_round(getattr(run.scores, key)) for key in keys)]
            for name, units in runs.items()
            for (draw, seed), run in units.items()
        ],
    )
    table = []
    for variant in trained:
        name = variant.name
        record = evaluation.variant(name)
        composition = compositions[name]
        lower, upper = _bounds(record.map50_95)
        equivalent = record.real_image_equivalent
        table.append(
            {
                "variant": name,
                "seeds": record.seeds,
                "map50_95": record.map50_95.mean,
                "std": record.map50_95.std,
                "lower": lower,
                "upper": upper,
                "map50": record.map50.mean,
                "map75": record.map75.mean,
                "margin_over_chance": record.margin_over_chance,
                "real_images": len(composition.real),
                "extra": variant.extra or "",
                "extra_images": len(composition.extra),
                "extra_share": round(composition.extra_share, 6),
                "real_image_equivalent": equivalent.images if equivalent else None,
            }
        )
    header = list(table[0])
    result["detection_table.csv"] = (header, [list(row.values()) for row in table])
    curve_keys = ["variant", "real_images", "extra", "map50_95", "std", "lower", "upper"]
    few_shot = [
        row
        for row, variant in zip(table, trained, strict=True)
        if variant.on_real_image_curve or variant.is_few_shot
    ]
    result["real_image_curve.csv"] = (
        curve_keys,
        [[row[k] for k in curve_keys] for row in sorted(few_shot, key=lambda r: r["real_images"])],
    )
    ratio_keys = ["variant", "real_images", "extra_images", "extra_share"]
    ratio_keys += ["map50_95", "std", "lower", "upper"]
    ratio = sorted(table, key=lambda row: (row["real_images"], row["extra_share"]))
    result["ratio_curve.csv"] = (ratio_keys, [[r[k] for k in ratio_keys] for r in ratio])
    rows = []
    for name, seeds in runs.items():
        curves = [run.scores for run in seeds.values()]
        for index, recall in enumerate(curves[0].recall):
            precision = sum(c.precision[index] for c in curves) / len(curves)
            rows.append([name, recall, round(precision, 6)])
    result["pr_curve.csv"] = (["variant", "recall", "precision"], rows)
    return result


# The numbers `dvc exp show` and `dvc metrics show` print (metrics/evaluate.json); the rest are
# in metrics/evaluation.json, which the report and MLflow read.
HEADLINE_IMAGE_KEYS = ("fid", "kid_mean")


def headline(
    evaluation: Evaluation, trained: Sequence[variants.Variant], images: Mapping[str, Any]
) -> dict[str, Any]:
    """About fifteen numbers, as flat keys of evaluation.json: mAP@[.5:.95] of `real`, `handful`,
    each `handful-<source>` and `synthetic` (of those in `trained`; over every draw and seed,
    and with several handful draws also per draw, `<variant>.draw<d>.map50_95`), the generated
    images' gain over the handful and their real-image equivalent, chance;
    `comparisons_with_evidence` (a count) and `headroom.ok` (0/1), `headroom.real_minus_handful`
    and `headroom.real_minus_chance` (mAP@[.5:.95]); FID and KID from `images` (check-images'
    metrics of the first draw)."""
    shown = [
        v
        for v in trained
        if v in (variants.REAL, variants.HANDFUL, variants.generated(variants.SYNTHETIC))
        or v.is_few_shot
    ]
    numbers: dict[str, Any] = {}
    for variant in shown:
        numbers[f"{variant.name}.map50_95"] = evaluation.variant(variant.name).map50_95.mean
        by_draw = evaluation.draws.get(variant.name, {})
        if len(by_draw) > 1:  # one draw: the pooled number is the draw's
            for draw, scores in by_draw.items():
                numbers[f"{variant.name}.draw{draw}.map50_95"] = scores.map50_95.mean
    for variant in trained:
        if not (variant.is_few_shot and variant.extra == variants.SYNTHETIC):
            continue
        compared = evaluation.comparison(variant.name, variants.HANDFUL.name)
        numbers[f"{compared.key}.diff_map50_95"] = compared.diff_map50_95
        equivalent = evaluation.variant(variant.name).real_image_equivalent
        if equivalent is not None:
            numbers[f"{variant.name}.real_image_equivalent"] = equivalent.images
    numbers[f"{CHANCE}.map50_95"] = evaluation.chance.map50_95
    numbers["comparisons_with_evidence"] = sum(bool(c.evidence) for c in evaluation.comparisons)
    if evaluation.headroom is not None:
        headroom = evaluation.headroom
        numbers["headroom.ok"] = int(headroom.ok)
        numbers["headroom.real_minus_handful"] = headroom.real_minus_handful
        numbers["headroom.real_minus_chance"] = headroom.real_minus_chance
    numbers |= {key: images.get(key) for key in HEADLINE_IMAGE_KEYS}
    return numbers
