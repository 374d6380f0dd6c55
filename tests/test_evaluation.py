"""What evaluate compares, the chance baseline and the headline numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthdet import evaluation, variants
from synthdet.data import Box, Sample


def test_comparisons_ask_the_few_shot_question_then_genfusions() -> None:
    names = ["real", "handful", "real-n16", "handful-synthetic", "handful-copy-paste"]
    names += ["handful-pseudo", "synthetic", "mixed"]
    assert variants.comparisons(names) == [
        ("handful-synthetic", "handful"),
        ("handful-copy-paste", "handful"),
        ("handful-pseudo", "handful"),
        ("handful-synthetic", "handful-copy-paste"),
        ("handful-synthetic", "handful-pseudo"),
        ("synthetic", "real"),
        ("mixed", "real"),
    ]
    assert variants.comparisons(["real", "handful", "handful-pseudo"]) == [
        ("handful-pseudo", "handful")
    ]


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

    def runs(scores: dict[int, float], confidence: float = 0.9) -> dict[int, evaluation.Run]:
        return {
            seed: evaluation.Run(evaluation.metrics.DetectionMetrics(m, m, m, (), ()), confidence)
            for seed, m in scores.items()
        }

    scored = {
        "real": runs({1: 0.30, 2: 0.32}),
        "handful": runs({1: 0.10, 2: 0.12}),
        "real-n16": runs({1: 0.20, 2: 0.22}),
        "handful-synthetic": runs({1: 0.14, 2: 0.18}, confidence=0.1),
    }
    curve = [("handful", 8), ("real-n16", 16), ("real", 116)]
    summary = evaluation.summarise(scored, chance, curve, annotate_confidence=0.25)
    key = "handful-synthetic-vs-handful"
    assert summary[f"{key}.diff_map50_95"] == pytest.approx(0.05)
    assert summary[f"{key}.seeds"] == 2 and summary[f"{key}.p_holm"] is not None
    # mean 0.16 lies between handful (0.11 at 8) and real-n16 (0.21 at 16): 8 + 0.5 * 8 = 12
    assert summary["handful-synthetic.real_image_equivalent"] == pytest.approx(12.0)
    assert summary["handful-synthetic.below_annotation_confidence"] == 1
    assert summary["real.below_annotation_confidence"] == 0
    assert summary["real.margin_over_chance"] == pytest.approx(0.31)
    headline = evaluation.headline(summary, {"fid": 90.0, "kid_mean": 0.1})
    assert headline["handful-synthetic.real_image_equivalent"] == pytest.approx(12.0)
    assert headline["fid"] == 90.0 and len(headline) <= 12
