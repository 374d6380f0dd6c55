"""The one-page Markdown report of a pipeline run (`metrics/report.md`, written by `evaluate`).

Everything in it is read from the run's metrics files and params; nothing is computed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from synthdet.artifacts.metrics import AnnotateMetrics, PrepareMetrics
from synthdet.params import Params

BASELINE = "real"


def _number(value: Any, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _mean_std(evaluation: Mapping[str, Any], key: str, signed: bool = False) -> str:
    mean, std = evaluation.get(key), evaluation.get(f"{key}_std")
    text = _number(mean, signed=signed)
    return text if std is None or mean is None else f"{text} ± {std:.3f}"


def detection_table(evaluation: Mapping[str, Any], variants: Sequence[str]) -> list[str]:
    """Rows shaped like Genfusion's Table 1: mean ± std over seeds; the gap is the variant's
    mAP@[.5:.95] minus real's at the same seed, averaged over seeds (± its std)."""
    rows = [
        "| variant | real images | synthetic images | seeds | mAP@[.5:.95] | mAP@.5 | mAP@.75 "
        "| gap to real (mAP@[.5:.95]) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in variants:
        cells = [
            variant,
            _number(evaluation.get(f"{variant}.real_images")),
            _number(evaluation.get(f"{variant}.synthetic_images")),
            _number(evaluation.get(f"{variant}.seeds")),
            _mean_std(evaluation, f"{variant}.map50_95"),
            _mean_std(evaluation, f"{variant}.map50"),
            _mean_std(evaluation, f"{variant}.map75"),
            "(baseline)"
            if variant == BASELINE
            else _mean_std(evaluation, f"{variant}.gap_map50_95", signed=True),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def size_table(evaluation: Mapping[str, Any], variants: Sequence[str]) -> list[str]:
    """mAP@[.5:.95] by COCO object size (mean over seeds); n/a: no test box of that size."""
    rows = [
        "| variant | small (< 32² px) | medium | large (> 96² px) |",
        "|---|---:|---:|---:|",
    ]
    for variant in variants:
        cells = [variant] + [
            _mean_std(evaluation, f"{variant}.map_{size}") for size in ("small", "medium", "large")
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def image_quality(params: Params, evaluation: Mapping[str, Any]) -> list[str]:
    lines = [
        f"- FID {_number(evaluation.get('fid'), 2)} and KID "
        f"{_number(evaluation.get('kid_mean'), 4)} ± {_number(evaluation.get('kid_std'), 4)} "
        f"(std over KID subsets of {evaluation.get('kid_subset_size')} images) between "
        f"{evaluation.get('fid_generated_images')} generated and "
        f"{evaluation.get('fid_real_images')} real {params.evaluate.fid_real_split} images.",
    ]
    if evaluation.get("clip_score") is not None:
        lines.append(
            f"- CLIP score (image vs its prompt, `{params.evaluate.clip_model}`): "
            f"{_number(evaluation['clip_score'], 2)}."
        )
    else:
        lines.append(f"- CLIP score: n/a ({evaluation.get('clip_score_reason', 'not computed')}).")
    if "real_vs_generated.accuracy" in evaluation:
        lines.append(
            "- Real vs generated (a `{model}` trained from scratch to tell them apart, "
            "{folds}-fold): held-out accuracy {acc} on {tested} images ({correct} right; "
            "0.5 = indistinguishable; one-sided binomial p = {p}); accuracy on its own training "
            "images {fit}.".format(
                model=params.evaluate.classifier_model,
                folds=evaluation.get("real_vs_generated.folds"),
                acc=_number(evaluation["real_vs_generated.accuracy"]),
                tested=evaluation.get("real_vs_generated.tested"),
                correct=evaluation.get("real_vs_generated.correct"),
                p=f"{evaluation.get('real_vs_generated.p_value', float('nan')):.2g}",
                fit=_number(evaluation.get("real_vs_generated.train_accuracy")),
            )
        )
    if "subject.generated_share" in evaluation:
        lines.append(
            "- Subject check (a classifier of real subject crops vs box-free background, "
            "held-out crop accuracy {crop} on {crops} crops, {fp} of background crops taken for "
            "the subject): the subject is found in {gen} of the {n_gen} generated images, and in "
            "{ref} of the {n_ref} real val images (the reference).".format(
                crop=_number(evaluation.get("subject.crop_accuracy")),
                crops=evaluation.get("subject.crop_tested"),
                fp=_number(evaluation.get("subject.background_false_positive_rate")),
                gen=_number(evaluation["subject.generated_share"]),
                n_gen=evaluation.get("subject.generated_images"),
                ref=_number(evaluation.get("subject.reference_share")),
                n_ref=evaluation.get("subject.reference_images"),
            )
        )
    if "leak_max_similarity" in evaluation:
        lines.append(
            f"- Closest generated-to-test similarity {_number(evaluation['leak_max_similarity'])}"
            f" (the run fails above evaluate.leak_threshold = {params.evaluate.leak_threshold})."
        )
    return lines


def render(
    params: Params,
    evaluation: Mapping[str, Any],
    prepared: PrepareMetrics,
    annotated: AnnotateMetrics,
    variants: Sequence[str],
) -> str:
    """The report as Markdown; the tables and grids it links lie next to it."""
    generate, detector = params.generate, params.train_detector
    yolo = detector.train_args()
    base_model = params.personalize.base_model
    epochs = yolo.get("epochs", "ultralytics' default number of")
    seeds = ", ".join(str(seed) for seed in detector.seeds)
    preset = f", preset `{detector.preset}`" if detector.preset else ""
    lines = ["# synthdet run report", "", "## Data", ""]
    lines += ["| split | images | boxes |", "|---|---:|---:|"]
    for split, counts in prepared.splits().items():
        lines.append(f"| real {split} | {_number(counts.images)} | {_number(counts.boxes)} |")
    lines.append(
        f"| synthetic (auto-labelled) | {_number(annotated.images)} | {_number(annotated.boxes)} |"
    )
    lines += [
        "",
        "## Settings",
        "",
        f"- Base model: `{base_model}`; LoRA personalisation for "
        f"{params.personalize.max_train_steps} steps on the "
        f"{_number(prepared.personalize.images)} personalize images.",
        f"- Generation: {generate.num_images} images at {generate.resolution} px, "
        f"{generate.num_inference_steps} denoising steps, guidance {generate.guidance_scale}.",
        f"- Detectors: `{detector.model_source}` ({detector.architecture}{preset}), {epochs} "
        f"epochs at imgsz {yolo.get('imgsz', 'default')}, optimizer "
        f"{yolo.get('optimizer', 'auto')}, seeds {seeds}; identical for every variant.",
        f"- Annotation: confidence >= {params.annotate_with_baseline.confidence}, "
        f"NMS IoU {params.annotate_with_baseline.iou}"
        + (
            f"; the img2img source images' real boxes merged in (score "
            f"{params.annotate_with_baseline.source_box_confidence}, merge IoU "
            f"{params.annotate_with_baseline.merge_iou})"
            if params.annotate_with_baseline.source_boxes
            else ""
        )
        + f"; {_number(annotated.corrected_images)} images with reviewed labels.",
        "",
        f"## Detection on the real test split ({evaluation.get('test_images')} images, "
        f"{evaluation.get('test_boxes')} boxes)",
        "",
        "Mean ± sample standard deviation over seeds (no ± with one seed). The gap is paired by "
        "seed: the variant's mAP minus `real`'s with the same seed, averaged.",
        "",
        *detection_table(evaluation, variants),
        "",
        "By COCO object size (box area in test-image pixels), mAP@[.5:.95]:",
        "",
        *size_table(evaluation, variants),
        "",
        "Per detector: [detection_runs.csv](detection_runs.csv); gaps at IoU .5 and .75 are in "
        "`metrics/evaluate.json` (`<variant>.gap_map50`, `.gap_map75`).",
        "",
        f"## Annotator (the `{BASELINE}` detector of seed {params.shared.seed} on the real val "
        f"split, {_number(annotated.annotator.val_images)} images, "
        f"{_number(annotated.annotator.val_boxes)} boxes)",
        "",
        "At the labelling settings above; precision and recall match boxes greedily at IoU 0.5. "
        "The mAP ranks only the boxes kept at that confidence, so it is lower than the "
        "detector's mAP at the evaluation confidence.",
        "",
        "| precision | recall | mAP@.5 | mAP@[.5:.95] |",
        "|---:|---:|---:|---:|",
        "| "
        + " | ".join(
            _number(getattr(annotated.annotator, key))
            for key in ("precision", "recall", "map50", "map50_95")
        )
        + " |",
        "",
        f"On the synthetic images: {_number(annotated.boxes_per_image, 2)} boxes per "
        f"image, {_number(annotated.images_without_boxes)} images without any box, mean "
        f"confidence {_number(annotated.mean_confidence)}.",
        "",
        "## Generated images",
        "",
        *image_quality(params, evaluation),
        "",
        "## Plots",
        "",
        "`dvc plots show` draws the precision-recall curves of every variant "
        "([pr_curve.csv](pr_curve.csv)), the mAP bars with error bars "
        "([detection_table.csv](detection_table.csv)), the ratio curve of mAP against the "
        "synthetic share and count ([ratio_curve.csv](ratio_curve.csv)) and the validation mAP "
        "per epoch of every detector.",
        "",
        f"Real test images: ground truth, then each variant's boxes (seed {params.shared.seed}, "
        f"confidence >= {params.evaluate.grid_confidence}):",
        "",
        "![test images, ground truth vs predicted](test_grid.png)",
        "",
        "Generated images with their labels:",
        "",
        "![synthetic images with auto-labels](synthetic_grid.png)",
        "",
        "## Limits",
        "",
    ]
    lines += [f"- {limit}" for limit in limits(params, evaluation, prepared, annotated)]
    return "\n".join(lines) + "\n"


def limits(
    params: Params,
    evaluation: Mapping[str, Any],
    prepared: PrepareMetrics,
    annotated: AnnotateMetrics,
) -> list[str]:
    found = []
    resolution = params.generate.resolution
    if params.personalize.base_model == "builtin:tiny":
        start = (
            f"the shipped `{params.base.init}` checkpoint (pretrained on unlabelled orchard "
            "photos, none of this dataset's), fine-tuned on"
            if params.base.init
            else "trained from scratch on"
        )
        train_images = "real" if prepared.train.images is None else prepared.train.images
        found.append(
            f"Offline tiny base model (`builtin:tiny`: {start} the "
            f"{train_images} real train images), not Stable "
            f"Diffusion: the images are {resolution} px and low fidelity, so these numbers do not "
            "predict what a real base model gives."
        )
    if annotated.empty_label_set:
        found.append(
            "**No box in any generated image** (`empty_label_set` in metrics/annotate.json): the "
            "synthetic detectors trained on background only, so their mAP measures nothing and "
            "the synthetic images only teach the mixed detectors to miss objects."
        )
    seeds = params.train_detector.seeds
    if len(seeds) == 1:
        found.append(
            f"One seed per variant ({seeds[0]}), no error bars: a gap smaller than the "
            "seed-to-seed spread of the detector is not evidence; train 5 seeds as Genfusion "
            "did with `dvc exp run -S 'train_detector.seeds=[1,2,3,4,5]' -S shared.seed=1`."
        )
    elif len(seeds) < 5:
        found.append(
            f"{len(seeds)} seeds per variant: a standard deviation of {len(seeds)} runs is a rough "
            "spread, so read a gap of a few of them as a hint, not a finding; Genfusion trained "
            "5 (`dvc exp run -S 'train_detector.seeds=[1,2,3,4,5]' -S shared.seed=1`)."
        )
    else:
        found.append(
            f"{len(seeds)} seeds per variant: the ± is the spread of training randomness on a "
            "fixed test set and fixed training images, not of the data; with few seeds the std "
            "itself is uncertain."
        )
    found.append(
        f"The test split has {evaluation.get('test_images')} tiles cut from "
        f"{params.prepare.test_groups} photos; tiles of one photo are correlated, so the test "
        "set is smaller than its tile count suggests."
    )
    found.append(
        "The synthetic labels are the annotator's own predictions: what it misses on real images "
        f"(recall {_number(annotated.annotator.recall)} on val) becomes unlabelled "
        "objects in the synthetic set, its false positives become wrong labels."
    )
    found.append(
        f"FID and KID from {evaluation.get('fid_generated_images')} generated images: FID is "
        "biased upwards for small sets (compare FIDs only at equal set sizes); KID is unbiased "
        "but noisy at this size. Both use Inception features of images upscaled from "
        f"{resolution} px to 299 px."
    )
    if params.train_detector.model_source.endswith(".yaml"):
        found.append(
            f"Detectors are trained from scratch (`{params.train_detector.model_source}`, no "
            "pretrained weights) for "
            f"{params.train_detector.train_args().get('epochs', 'the default')} epochs; gaps may "
            "change with pretrained weights or longer training."
        )
    if "real_vs_generated.train_accuracy" in evaluation:
        found.append(
            "The classifier checks use small networks trained from scratch on few images: an "
            "accuracy near 0.5 only means indistinguishable to this classifier, and only if it "
            "fit its own training images (see its training accuracy); the subject check counts "
            "an image when any window scores above 0.5, so compare its share with the real "
            "reference, not with 1."
        )
    return found
