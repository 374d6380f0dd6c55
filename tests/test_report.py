"""The report: tables, comparisons, the real-image equivalent, settings and limits, rendered
from the typed metrics files (the committed ones, and variations of them)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from synthdet.analysis import report
from synthdet.artifacts.evaluation import EVALUATION, Evaluation
from synthdet.artifacts.metrics import (
    ANNOTATE_METRICS,
    COPY_PASTE_METRICS,
    HANDFUL_METRICS,
    PREPARE_METRICS,
    PSEUDO_METRICS,
    AnnotateMetrics,
    ExtraImagesMetrics,
    PrepareMetrics,
    read_annotate_metrics,
    read_extra_images_metrics,
    read_metrics_json,
    read_prepare_metrics,
)
from synthdet.core.data import DataError
from synthdet.detectors import variants
from synthdet.params import Params, load_params
from tests.conftest import REPO

METRICS = REPO / "metrics"
DRAW0 = METRICS / "draws" / "draw0"  # the data metrics of handful draw 0's stages
# the committed evaluation with three seeds' worth of spread, intervals and p-values
THREE_SEEDS = {
    "real.seeds": 3,
    "real.map50_95": 0.25,
    "real.map50": 0.5,
    "real.map75": 0.2,
    "real.map50_95_std": 0.02,
    "real.map_small": 0.12,
    "real.margin_over_chance": 0.25,
    "handful-synthetic.below_annotation_confidence": 1,
    "handful-synthetic-vs-handful.seeds": 3,
    "handful-synthetic-vs-handful.diff_map50_95": 0.06,
    "handful-synthetic-vs-handful.diff_low": 0.01,
    "handful-synthetic-vs-handful.diff_high": 0.11,
    "handful-synthetic-vs-handful.p_value": 0.03,
    "handful-synthetic-vs-handful.p_holm": 0.06,
    "handful-synthetic-vs-handful.mdd": 0.031,
    "handful-synthetic.real_image_equivalent": 12.4,
    "handful-synthetic.real_image_equivalent_low": 10.0,
    "handful-synthetic.real_image_equivalent_high": 15.0,
    "handful-synthetic.real_image_equivalent_reason": None,
    "synthetic.empty_label_set": 1,
    "synthetic-vs-real.diff_map50_95": -0.15,
    "chance.map50": 0.01,
}
PREPARED = PrepareMetrics.from_dict({"train.images": 116, "train.boxes": 1059})
ANNOTATED = AnnotateMetrics.from_dict(
    {"images": 32, "boxes": 40, "annotator.precision": None, "annotator.recall": 0.4}
)
EXTRAS = {"copy-paste (handful crops)": ExtraImagesMetrics(64, 700)}
VARIANTS = [
    variants.REAL,
    variants.HANDFUL,
    variants.few_shot("synthetic", 64),
    variants.generated("synthetic"),
]


def params_with_seeds(seeds: tuple[int, ...]) -> Params:
    params = load_params(REPO / "params.yaml")
    return dataclasses.replace(
        params, train_detector=dataclasses.replace(params.train_detector, seeds=seeds)
    )


def committed_flat() -> dict:
    return json.loads((METRICS / EVALUATION).read_text())


def render(
    seeds: tuple[int, ...],
    annotated: AnnotateMetrics = ANNOTATED,
    evaluation: Evaluation | None = None,
    trained: list[variants.Variant] = VARIANTS,
) -> str:
    return report.render(
        params_with_seeds(seeds),
        evaluation or Evaluation.from_flat(committed_flat() | THREE_SEEDS),
        read_metrics_json(DRAW0 / "images.json"),
        PREPARED,
        annotated,
        EXTRAS,
        trained,
        variants.comparisons(trained),
    )


def test_the_report_renders_from_the_committed_metrics_files() -> None:
    params = load_params(REPO / "params.yaml")
    configured = variants.configured(params)
    page = report.render(
        params,
        Evaluation.read(METRICS / EVALUATION),
        read_metrics_json(DRAW0 / "images.json"),
        read_prepare_metrics(METRICS / PREPARE_METRICS),
        read_annotate_metrics(DRAW0 / ANNOTATE_METRICS),
        {
            "copy-paste (handful crops)": read_extra_images_metrics(DRAW0 / COPY_PASTE_METRICS),
            "pseudo-labelled real": read_extra_images_metrics(DRAW0 / PSEUDO_METRICS),
        },
        configured,
        variants.comparisons(configured),
        handful=read_extra_images_metrics(DRAW0 / HANDFUL_METRICS),
    )
    assert "| handful (labelled train images) | 8 | 95 |" in page  # draw 0's, before the extras
    assert page.index("| handful (labelled") < page.index("| synthetic (generated")
    assert "Real test split: 40 images, 351 boxes." in page
    assert "| `handful-synthetic` | 1 | 0.182 | 0.422 | 0.132 | +0.182 |" in page
    assert (
        "| `handful-pseudo` − `handful` | 1 | -0.094 | n/a (one seed) | n/a | n/a | n/a | no: 1 "
        "seed" in page
    )
    # one seed: no spread, so no real-image equivalent is read off the curve
    assert "`handful-pseudo`: **not identifiable: 1 seed, no spread" in page
    assert "scores like" not in page
    assert "| real | 0.095 | 0.308 | n/a |" in page  # no large test box
    assert "(n/a: the test split has no box of that size)" in page
    assert "**One seed per variant (42" in page and "n/a" not in page.split("## Limits")[1]


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
    assert "| `synthetic` − `real` | 1 | -0.150 | n/a (one seed) |" in page
    assert "**⚠ trained on an empty label set**" in page
    assert "| real | 0.120 | 0.308 | n/a |" in page  # mAP by object size
    assert "| copy-paste (handful crops) | 64 | 700 |" in page
    assert "`dreambooth_lora` personalisation" in page and "img2img of the handful images" in page
    assert "the `handful` detector of seed 42 (trained on the handful only" in page
    assert "CLIP score: n/a (evaluate.clip_model is null" in page
    assert "held-out accuracy 0.794 on 160 images" in page and "p = 1.6e-14" in page
    assert "FID 99.39 and KID 0.0441 ± 0.0044" in page
    assert "(synthetic_grid.png)" in page and "(real_image_curve.csv)" in page
    assert "3 seeds per variant" in page and "0.031-0.031 mAP@[.5:.95] is the smallest" in page
    assert "handful-synthetic: no test box scored above the annotation confidence" in page


def test_report_limits_name_one_seed_and_an_empty_label_set() -> None:
    page = render((42,))
    assert "**One seed per variant (42, the default's time budget)" in page
    assert "No box in any generated image" not in page
    page = render((42,), dataclasses.replace(ANNOTATED, boxes=0, empty_label_set=True))
    assert (
        "**No box in any generated image** (`empty_label_set` in "
        "metrics/draws/draw<d>/annotate.json)" in page
    )


def test_without_a_real_image_curve_the_report_says_so() -> None:
    flat = {k: v for k, v in committed_flat().items() if ".real_image_equivalent" not in k}
    page = render((42,), evaluation=Evaluation.from_flat(flat))
    assert (
        "- `handful-synthetic` has no real-image equivalent: fewer than two points of the curve"
        in page
    )


def test_a_variant_the_evaluation_lacks_is_an_error_not_a_blank() -> None:
    with pytest.raises(DataError, match=r"evaluation.json has no variant 'mixed'"):
        render((42,), trained=[*VARIANTS, variants.generated("mixed")])


def test_invalid_checks_and_drifting_objects_are_said_not_shared() -> None:
    params = load_params(REPO / "params.yaml")
    images = json.loads((DRAW0 / "images.json").read_text())
    invalid = dict(
        images,
        **{
            "subject.valid": 0,
            "subject.invalid_reason": "held-out crop accuracy 0.47 does not beat chance",
            "subject.generated_share": None,
            "real_vs_generated.valid": 0,
            "real_vs_generated.invalid_reason": "training accuracy 0.5",
            "real_vs_generated.p_value": None,
            "objects.valid": 1,
            "objects.drift": 1,
            "objects.drift_reason": "a* shifted 7.1 val stds; check base.init",
            **{f"objects.{k}": 0.1 for k in ("kid_generated_vs_handful", "kid_val_vs_handful")},
        },
    )
    text = "\n".join(report.image_quality(params, invalid))
    assert "Subject check: **invalid** (held-out crop accuracy 0.47" in text
    assert "found in" not in text
    assert "**Invalid check**: training accuracy 0.5" in text and "p = n/a" in text
    assert "drift from the user's**: a* shifted 7.1 val stds; check base.init" in text
    unmeasured = dict(images, **{"objects.valid": 0, "objects.invalid_reason": "txt2img"})
    assert "Object fidelity: not measured (txt2img)" in "\n".join(
        report.image_quality(params, unmeasured)
    )


def test_noise_table_names_each_protocols_settings():
    cell = {
        "settings": "epochs=60",
        "units": 3,
        "mean": 0.335,
        "std_over_seeds_draw0": 0.008,
        "std_over_draws_same_seed": None,
        "std_test_photo_bootstrap": 0.05,
    }
    rows = report.noise_table({"e60.real": cell})
    assert "| e60.real | epochs=60 | 3 | 0.335 | 0.008 | n/a | 0.050 |" in rows
