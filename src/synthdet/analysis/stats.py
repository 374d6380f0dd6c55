"""Statistics of the detector comparisons: paired differences over seeds, Holm's correction, the
minimum detectable difference and the real-image equivalent.

Seeds pair the runs: variant and reference trained with the same seed differ in their training
images only, so the paired difference over seeds is the effect and its spread the noise (a
paired t-test, scipy.stats).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

# Differences equal up to float rounding (e.g. 0.30 - 0.155 vs 0.34 - 0.195) have no spread:
# their std of ~1e-17 would give p = 0 and a minimum detectable difference of 0.
NO_SPREAD = 1e-12


@dataclass(frozen=True)
class PairedDifference:
    """Mean of (variant - reference) over the seeds both have, with a t interval and p-value."""

    mean: float
    std: float | None  # sample std of the differences; None for one seed
    seeds: int
    low: float | None  # the 95 % (1 - alpha) t interval; None for one seed
    high: float | None
    p_value: float | None  # two-sided paired t-test; None for one seed or no spread


def paired_difference(
    variant: Mapping[int, float], reference: Mapping[int, float], alpha: float = 0.05
) -> PairedDifference:
    """The paired difference of `variant` and `reference` ({seed: score}) over common seeds.

    Raises ValueError when they share no seed."""
    seeds = sorted(set(variant) & set(reference))
    if not seeds:
        raise ValueError("no seed in common: the variant and the reference cannot be paired")
    differences = np.array([variant[s] - reference[s] for s in seeds], dtype=np.float64)
    mean = float(differences.mean())
    if len(seeds) < 2:
        return PairedDifference(mean, None, 1, None, None, None)
    std = float(differences.std(ddof=1))
    if std < NO_SPREAD:
        std = 0.0
    half = float(stats.t.ppf(1 - alpha / 2, len(seeds) - 1)) * std / math.sqrt(len(seeds))
    p_value = None
    if std > 0:
        p_value = float(stats.ttest_rel(differences, np.zeros_like(differences)).pvalue)
    return PairedDifference(mean, std, len(seeds), mean - half, mean + half, p_value)


def holm(p_values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjusted p-values (Holm 1979), controlling the family-wise error rate
    over the comparisons given; None (untestable) stays None and does not count.

    The i-th smallest of m p-values becomes max over j <= i of min(1, (m - j + 1) p_(j))."""
    tested = sorted((p, name) for name, p in p_values.items() if p is not None)
    adjusted: dict[str, float | None] = {name: None for name in p_values}
    running = 0.0
    for rank, (p, name) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[name] = running
    return adjusted


def minimum_detectable_difference(
    std: float | None, seeds: int, alpha: float = 0.05, power: float = 0.8
) -> float | None:
    """The smallest true paired difference a two-sided paired t-test over `seeds` seeds finds
    with probability `power` at level `alpha`, given the differences' std:
    (t_{1-alpha/2} + t_{power}) * std / sqrt(seeds), both with seeds - 1 degrees of freedom.
    None for fewer than 2 seeds (no spread to measure)."""
    if std is None or seeds < 2:
        return None
    dof = seeds - 1
    return float((stats.t.ppf(1 - alpha / 2, dof) + stats.t.ppf(power, dof)) * std) / math.sqrt(
        seeds
    )


@dataclass(frozen=True)
class Equivalent:
    """How many labelled real images score like a given mAP on the real-image curve."""

    images: float | None  # interpolated count; None when outside the curve
    bound: str | None  # "below" the first point, "above" the last, else None


def real_image_equivalent(
    counts: Sequence[int], scores: Sequence[float], score: float
) -> Equivalent:
    """Invert the curve (labelled real images -> mAP) at `score` by linear interpolation between
    the two points around it. The curve is first made non-decreasing (running maximum: more
    labelled images never count as worse), so the inverse is the smallest count that reaches
    `score`. Raises ValueError for fewer than two points or unsorted counts."""
    if len(counts) < 2 or len(counts) != len(scores):
        raise ValueError("the real-image curve needs at least two (count, score) points")
    if list(counts) != sorted(counts):
        raise ValueError(f"real-image counts must increase, got {list(counts)}")
    envelope = np.maximum.accumulate(np.asarray(scores, dtype=np.float64))
    if score < envelope[0]:
        return Equivalent(None, "below")
    if score > envelope[-1]:
        return Equivalent(None, "above")
    index = int(np.searchsorted(envelope, score, side="left"))
    if index == 0 or envelope[index] == envelope[index - 1]:
        return Equivalent(float(counts[index]), None)
    low_score, high_score = envelope[index - 1], envelope[index]
    share = (score - low_score) / (high_score - low_score)
    return Equivalent(float(counts[index - 1] + share * (counts[index] - counts[index - 1])), None)


def seeds_to_detect(
    std: float, target: float, alpha: float = 0.05, power: float = 0.8, most: int = 100
) -> int | None:
    """The fewest seeds (>= 2) whose minimum detectable difference (above) at this std of the
    paired differences is <= `target` (both in mAP); None when more than `most` would be needed.
    The std is an estimate from the seeds run, so the count is a planning figure, not a bound."""
    for seeds in range(2, most + 1):
        found = minimum_detectable_difference(std, seeds, alpha, power)
        if found is not None and found <= target:
            return seeds
    return None
