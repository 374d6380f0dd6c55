"""The one-page Markdown report of a pipeline run (`metrics/report.md`, written by `evaluate`).

Everything in it is read from the run's metrics files and params; nothing is computed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from synthdet.artifacts.metrics import AnnotateMetrics, ExtraImagesMetrics, PrepareMetrics
from synthdet.params import Params


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
        "| variant | seeds | mAP@[.5:.95] | mAP@.5 | mAP@.75 | margin over chance |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variant in variants:
        flags = []
        if evaluation.get(f"{variant}.below_annotation_confidence"):
            flags.append("**⚠ no test box scored above the annotation confidence**")
        if evaluation.get(f"{variant}.empty_label_set"):
            flags.append("**⚠ trained on an empty label set**")
        elif evaluation.get(f"{variant}.empty_extra_labels"):
            flags.append("**⚠ its extra images hold no box**")
        cells = [
            " ".join([f"`{variant}`", *flags]),
            _number(evaluation.get(f"{variant}.seeds")),
            _mean_std(evaluation, f"{variant}.map50_95"),
            _mean_std(evaluation, f"{variant}.map50"),
            _mean_std(evaluation, f"{variant}.map75"),
            _number(evaluation.get(f"{variant}.margin_over_chance"), signed=True),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    rows.append(
        f"| chance (one whole-image box per image) | - | "
        f"{_number(evaluation.get('chance.map50_95'))} | {_number(evaluation.get('chance.map50'))} "
        f"| {_number(evaluation.get('chance.map75'))} | - |"
    )
    return rows


def comparison_table(
    evaluation: Mapping[str, Any], comparisons: Sequence[tuple[str, str]]
) -> list[str]:
    """Paired differences (variant - reference, same seed) with the 95 % t interval, the raw and
    Holm-adjusted p-values and the minimum detectable difference (80 % power)."""
    rows = [
        "| comparison | seeds | difference in mAP@[.5:.95] | 95 % interval | p | p (Holm) "
        "| detectable at 80 % power |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for variant, reference in comparisons:
        key = f"{variant}-vs-{reference}"
        low, high = evaluation.get(f"{key}.diff_low"), evaluation.get(f"{key}.diff_high")
        interval = "n/a (one seed)" if low is None else f"[{low:+.3f}, {high:+.3f}]"
        cells = [
            f"`{variant}` − `{reference}`",
            _number(evaluation.get(f"{key}.seeds")),
            _number(evaluation.get(f"{key}.diff_map50_95"), signed=True),
            interval,
            _number(evaluation.get(f"{key}.p_value")),
            _number(evaluation.get(f"{key}.p_holm")),
            _number(evaluation.get(f"{key}.mdd")),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def equivalent_lines(evaluation: Mapping[str, Any], variants: Sequence[str]) -> list[str]:
    """What each few-shot variant is worth in labelled real images (the real curve inverted)."""
    lines = []
    for variant in variants:
        if not variant.startswith("handful-"):
            continue
        images = evaluation.get(f"{variant}.real_image_equivalent")
        bound = evaluation.get(f"{variant}.real_image_equivalent_bound")
        if images is None:
            where = "fewer than the handful" if bound == "below" else "more than all of them"
            text = f"scores {where} on the curve"
        else:
            low = evaluation.get(f"{variant}.real_image_equivalent_low")
            high = evaluation.get(f"{variant}.real_image_equivalent_high")
            spread = (
                ""
                if low is None or high is None or low == high
                else f" ({low:.0f}-{high:.0f} for its mean ∓ std)"
            )
            text = f"scores like **{images:.0f} labelled real images**{spread}"
        lines.append(f"- `{variant}` {text}.")
    return lines


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


def _settings(params: Params, prepared: PrepareMetrics, annotated: AnnotateMetrics) -> list[str]:
    generate, detector, annotate = (
        params.generate,
        params.train_detector,
        params.annotate_with_baseline,
    )
    yolo = detector.train_args()
    preset = f", preset `{detector.preset}`" if detector.preset else ""
    sources = f" of the {generate.sources} images" if generate.mode != "txt2img" else ""
    return [
        f"- Base model: `{params.personalize.base_model}`; `{params.personalize.method}` "
        f"personalisation for {params.personalize.max_train_steps} steps on the "
        f"{_number(prepared.personalize.images)} handful images.",
        f"- Generation: {generate.mode}{sources}, {generate.num_images} images at "
        f"{params.shared.resolution} px, {generate.num_inference_steps} denoising steps, guidance "
        f"{generate.guidance_scale}"
        + (f", strength {generate.strength}" if generate.mode == "img2img" else "")
        + ".",
        f"- Detectors: `{detector.model_source}` ({detector.architecture}{preset}), "
        f"{yolo.get('epochs', 'the default number of')} epochs at imgsz "
        f"{yolo.get('imgsz', 'default')}, optimizer {yolo.get('optimizer', 'auto')}, seeds "
        f"{', '.join(str(seed) for seed in detector.seeds)}; identical for every variant.",
        f"- Annotator: the `{annotate.annotator}` detector of seed {params.shared.seed} "
        + (
            "(trained on the handful only: strict few-shot, no label beyond the handful is used)"
            if annotate.annotator == "handful"
            else "(trained on every labelled train image: Genfusion's protocol; the pseudo-labels "
            "then come from a detector that has seen those images' labels)"
        )
        + f", confidence >= {annotate.confidence}, NMS IoU {annotate.iou}"
        + (
            f"; the img2img source images' real boxes merged in (score "
            f"{annotate.source_box_confidence}, merge IoU {annotate.merge_iou})"
            if annotate.source_boxes
            else ""
        )
        + f"; {_number(annotated.corrected_images)} images with reviewed labels.",
    ]


def _data(
    prepared: PrepareMetrics,
    annotated: AnnotateMetrics,
    extras: Mapping[str, ExtraImagesMetrics],
) -> list[str]:
    lines = ["| split | images | boxes |", "|---|---:|---:|"]
    for split, counts in prepared.splits().items():
        lines.append(f"| real {split} | {_number(counts.images)} | {_number(counts.boxes)} |")
    rows = {"synthetic (generated, labelled)": annotated, **extras}
    for name, counts in rows.items():
        lines.append(f"| {name} | {_number(counts.images)} | {_number(counts.boxes)} |")
    return lines


def render(
    params: Params,
    evaluation: Mapping[str, Any],
    images: Mapping[str, Any],
    prepared: PrepareMetrics,
    annotated: AnnotateMetrics,
    extras: Mapping[str, ExtraImagesMetrics],
    variants: Sequence[str],
    comparisons: Sequence[tuple[str, str]],
) -> str:
    """The report as Markdown: `evaluation` (evaluate's evaluation.json), `images`
    (check-images), `prepared`, `annotated` and `extras` (copy-paste and pseudo-label metrics,
    by row name) are the run's metrics files; the tables and grids it links lie next to it."""
    few_shot = [v for v in variants if v == "handful" or v.startswith(("handful-", "real-n"))]
    few_shot = ["real", *few_shot] if "real" in variants else few_shot
    lines = ["# synthdet run report", "", "## Data", "", *_data(prepared, annotated, extras)]
    lines += ["", "## Settings", "", *_settings(params, prepared, annotated)]
    lines += [
        "",
        f"## The few-shot question: {_number(prepared.personalize.images)} labelled "
        f"images, and {params.few_shot.extra_images} more of each kind",
        "",
        f"Real test split: {evaluation.get('test_images')} images, "
        f"{evaluation.get('test_boxes')} boxes. Mean ± sample std over seeds (no ± with one "
        "seed).",
        "",
        *detection_table(evaluation, few_shot),
        "",
        *comparison_table(evaluation, [c for c in comparisons if c[0].startswith("handful-")]),
        "",
        "What the extra images are worth, read off the curve of mAP against labelled real "
        "images (`handful` → `real-n…` → `real`, linear interpolation, the curve made "
        "non-decreasing):",
        "",
        *equivalent_lines(evaluation, variants),
        "",
    ]
    others = [v for v in variants if v not in few_shot]
    if others:
        lines += [
            "## Generated data against all real labels (Genfusion's table)",
            "",
            *detection_table(evaluation, ["real", *others]),
            "",
            *comparison_table(evaluation, [c for c in comparisons if c[1] == "real"]),
            "",
        ]
    lines += [
        "By COCO object size (box area in test-image pixels), mAP@[.5:.95]:",
        "",
        *size_table(evaluation, variants),
        "",
        "Per detector: [detection_runs.csv](detection_runs.csv); every number: "
        "`metrics/evaluation.json`.",
        "",
        f"## Annotator on the real val split ({_number(annotated.annotator.val_images)} "
        f"images, {_number(annotated.annotator.val_boxes)} boxes)",
        "",
        "At the labelling settings above; precision and recall match boxes greedily at IoU 0.5.",
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
        f"On the generated images: {_number(annotated.boxes_per_image, 2)} boxes per "
        f"image ({_number(annotated.annotator.val_boxes_per_image, 2)} on real val), "
        f"{_number(annotated.images_without_boxes)} images without any box.",
        "",
        "## Generated images",
        "",
        *image_quality(params, images),
        "",
        "## Plots",
        "",
        "`dvc plots show` draws the real-image curve with each few-shot variant on it "
        "([real_image_curve.csv](real_image_curve.csv)), the precision-recall curves "
        "([pr_curve.csv](pr_curve.csv)), the mAP bars ([detection_table.csv]"
        "(detection_table.csv)), mAP against the share of extra images "
        "([ratio_curve.csv](ratio_curve.csv)) and the validation mAP per epoch of every "
        "detector.",
        "",
        f"Real test images: ground truth, then each variant's boxes (seed {params.shared.seed}, "
        f"confidence >= {params.evaluate.grid_confidence}):",
        "",
        "![test images, ground truth vs predicted](test_grid.png)",
        "",
        "Generated images with their labels:",
        "",
        "![generated images with their labels](synthetic_grid.png)",
        "",
        "## Limits",
        "",
    ]
    lines += [
        f"- {limit}" for limit in limits(params, evaluation, images, prepared, annotated, extras)
    ]
    return "\n".join(lines) + "\n"


def limits(
    params: Params,
    evaluation: Mapping[str, Any],
    images: Mapping[str, Any],
    prepared: PrepareMetrics,
    annotated: AnnotateMetrics,
    extras: Mapping[str, ExtraImagesMetrics],
) -> list[str]:
    found = []
    resolution = params.shared.resolution
    if params.personalize.base_model == "builtin:tiny":
        train = f"the {prepared.train.images or 'real'} real train images"
        if not params.base.init:
            origin = f"trained from scratch on {train}"
        else:
            origin = (
                f"the shipped `{params.base.init}` checkpoint, pretrained on unlabelled orchard "
                "photos, none of this dataset's"
            )
            if params.base.vae_steps or params.base.unet_steps:
                origin += f", fine-tuned on {train}"
        found.append(
            f"Offline tiny base model (`builtin:tiny`: {origin}), not Stable Diffusion: the "
            f"images are {resolution} px and low fidelity, so these numbers do not predict what "
            "a real base model gives."
        )
    if annotated.empty_label_set:
        found.append(
            "**No box in any generated image** (`empty_label_set` in metrics/annotate.json): the "
            "detectors on generated images trained on background only, so their mAP measures "
            "nothing and the generated images only teach the others to miss objects."
        )
    for name, extra in extras.items():
        if extra.empty_label_set:
            found.append(
                f"**No box in any of the {_number(extra.images)} {name} images** "
                "(`empty_label_set` in their metrics): the annotator found nothing at "
                f"annotate_with_baseline.confidence {params.annotate_with_baseline.confidence}, "
                "so the variant trained on them learned their objects as background."
            )
    flagged = sorted(
        key.split(".")[0]
        for key, value in evaluation.items()
        if key.endswith(".below_annotation_confidence") and value
    )
    if flagged:
        found.append(
            f"**{', '.join(flagged)}: no test box scored above the annotation confidence "
            f"({params.annotate_with_baseline.confidence})**; their mAP comes from near-zero "
            "scores only: compare it with the chance row, not with the other variants."
        )
    seeds = params.train_detector.seeds
    if len(seeds) == 1:
        found.append(
            f"**One seed per variant ({seeds[0]}, the default's time budget): no interval, no "
            "p-value, no minimum detectable difference.** A difference smaller than the "
            "detector's seed-to-seed spread is not evidence; run the evidence profile, "
            "`dvc exp run -S 'train_detector.seeds=[42,43,44]'` (3 seeds; only the new seeds "
            "train), for the intervals and Holm-adjusted p-values."
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
    mdd = [
        evaluation[key]
        for key in evaluation
        if key.endswith(".mdd") and evaluation[key] is not None
    ]
    if mdd:
        found.append(
            f"With {len(seeds)} seeds a paired difference of {min(mdd):.3f}-{max(mdd):.3f} "
            "mAP@[.5:.95] is the smallest a t-test detects with 80 % power at the 5 % level "
            "(column 'detectable'): smaller differences are within the seed-to-seed noise."
        )
    found.append(
        "Labels not drawn by a person: the generated images' labels are the img2img source "
        "boxes merged with the annotator's predictions, and the pseudo-labels are its "
        "predictions alone; what it misses (recall "
        f"{_number(annotated.annotator.recall)} on val) becomes unlabelled objects, its "
        "false positives wrong labels."
    )
    found.append(
        f"FID and KID from {images.get('fid_generated_images')} generated images: FID is "
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
    if "real_vs_generated.train_accuracy" in images:
        found.append(
            "The classifier checks use small networks trained from scratch on few images: an "
            "accuracy near 0.5 only means indistinguishable to this classifier, and only if it "
            "fit its own training images (see its training accuracy); the subject check counts "
            "an image when any window scores above 0.5, so compare its share with the real "
            "reference, not with 1."
        )
    return found
