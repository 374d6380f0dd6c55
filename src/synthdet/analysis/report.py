"""The one-page Markdown report of a pipeline run (`metrics/report.md`, the report stage).

Everything in it is read from the run's metrics files (evaluate's as the typed `Evaluation`) and
params; nothing is computed here. A number the evaluation lacks is an error, never a blank: "n/a"
stands only for a value that is undefined, and the text says why (one seed, no test box of a
size).

Its top says what the run can detect (issue 23): a warning when the data leaves no headroom, and
whether the run is evidence or a demonstration (evaluate's judgement per comparison).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from synthdet.artifacts.evaluation import Comparison, Evaluation, MeanStd
from synthdet.artifacts.metrics import AnnotateMetrics, ExtraImagesMetrics, PrepareMetrics
from synthdet.detectors.variants import REAL, Variant
from synthdet.params import Params


def _number(value: float | None, digits: int = 3, signed: bool = False) -> str:
    """A number for a table cell; "n/a" for a value that is undefined (the table says why)."""
    if value is None:
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _mean_std(scores: MeanStd) -> str:
    """mean ± std; the mean alone with one seed (no std)."""
    text = _number(scores.mean)
    return text if scores.std is None or scores.mean is None else f"{text} ± {scores.std:.3f}"


def detection_table(evaluation: Evaluation, variants: Sequence[str]) -> list[str]:
    """Rows shaped like Genfusion's Table 1: mean ± std over seeds, the margin over the chance
    baseline and the warnings evaluate flagged; raises DataError for a variant it did not score."""
    rows = [
        "| variant | seeds | mAP@[.5:.95] | mAP@.5 | mAP@.75 | margin over chance |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variant in variants:
        record = evaluation.variant(variant)
        flags = []
        if record.below_annotation_confidence:
            flags.append("**⚠ no test box scored above the annotation confidence**")
        if record.empty_label_set:
            flags.append("**⚠ trained on an empty label set**")
        elif record.empty_extra_labels:
            flags.append("**⚠ its extra images hold no box**")
        cells = [
            " ".join([f"`{variant}`", *flags]),
            _number(record.seeds),
            _mean_std(record.map50_95),
            _mean_std(record.map50),
            _mean_std(record.map75),
            _number(record.margin_over_chance, signed=True),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    chance = evaluation.chance
    rows.append(
        f"| chance (one whole-image box per image) | - | {_number(chance.map50_95)} | "
        f"{_number(chance.map50)} | {_number(chance.map75)} | - |"
    )
    return rows


def draw_table(evaluation: Evaluation, variants: Sequence[str]) -> list[str]:
    """A row per variant and handful draw (mean ± std over its seeds) of `variants` trained per
    draw; no table with one draw (the rows above are that draw's)."""
    drawn = [name for name in variants if len(evaluation.draws.get(name, {})) > 1]
    if not drawn:
        return []
    rows = [
        "Per handful draw (each its own handful, personalisation, extra images and detectors; "
        "`real` is the same in every draw):",
        "",
        "| variant | draw | seeds | mAP@[.5:.95] |",
        "|---|---:|---:|---:|",
    ]
    for name in drawn:
        for draw, scores in evaluation.draws[name].items():
            rows.append(f"| `{name}` | {draw} | {scores.seeds} | {_mean_std(scores.map50_95)} |")
    return [*rows, ""]


def _evidence(found: Comparison) -> str:
    """The evidence cell: yes, or no with evaluate's reason."""
    if found.evidence is None:
        return "not recorded (evaluation.json predates it)"
    return "yes" if found.evidence else f"no: {found.evidence_reason}"


def comparison_table(evaluation: Evaluation, comparisons: Sequence[tuple[str, str]]) -> list[str]:
    """Paired differences (variant - reference, same seed) with the 95 % t interval, the raw and
    Holm-adjusted p-values, the minimum detectable difference (80 % power) and whether it is
    evidence (that difference <= evaluate.target_difference); with one seed only the difference
    is defined. Raises DataError for a pair evaluate did not compare."""
    rows = [
        "| comparison | seeds | difference in mAP@[.5:.95] | 95 % interval | p | p (Holm) "
        "| detectable at 80 % power | evidence |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for variant, reference in comparisons:
        found = evaluation.comparison(variant, reference)
        low, high = found.diff_low, found.diff_high
        # no interval (nor p, nor MDD) from one seed: no spread of the differences
        interval = "n/a (one seed)" if low is None or high is None else f"[{low:+.3f}, {high:+.3f}]"
        cells = [
            f"`{variant}` − `{reference}`",
            _number(found.seeds),
            _number(found.diff_map50_95, signed=True),
            interval,
            _number(found.p_value),
            _number(found.p_holm),
            _number(found.mdd),
            _evidence(found),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def equivalent_lines(evaluation: Evaluation, variants: Sequence[Variant]) -> list[str]:
    """What each `handful-<source>` variant is worth in labelled real images (the real curve
    inverted)."""
    lines = []
    few_shot = [v.name for v in variants if v.is_few_shot]
    reasons = {
        evaluation.variant(name).real_image_equivalent.reason
        for name in few_shot
        if evaluation.variant(name).real_image_equivalent is not None
    }
    if few_shot and len(reasons) == 1 and None not in reasons:
        # the curve, not the variant, is unidentifiable: one reason for all of them
        names = ", ".join(f"`{name}`" for name in few_shot)
        return [f"- Real-image equivalent of {names}: **{reasons.pop()}**."]
    for variant in few_shot:
        equivalent = evaluation.variant(variant).real_image_equivalent
        if equivalent is not None and equivalent.reason is not None:
            text = f"real-image equivalent **{equivalent.reason}**"
        elif equivalent is None:
            text = (
                "has no real-image equivalent: fewer than two points of the curve (`handful`, "
                "`real-n…`, `real`) were trained"
            )
        elif equivalent.images is None:
            where = (
                "fewer than the handful" if equivalent.bound == "below" else "more than all of them"
            )
            text = f"scores {where} on the curve"
        else:
            low, high = equivalent.low, equivalent.high
            spread = (
                ""
                if low is None or high is None or low == high
                else f" ({low:.0f}-{high:.0f} for its mean ∓ std)"
            )
            text = f"scores like **{equivalent.images:.0f} labelled real images**{spread}"
        lines.append(f"- `{variant}` {text}.")
    return lines


def what_it_can_detect(evaluation: Evaluation) -> list[str]:
    """The report's opening: a warning when the data leaves no headroom, then one sentence on
    whether the run is evidence or a demonstration (evaluate's judgements, nothing computed)."""
    lines = []
    headroom = evaluation.headroom
    if headroom is not None and not headroom.ok:
        lines += [
            f"> **⚠ No headroom: `real` − `handful` {headroom.real_minus_handful:+.3f} and "
            f"`real` − chance {headroom.real_minus_chance:+.3f} mAP@[.5:.95]: this data cannot "
            f"show what extra images are worth.** {headroom.reason}.",
            "",
        ]
    target = evaluation.target_difference
    if target is None:
        lines.append(
            "Evidence or demonstration: not recorded (metrics/evaluation.json was written before "
            "evaluate judged it); rerun evaluate."
        )
        return lines
    judged = evaluation.comparisons
    strong = [c for c in judged if c.evidence]
    if not strong:
        lines.append(
            f"This run is **a demonstration**: no comparison has enough units (seeds) to detect "
            f"a difference of {target} mAP@[.5:.95] (80 % power, 5 % level; "
            "`evaluate.target_difference`), see docs/evidence.md for the evidence profile."
        )
    else:
        lines.append(
            f"This run is **evidence** for {len(strong)} of its {len(judged)} comparisons: "
            f"they can detect a difference of {target} mAP@[.5:.95] (80 % power, 5 % level; "
            "`evaluate.target_difference`); the column 'evidence' says which and why not."
        )
    if headroom is not None and headroom.ok and headroom.reason:
        lines.append(f"Headroom: {headroom.reason}.")
    return lines


def size_table(evaluation: Evaluation, variants: Sequence[str]) -> list[str]:
    """mAP@[.5:.95] by COCO object size (mean ± std over seeds); n/a: no test box of that size."""
    rows = [
        "| variant | small (< 32² px) | medium | large (> 96² px) |",
        "|---|---:|---:|---:|",
    ]
    for variant in variants:
        record = evaluation.variant(variant)
        sizes = (record.map_small, record.map_medium, record.map_large)
        rows.append("| " + " | ".join([variant, *map(_mean_std, sizes)]) + " |")
    return rows


def image_quality(params: Params, images: Mapping[str, Any]) -> list[str]:
    """The generated images' checks, from check-images' metrics
    (`metrics/draws/draw<d>/images.json`)."""
    lines = [
        f"- FID {_number(images.get('fid'), 2)} and KID "
        f"{_number(images.get('kid_mean'), 4)} ± {_number(images.get('kid_std'), 4)} "
        f"(std over KID subsets of {images.get('kid_subset_size')} images) between "
        f"{images.get('fid_generated_images')} generated and "
        f"{images.get('fid_real_images')} real {params.evaluate.fid_real_split} images.",
    ]
    if images.get("clip_score") is not None:
        lines.append(
            f"- CLIP score (image vs its prompt, `{params.evaluate.clip_model}`): "
            f"{_number(images['clip_score'], 2)}."
        )
    else:
        lines.append(f"- CLIP score: n/a ({images.get('clip_score_reason', 'not computed')}).")
    if "real_vs_generated.accuracy" in images:
        p_value = images.get("real_vs_generated.p_value")
        line = (
            "- Real vs generated (a `{model}` trained from scratch to tell them apart, "
            "{folds}-fold): held-out accuracy {acc} on {tested} images ({correct} right; "
            "0.5 = indistinguishable; one-sided binomial p = {p}); accuracy on its own training "
            "images {fit}.".format(
                model=params.evaluate.classifier_model,
                folds=images.get("real_vs_generated.folds"),
                acc=_number(images["real_vs_generated.accuracy"]),
                tested=images.get("real_vs_generated.tested"),
                correct=images.get("real_vs_generated.correct"),
                p="n/a" if p_value is None else f"{p_value:.2g}",
                fit=_number(images.get("real_vs_generated.train_accuracy")),
            )
        )
        if images.get("real_vs_generated.valid") == 0:
            line += (
                " **Invalid check**: "
                f"{images.get('real_vs_generated.invalid_reason')}; its accuracy says nothing."
            )
        lines.append(line)
    if images.get("subject.valid") == 0:
        lines.append(
            "- Subject check: **invalid** ({reason}; held-out crop accuracy {crop} on {crops} "
            "crops, {fp} of background crops taken for the subject), so no share is "
            "reported.".format(
                reason=images.get("subject.invalid_reason"),
                crop=_number(images.get("subject.crop_accuracy")),
                crops=images.get("subject.crop_tested"),
                fp=_number(images.get("subject.background_false_positive_rate")),
            )
        )
    elif "subject.generated_share" in images:
        lines.append(
            "- Subject check (a classifier of real subject crops vs box-free background, "
            "held-out crop accuracy {crop} on {crops} crops, {fp} of background crops taken for "
            "the subject): the subject is found in {gen} of the {n_gen} generated images, and in "
            "{ref} of the {n_ref} real val images (the reference).".format(
                crop=_number(images.get("subject.crop_accuracy")),
                crops=images.get("subject.crop_tested"),
                fp=_number(images.get("subject.background_false_positive_rate")),
                gen=_number(images["subject.generated_share"]),
                n_gen=images.get("subject.generated_images"),
                ref=_number(images.get("subject.reference_share")),
                n_ref=images.get("subject.reference_images"),
            )
        )
    lines += object_fidelity(images)
    if "leak_max_similarity" in images:
        lines.append(
            f"- Closest generated-to-test similarity {_number(images['leak_max_similarity'])}"
            f" (the run fails above evaluate.leak_threshold = {params.evaluate.leak_threshold})."
        )
    return lines


def noise_table(noise: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Variance components of test mAP@[.5:.95] per protocol and training subset, from
    `benchmarks/protocol.py --summarise` (keys `<protocol>.<subset>`)."""
    rows = [
        "Measured apart from this run by `benchmarks/protocol.py` on the embedded data "
        "(`metrics/protocol/`: each protocol is params.yaml's detector with the settings shown; "
        "the handful drawn as `handful@<draw>` draws it, draw 0 = this run's; rerun it for your "
        "data). Std over detector seeds (draw 0), over handful draws at one seed, and over "
        "the test split's photos (bootstrap of one detector's predictions):",
        "",
        "| protocol.subset | settings | units | mean | std seeds | std draws | std test photos |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, cell in sorted(noise.items()):
        values = (
            cell["mean"],
            cell["std_over_seeds_draw0"],
            cell["std_over_draws_same_seed"],
            cell["std_test_photo_bootstrap"],
        )
        rows.append(
            f"| {key} | {cell['settings']} | {cell['units']} | "
            + " | ".join(_number(v) for v in values)
            + " |"
        )
    return rows


def object_fidelity(images: Mapping[str, Any]) -> list[str]:
    """The generated objects against the handful's and real val's
    (`synthdet.image_checks.fidelity`)."""
    if "objects.valid" not in images:
        return []
    if images["objects.valid"] == 0:
        return [f"- Object fidelity: not measured ({images.get('objects.invalid_reason')})."]
    shift = ", ".join(
        f"{name} {_number(images.get(f'objects.{key}_shift_z'), 2)} "
        f"(val {_number(images.get(f'objects.val_{key}_shift_z'), 2)})"
        for name, key in (("L*", "l"), ("a*", "a"), ("b*", "b"))
    )
    line = (
        f"- Object fidelity ({images.get('objects.generated_crops')} generated box crops vs "
        f"{images.get('objects.handful_crops')} of the handful; {images.get('objects.val_crops')} "
        f"real val crops as the reference spread): mean colour shift in val stds {shift}; KID "
        f"on crops {_number(images.get('objects.kid_generated_vs_handful'), 4)} "
        f"(val vs handful {_number(images.get('objects.kid_val_vs_handful'), 4)})."
    )
    if images.get("objects.drift") == 1:
        reason = images.get("objects.drift_reason")
        line += f" **The generated objects drift from the user's**: {reason}."
    return [line]


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
        f"{_handful_images(params)} handful images (each draw).",
        f"- Generation: {generate.mode}{sources}, {generate.num_images} images at "
        f"{params.shared.resolution} px, {generate.num_inference_steps} denoising steps, guidance "
        f"{generate.guidance_scale}"
        + (f", strength {generate.strength}" if generate.mode == "img2img" else "")
        + (", VAE residual" if generate.mode == "img2img" and generate.vae_residual else "")
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


def _over_draws(params: Params) -> str:
    """How the units pool with several handful draws (few_shot.draws); nothing with one."""
    draws = params.few_shot.draws
    if len(draws) == 1:
        return ""
    return (
        f", pooled over the {len(draws)} handful draws {list(draws)}: the seeds column counts "
        "(draw, seed) units, and comparisons pair the units both sides have (`real` of a seed "
        "with every draw's detector of that seed)"
    )


def _handful_images(params: Params) -> int:
    """The images of one handful draw: every subject's `images`."""
    return sum(subject.images for subject in params.shared.subjects.values())


def _data(
    prepared: PrepareMetrics,
    annotated: AnnotateMetrics,
    extras: Mapping[str, ExtraImagesMetrics],
    handful: ExtraImagesMetrics | None,
) -> list[str]:
    lines = ["| split | images | boxes |", "|---|---:|---:|"]
    for split, counts in prepared.splits().items():
        lines.append(f"| real {split} | {_number(counts.images)} | {_number(counts.boxes)} |")
    rows = {"handful (labelled train images)": handful} if handful else {}
    rows |= {"synthetic (generated, labelled)": annotated, **extras}
    for name, counts in rows.items():
        lines.append(f"| {name} | {_number(counts.images)} | {_number(counts.boxes)} |")
    return lines


def render(
    params: Params,
    evaluation: Evaluation,
    images: Mapping[str, Any],
    prepared: PrepareMetrics,
    annotated: AnnotateMetrics,
    extras: Mapping[str, ExtraImagesMetrics],
    variants: Sequence[Variant],
    comparisons: Sequence[tuple[str, str]],
    noise: Mapping[str, Mapping[str, Any]] | None = None,
    handful: ExtraImagesMetrics | None = None,
) -> str:
    """The report as Markdown: `evaluation` (evaluate's evaluation.json), `images`
    (check-images), `prepared`, `annotated` and `extras` (copy-paste and pseudo-label metrics,
    by row name) are the run's metrics files; the tables and grids it links lie next to it.
    `noise`: the detector protocol's variance components (`benchmarks/protocol.py`'s
    noise.json), shown in their own section when given. `handful`: the draw's handful counts
    (the handful stage's metrics), a data row when given."""
    # the few-shot question: the real-image curve (real, handful, real-n…) and handful-<source>
    few_shot = [v.name for v in variants if v.on_real_image_curve or v.is_few_shot]
    others = [v.name for v in variants if v.name not in few_shot]
    few_shot_pairs = [c for c in comparisons if c[0] in few_shot]
    lines = ["# synthdet run report", "", *what_it_can_detect(evaluation), ""]
    lines += ["## Data", "", *_data(prepared, annotated, extras, handful)]
    lines += ["", "## Settings", "", *_settings(params, prepared, annotated)]
    lines += [
        "",
        f"## The few-shot question: {_handful_images(params)} labelled "
        f"images, and {params.few_shot.extra_images} more of each kind",
        "",
        f"Real test split: {evaluation.test_images} images, "
        f"{evaluation.test_boxes} boxes. Mean ± sample std over seeds (no ± with one "
        f"seed){_over_draws(params)}.",
        "",
        *detection_table(evaluation, few_shot),
        "",
        *draw_table(evaluation, few_shot),
        *comparison_table(evaluation, few_shot_pairs),
        "",
        "What the extra images are worth, read off the curve of mAP against labelled real "
        "images (`handful` → `real-n…` → `real`, linear interpolation, the curve made "
        "non-decreasing):",
        "",
        *equivalent_lines(evaluation, variants),
        "",
    ]
    if noise:
        lines += ["## What moves a detector's score (the noise)", "", *noise_table(noise), ""]
    if others:
        lines += [
            "## Generated data against all real labels (Genfusion's table)",
            "",
            *detection_table(evaluation, [REAL.name, *others]),
            "",
            *comparison_table(evaluation, [c for c in comparisons if c[0] in others]),
            "",
        ]
    lines += [
        "By COCO object size (box area in test-image pixels), mAP@[.5:.95] (n/a: the test split "
        "has no box of that size):",
        "",
        *size_table(evaluation, [v.name for v in variants]),
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
    evaluation: Evaluation,
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
            "**No box in any generated image** (`empty_label_set` in "
            "metrics/draws/draw<d>/annotate.json): the detectors on generated images trained on "
            "background only, so their mAP measures nothing and the generated images only teach "
            "the others to miss objects."
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
        name for name, record in evaluation.variants.items() if record.below_annotation_confidence
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
        f"The test split has {evaluation.test_images} tiles cut from "
        f"{params.prepare.test_groups} photos; tiles of one photo are correlated, so the test "
        "set is smaller than its tile count suggests."
    )
    mdd = [c.mdd for c in evaluation.comparisons if c.mdd is not None]
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
