"""The report: tables, comparisons, the real-image equivalent, settings and limits."""

from __future__ import annotations

import dataclasses

from synthdet import report, variants
from synthdet.artifacts.metrics import AnnotateMetrics, ExtraImagesMetrics, PrepareMetrics
from synthdet.params import load_params
from tests.conftest import REPO

EVALUATION = {
    "real.map50_95": 0.25,
    "real.map50": 0.5,
    "real.map75": 0.2,
    "real.map50_95_std": 0.02,
    "real.map_small": 0.12,
    "real.seeds": 3,
    "real.margin_over_chance": 0.25,
    "handful.map50_95": 0.05,
    "handful.seeds": 3,
    "handful-synthetic.map50_95": 0.11,
    "handful-synthetic.seeds": 3,
    "handful-synthetic.below_annotation_confidence": 1,
    "handful-synthetic-vs-handful.diff_map50_95": 0.06,
    "handful-synthetic-vs-handful.diff_low": 0.01,
    "handful-synthetic-vs-handful.diff_high": 0.11,
    "handful-synthetic-vs-handful.seeds": 3,
    "handful-synthetic-vs-handful.p_value": 0.03,
    "handful-synthetic-vs-handful.p_holm": 0.06,
    "handful-synthetic-vs-handful.mdd": 0.031,
    "handful-synthetic.real_image_equivalent": 12.4,
    "handful-synthetic.real_image_equivalent_low": 10.0,
    "handful-synthetic.real_image_equivalent_high": 15.0,
    "synthetic.map50_95": 0.1,
    "synthetic.map50": 0.3,
    "synthetic.map75": 0.05,
    "synthetic.seeds": 3,
    "synthetic.empty_label_set": 1,
    "synthetic-vs-real.diff_map50_95": -0.15,
    "synthetic-vs-real.seeds": 3,
    "chance.map50_95": 0.0,
    "chance.map50": 0.01,
    "chance.map75": 0.0,
    "test_images": 40,
    "test_boxes": 351,
}
IMAGES = {
    "clip_score": None,
    "clip_score_reason": "no CLIP model configured",
    "real_vs_generated.accuracy": 0.55,
    "real_vs_generated.tested": 64,
    "real_vs_generated.correct": 35,
    "real_vs_generated.p_value": 0.2557,
    "real_vs_generated.train_accuracy": 0.9,
    "real_vs_generated.folds": 4,
    "subject.generated_share": 0.0625,
    "subject.generated_images": 32,
    "subject.reference_share": 1.0,
    "subject.reference_images": 25,
    "fid": 123.456,
    "kid_mean": 0.1234,
    "kid_std": 0.01,
    "kid_subset_size": 32,
    "fid_real_images": 116,
    "fid_generated_images": 32,
}
PREPARED = PrepareMetrics.from_dict(
    {"train.images": 116, "train.boxes": 1059, "personalize.images": 8}
)
ANNOTATED = AnnotateMetrics.from_dict(
    {"images": 32, "boxes": 40, "annotator.precision": None, "annotator.recall": 0.4}
)
EXTRAS = {"copy-paste (handful crops)": ExtraImagesMetrics(64, 700)}
VARIANTS = ["real", "handful", "handful-synthetic", "synthetic"]


def render(seeds: tuple[int, ...], annotated: AnnotateMetrics = ANNOTATED) -> str:
    params = load_params(REPO / "params.yaml")
    detector = dataclasses.replace(params.train_detector, seeds=seeds)
    params = dataclasses.replace(params, train_detector=detector, shared=params.shared)
    return report.render(
        params,
        EVALUATION,
        IMAGES,
        PREPARED,
        annotated,
        EXTRAS,
        VARIANTS,
        variants.comparisons(VARIANTS),
    )


def test_report_answers_the_few_shot_question_with_intervals() -> None:
    page = render((42, 43, 44))
    assert "| `real` | 3 | 0.250 ± 0.020 | 0.500 | 0.200 | +0.250 |" in page
    assert "**⚠ no test box scored above the annotation confidence**" in page
    assert "| chance (one whole-image box per image) | - | 0.000 | 0.010 | 0.000 | - |" in page
    assert (
        "| `handful-synthetic` − `handful` | 3 | +0.060 | [+0.010, +0.110] | 0.030 | 0.060 "
        "| 0.031 |" in page
    )
    assert "`handful-synthetic` scores like **12 labelled real images** (10-15" in page
    assert "| `synthetic` − `real` | 3 | -0.150 | n/a (one seed) |" in page
    assert "**⚠ trained on an empty label set**" in page
    assert "| real | 0.120 | n/a | n/a |" in page  # mAP by object size
    assert "| copy-paste (handful crops) | 64 | 700 |" in page
    assert "`dreambooth_lora` personalisation" in page and "img2img of the handful images" in page
    assert "the `handful` detector of seed 42 (trained on the handful only" in page
    assert "CLIP score: n/a (no CLIP model configured)" in page
    assert "held-out accuracy 0.550 on 64 images" in page and "p = 0.26" in page
    assert "FID 123.46 and KID 0.1234 ± 0.0100" in page
    assert "(synthetic_grid.png)" in page and "(real_image_curve.csv)" in page
    assert "3 seeds per variant" in page and "0.031-0.031 mAP@[.5:.95] is the smallest" in page
    assert "handful-synthetic: no test box scored above the annotation confidence" in page


def test_report_limits_name_one_seed_and_an_empty_label_set() -> None:
    page = render((42,))
    assert "**One seed per variant (42, the default's time budget)" in page
    assert "No box in any generated image" not in page
    page = render((42,), dataclasses.replace(ANNOTATED, boxes=0, empty_label_set=True))
    assert "**No box in any generated image** (`empty_label_set` in metrics/annotate.json)" in page
