"""What evaluate compares, the chance baseline and the headline numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthdet.analysis import evaluation, report
from synthdet.core.data import Box, Sample
from synthdet.detectors import variants


def test_comparisons_ask_the_few_shot_question_then_genfusions() -> None:
    count = variants.RealImages(variants.RealKind.COUNT, count=16)
    few_shot = [variants.few_shot(source, 64) for source in ("synthetic", "copy-paste", "pseudo")]
    trained = [variants.REAL, variants.HANDFUL, variants.Variant(count), *few_shot]
    trained += [variants.generated("synthetic"), variants.generated("mixed")]
    assert variants.comparisons(trained) == [
        ("handful-synthetic", "handful"),
        ("handful-copy-paste", "handful"),
        ("handful-pseudo", "handful"),
        ("handful-synthetic", "handful-copy-paste"),
        ("handful-synthetic", "handful-pseudo"),
        ("synthetic", "real"),
        ("mixed", "real"),
    ]
    assert variants.comparisons([variants.REAL, variants.HANDFUL, few_shot[2]]) == [
        ("handful-pseudo", "handful")
    ]
    assert variants.comparisons([variants.HANDFUL, variants.generated("mixed")]) == []


def test_chance_is_one_whole_image_box(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    whole = evaluation.chance_baseline([Sample(image, (Box(0, 0.5, 0.5, 1.0, 1.0),))])
    assert whole.map50_95 == pytest.approx(1.0)
    small = evaluation.chance_baseline([Sample(image, (Box(0, 0.2, 0.2, 0.2, 0.2),))])
    assert small.map50_95 == 0.0


def test_summary_pairs_seeds_and_inverts_the_real_curve(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    chance = evaluation.chance_baseline([Sample(image, (Box(0, 0.2, 0.2, 0.2, 0.2),))])

    def runs(
        scores: dict[int, float], confidence: float = 0.9, draw: int | None = 0
    ) -> dict[evaluation.Unit, evaluation.Run]:
        return {
            (draw, seed): evaluation.Run(
                evaluation.metrics.DetectionMetrics(m, m, m, (), ()), confidence
            )
            for seed, m in scores.items()
        }

    scored = {
        "real": runs({1: 0.30, 2: 0.32}, draw=None),
        "handful": runs({1: 0.10, 2: 0.12}),
        "real-n16": runs({1: 0.20, 2: 0.22}),
        "handful-synthetic": runs({1: 0.14, 2: 0.18}, confidence=0.1),
    }
    curve = [("handful", 8), ("real-n16", 16), ("real", 116)]
    test = [Sample(image, (Box(0, 0.2, 0.2, 0.2, 0.2),))]
    # no label file next to these images: every variant trained on no box
    compositions = {name: variants.Composition((image,), ()) for name in scored}
    compositions["handful-synthetic"] = variants.Composition((image,), (image,))
    pairs = [("handful-synthetic", "handful"), ("real", "handful-synthetic")]
    summary = evaluation.summarise(
        scored, chance, curve, pairs, 0.25, compositions, test, target_difference=0.03
    )
    compared = summary.comparison("handful-synthetic", "handful")
    assert compared.diff_map50_95 == pytest.approx(0.05)
    assert compared.seeds == 2 and compared.p_holm is not None
    # two seeds of differences 0.04 and 0.06: MDD 0.141 > 0.03; 4 seeds would reach it
    assert compared.mdd == pytest.approx(0.140818, abs=1e-5) and compared.evidence is False
    assert compared.evidence_reason == (
        "minimum detectable difference 0.141 > 0.03 with 2 seeds; about 4 seeds would reach it "
        "at the measured spread"
    )
    # real - handful +0.20 on both seeds: the curve rises beyond its noise, headroom is ample
    assert summary.headroom.ok and summary.headroom.reason is None
    assert summary.headroom.real_minus_handful == pytest.approx(0.2)
    assert summary.headroom.seed_std == pytest.approx(0.014142)
    # mean 0.16 lies between handful (0.11 at 8) and real-n16 (0.21 at 16): 8 + 0.5 * 8 = 12
    synthetic = summary.variant("handful-synthetic")
    assert synthetic.real_image_equivalent.images == pytest.approx(12.0)
    assert synthetic.below_annotation_confidence
    assert synthetic.empty_label_set and synthetic.empty_extra_labels
    real = summary.variant("real")
    assert not real.below_annotation_confidence and not real.empty_extra_labels
    assert real.margin_over_chance == pytest.approx(0.31)
    assert real.map50_95.std == pytest.approx(0.014142)
    assert real.map_small == evaluation.MeanStd(None, None)  # no size scores in these runs
    assert (summary.test_images, summary.test_boxes) == (1, 1)
    # what evaluate writes reads back as the same evaluation
    assert evaluation.Evaluation.from_flat(summary.to_flat()) == summary
    assert [c.key for c in summary.comparisons] == [
        "handful-synthetic-vs-handful",
        "real-vs-handful-synthetic",
    ]
    trained = [variants.REAL, variants.HANDFUL, variants.few_shot("synthetic", 4)]
    headline = evaluation.headline(summary, trained, {"fid": 90.0, "kid_mean": 0.1})
    assert headline["handful-synthetic.real_image_equivalent"] == pytest.approx(12.0)
    assert headline["handful-synthetic-vs-handful.diff_map50_95"] == pytest.approx(0.05)
    assert headline["comparisons_with_evidence"] == 0 and headline["headroom.ok"] == 1
    assert headline["headroom.real_minus_chance"] == pytest.approx(0.31)
    assert headline["fid"] == 90.0 and len(headline) <= 12


def test_one_curve_point_gives_no_real_image_equivalent(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    test = [Sample(image, (Box(0, 0.2, 0.2, 0.2, 0.2),))]
    scores = evaluation.metrics.DetectionMetrics(0.2, 0.4, 0.1, (), ())
    runs = {"real": {(None, 42): evaluation.Run(scores, 0.9)}}
    summary = evaluation.summarise(
        runs,
        evaluation.chance_baseline(test),
        [("real", 116)],
        [],
        0.25,
        {"real": variants.Composition((image,), ())},
        test,
        target_difference=0.03,
    )
    record = summary.variant("real")
    assert record.real_image_equivalent is None and record.map50_95.std is None
    assert "real.real_image_equivalent" not in summary.to_flat()
    assert summary.headroom is None  # no handful to compare with
    assert set(evaluation.headline(summary, [variants.REAL], {})) == {
        "real.map50_95",
        "chance.map50_95",
        "comparisons_with_evidence",
        "fid",
        "kid_mean",
    }


def test_draws_pair_over_draw_and_seed_units_and_keep_a_row_per_draw(tmp_path: Path) -> None:
    """Two handful draws x two seeds: `handful` pairs with `handful-synthetic` over the four
    (draw, seed) units; `real` (no draw) pairs over the two seeds with each seed's mean over the
    draws (its one detector per seed is not counted once per draw); each drawn variant keeps one
    record per draw, and the flat files read back the same."""
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    test = [Sample(image, (Box(0, 0.2, 0.2, 0.2, 0.2),))]

    def run(m: float) -> evaluation.Run:
        return evaluation.Run(evaluation.metrics.DetectionMetrics(m, m, m, (), ()), 0.9)

    scored = {
        "real": {(None, 1): run(0.30), (None, 2): run(0.34)},
        "handful": {(0, 1): run(0.10), (0, 2): run(0.12), (1, 1): run(0.20), (1, 2): run(0.22)},
        "handful-synthetic": {
            (0, 1): run(0.11),
            (0, 2): run(0.14),
            (1, 1): run(0.20),
            (1, 2): run(0.25),
        },
    }
    assert evaluation.comparison_units(scored["real"], scored["handful"]) == (
        {1: 0.30, 2: 0.34},
        {1: pytest.approx(0.15), 2: pytest.approx(0.17)},
    )
    summary = evaluation.summarise(
        scored,
        evaluation.chance_baseline(test),
        [("handful", 8), ("real", 116)],
        [("handful-synthetic", "handful"), ("real", "handful-synthetic")],
        0.25,
        {name: variants.Composition((image,), ()) for name in scored},
        test,
        target_difference=0.03,
    )
    few = summary.comparison("handful-synthetic", "handful")
    assert few.seeds == 4 and few.diff_map50_95 == pytest.approx((0.01 + 0.02 + 0 + 0.03) / 4)
    against_real = summary.comparison("real", "handful-synthetic")
    assert against_real.seeds == 2
    assert against_real.diff_map50_95 == pytest.approx((0.145 + 0.145) / 2)
    assert against_real.diff_std == 0 and not against_real.evidence  # equal differences
    assert "all equal" in against_real.evidence_reason
    assert summary.variant("handful").seeds == 4 and summary.variant("real").seeds == 2
    assert "real" not in summary.draws
    assert summary.draws["handful"][1] == evaluation.DrawScores(
        2, evaluation.MeanStd(0.21, pytest.approx(0.014142, abs=1e-6))
    )
    flat = summary.to_flat()
    assert flat["handful.draw0.map50_95"] == pytest.approx(0.11)
    assert flat["handful.map50_95"] == pytest.approx(0.16)  # pooled: today's key
    assert evaluation.Evaluation.from_flat(flat) == summary
    trained = [variants.REAL, variants.HANDFUL, variants.few_shot("synthetic", 4)]
    headline = evaluation.headline(summary, trained, {})
    assert headline["handful.map50_95"] == pytest.approx(0.16)
    assert headline["handful.draw1.map50_95"] == pytest.approx(0.21)
    assert "real.draw0.map50_95" not in headline
    rows = report.draw_table(summary, ["real", "handful", "handful-synthetic"])
    assert "| `handful` | 1 | 2 | 0.210 ± 0.014 |" in rows
    assert not any("`real`" in row for row in rows if row.startswith("|"))
