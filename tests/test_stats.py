"""The statistics of the comparisons, on numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from synthdet.analysis import stats


def test_paired_difference_gives_the_t_interval_and_p_value() -> None:
    variant = {1: 0.30, 2: 0.32, 3: 0.37}
    reference = {1: 0.25, 2: 0.26, 3: 0.30, 9: 0.9}  # seed 9 has no partner: ignored
    diff = stats.paired_difference(variant, reference)
    # differences 0.05, 0.06, 0.07: mean 0.06, sd 0.01, t(0.975, 2) = 4.302653
    assert diff.seeds == 3 and diff.mean == pytest.approx(0.06)
    assert diff.std == pytest.approx(0.01)
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert (diff.low, diff.high) == (pytest.approx(0.06 - half), pytest.approx(0.06 + half))
    # t = 0.06 / (0.01 / sqrt 3) = 10.392; two-sided p with 2 dof = 0.009133
    assert diff.p_value == pytest.approx(0.009133, abs=1e-5)
    one = stats.paired_difference({1: 0.3}, {1: 0.2})
    assert (one.mean, one.std, one.low, one.p_value) == (pytest.approx(0.1), None, None, None)
    with pytest.raises(ValueError, match="no seed in common"):
        stats.paired_difference({1: 0.3}, {2: 0.2})


def test_holm_adjusts_step_down_and_keeps_order() -> None:
    adjusted = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04)
    assert adjusted == {
        "a": pytest.approx(0.03),
        "c": pytest.approx(0.06),
        "b": pytest.approx(0.06),
        "d": None,
    }
    assert stats.holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}


def test_minimum_detectable_difference() -> None:
    # (t(0.975, 2) + t(0.8, 2)) x 0.01 / sqrt(3) = (4.302653 + 1.060660) x 0.01 / 1.732051
    assert stats.minimum_detectable_difference(0.01, 3) == pytest.approx(0.030965, abs=1e-6)
    assert stats.minimum_detectable_difference(None, 1) is None


def test_real_image_equivalent_inverts_the_curve() -> None:
    counts, scores = [8, 16, 32, 116], [0.05, 0.10, 0.12, 0.20]
    assert stats.real_image_equivalent(counts, scores, 0.075).images == pytest.approx(12)
    assert stats.real_image_equivalent(counts, scores, 0.16).images == pytest.approx(74)
    assert stats.real_image_equivalent(counts, scores, 0.10).images == pytest.approx(16)
    assert stats.real_image_equivalent(counts, scores, 0.01).bound == "below"
    assert stats.real_image_equivalent(counts, scores, 0.3) == stats.Equivalent(None, "above")
    # a dip is flattened: more labelled images never count as worse
    dipped = stats.real_image_equivalent([8, 16, 32], [0.1, 0.08, 0.2], 0.15)
    assert dipped.images == pytest.approx(24)
    with pytest.raises(ValueError, match="increase"):
        stats.real_image_equivalent([16, 8], [0.1, 0.2], 0.15)


def test_differences_equal_up_to_rounding_have_no_spread():
    # 0.30 - 0.155 and 0.34 - 0.195 differ by ~1e-17 in floats: no p-value, no detectable size
    diff = stats.paired_difference({1: 0.30, 2: 0.34}, {1: 0.155, 2: 0.195})
    assert diff.std == 0.0 and diff.p_value is None
    assert stats.minimum_detectable_difference(diff.std, diff.seeds) == 0.0
