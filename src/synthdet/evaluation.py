"""Detector scores summarised: per-variant mean and spread over seeds, paired comparisons with
Holm's correction, the chance baseline, the real-image equivalent and sanity flags.

Comparisons (`COMPARISONS`): each few-shot variant (`handful-<source>`, `real-n<count>`, `real`)
against `handful`, the question a user with a handful of labels asks; every other variant
against `real` (Genfusion's table). Holm's correction runs over all comparisons of one run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from synthdet import metrics, stats, variants
from synthdet.data import Sample, verify_image

MAP_KEYS = ("map50_95", "map50", "map75")
SIZE_KEYS = ("map_small", "map_medium", "map_large")
CHANCE = "chance"  # one whole-image box per test image, score 1


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


@dataclass(frozen=True)
class Run:
    """One trained detector scored on the test split."""

    scores: metrics.DetectionMetrics
    max_confidence: float  # the highest score it gave any test box (0 if none)


def summarise(
    runs: Mapping[str, Mapping[int, Run]],
    chance: metrics.DetectionMetrics,
    real_curve: Sequence[tuple[str, int]],
    annotate_confidence: float,
) -> dict[str, float | int | str | None]:
    """Flat metrics: `<variant>.<key>` mean/std over seeds, margin over chance, real-image
    equivalent (with the curve's inverse of mean -/+ std) and the flag
    `below_annotation_confidence`; `<variant>-vs-<reference>.*` the paired difference (95 % t
    interval, raw and Holm-adjusted p, minimum detectable difference); and `chance.*`.

    `real_curve`: (variant, labelled images) from `handful` to `real`, increasing."""
    summary: dict[str, float | int | str | None] = {}
    for key in MAP_KEYS:
        summary[f"{CHANCE}.{key}"] = _round(getattr(chance, key))
    by_seed = {
        name: {s: r.scores.map50_95 for s, r in seeds.items()} for name, seeds in runs.items()
    }
    for name, seeds in runs.items():
        summary[f"{name}.seeds"] = len(seeds)
        for key in MAP_KEYS + SIZE_KEYS:
            values = [getattr(r.scores, key) for r in seeds.values()]
            values = [v for v in values if v is not None]
            spread = metrics.spread(values) if values else None
            summary[f"{name}.{key}"] = _round(spread.mean) if spread else None
            summary[f"{name}.{key}_std"] = _round(spread.std) if spread else None
        summary[f"{name}.margin_over_chance"] = _round(
            summary[f"{name}.map50_95"] - chance.map50_95
        )
        best = max(r.max_confidence for r in seeds.values())
        summary[f"{name}.below_annotation_confidence"] = int(best < annotate_confidence)
    p_values = {}
    for name, reference in variants.comparisons(list(runs)):
        key = f"{name}-vs-{reference}"
        diff = stats.paired_difference(by_seed[name], by_seed[reference])
        summary[f"{key}.diff_map50_95"] = _round(diff.mean)
        summary[f"{key}.diff_std"] = _round(diff.std)
        summary[f"{key}.diff_low"] = _round(diff.low)
        summary[f"{key}.diff_high"] = _round(diff.high)
        summary[f"{key}.seeds"] = diff.seeds
        summary[f"{key}.p_value"] = _round(diff.p_value)
        summary[f"{key}.mdd"] = _round(stats.minimum_detectable_difference(diff.std, diff.seeds))
        p_values[key] = diff.p_value
    for key, adjusted in stats.holm(p_values).items():
        summary[f"{key}.p_holm"] = _round(adjusted)
    curve = [(name, count) for name, count in real_curve if name in runs]
    if len(curve) >= 2:
        counts = [count for _, count in curve]
        means = [summary[f"{name}.map50_95"] for name, _ in curve]
        for name in runs:
            mean, std = summary[f"{name}.map50_95"], summary[f"{name}.map50_95_std"] or 0.0
            for suffix, score in (("", mean), ("_low", mean - std), ("_high", mean + std)):
                found = stats.real_image_equivalent(counts, means, score)
                summary[f"{name}.real_image_equivalent{suffix}"] = _round(found.images, 2)
                if not suffix:
                    summary[f"{name}.real_image_equivalent_bound"] = found.bound
    return summary


def _bounds(mean: float | None, std: float | None) -> tuple[float | None, float | None]:
    if mean is None:
        return None, None
    return round(mean - (std or 0.0), 6), round(mean + (std or 0.0), 6)


def tables(
    summary: Mapping[str, Any],
    runs: Mapping[str, Mapping[int, Run]],
    compositions: Mapping[str, variants.Composition],
) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """{file name: (header, rows)}: one row per detector (detection_runs.csv), per variant
    (detection_table.csv: the mAP bars), the real-image curve with every variant at the
    labelled images it used (real_image_curve.csv), mAP against the extra share
    (ratio_curve.csv) and the precision-recall curves (pr_curve.csv, mean over seeds)."""
    keys = MAP_KEYS + SIZE_KEYS
    result: dict[str, tuple[list[str], list[list[Any]]]] = {}
    result["detection_runs.csv"] = (
        ["variant", "seed", *keys],
        [
            [name, seed, *(_round(getattr(run.scores, key)) for key in keys)]
            for name, seeds in runs.items()
            for seed, run in seeds.items()
        ],
    )
    table = []
    for name in runs:
        mean, std = summary[f"{name}.map50_95"], summary[f"{name}.map50_95_std"]
        composition = compositions[name]
        table.append(
            {
                "variant": name,
                "seeds": summary[f"{name}.seeds"],
                "map50_95": mean,
                "std": std,
                "lower": _bounds(mean, std)[0],
                "upper": _bounds(mean, std)[1],
                "map50": summary[f"{name}.map50"],
                "map75": summary[f"{name}.map75"],
                "margin_over_chance": summary[f"{name}.margin_over_chance"],
                "real_images": len(composition.real),
                "extra": variants.parse(name).extra or "",
                "extra_images": len(composition.extra),
                "extra_share": round(composition.extra_share, 6),
                "real_image_equivalent": summary.get(f"{name}.real_image_equivalent"),
            }
        )
    header = list(table[0])
    result["detection_table.csv"] = (header, [list(row.values()) for row in table])
    curve_keys = ["variant", "real_images", "extra", "map50_95", "std", "lower", "upper"]
    few_shot = [
        row
        for row in table
        if row["variant"] in (variants.BASELINE, variants.HANDFUL)
        or row["variant"].startswith("real-n")
        or variants.is_few_shot(row["variant"])
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
# ordinary outputs (metrics/evaluation.json) that the report and MLflow read.
HEADLINE_VARIANTS = (
    variants.BASELINE,
    variants.HANDFUL,
    variants.few_shot_name(variants.SYNTHETIC),
    variants.few_shot_name("copy-paste"),
    variants.few_shot_name("pseudo"),
    variants.SYNTHETIC,
)
HEADLINE_IMAGE_KEYS = ("fid", "kid_mean")


def headline(summary: Mapping[str, Any], images: Mapping[str, Any]) -> dict[str, Any]:
    """About ten numbers: mAP@[.5:.95] of the main variants, the generated images' gain over the
    handful and their real-image equivalent, chance, FID and KID."""
    numbers: dict[str, Any] = {
        f"{name}.map50_95": summary[f"{name}.map50_95"]
        for name in HEADLINE_VARIANTS
        if f"{name}.map50_95" in summary
    }
    generated = variants.few_shot_name(variants.SYNTHETIC)
    for key in (
        f"{generated}-vs-{variants.HANDFUL}.diff_map50_95",
        f"{generated}.real_image_equivalent",
    ):
        if key in summary:
            numbers[key] = summary[key]
    numbers[f"{CHANCE}.map50_95"] = summary[f"{CHANCE}.map50_95"]
    numbers |= {key: images.get(key) for key in HEADLINE_IMAGE_KEYS}
    return numbers
