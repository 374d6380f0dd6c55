"""The one-page Markdown report of a pipeline run (`metrics/report.md`, written by `evaluate`).

Everything in it is read from the run's metrics files and params; nothing is computed here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from synthdet.params import Params

BASELINE = "real"
SPLITS = ("train", "val", "test", "personalize")


def _number(value: Any, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _link(target: Path, report: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), Path(report).resolve().parent)).as_posix()


def detection_table(evaluation: Mapping[str, Any], variants: Sequence[str]) -> list[str]:
    """Rows shaped like Genfusion's Table 1; the gap is the variant's mAP@[.5:.95] minus real's."""
    rows = [
        "| variant | mAP@[.5:.95] | mAP@.5 | mAP@.75 | gap to real (mAP@[.5:.95]) |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant in variants:
        gap = evaluation.get(f"{variant}.gap_map50_95")
        cells = [
            variant,
            _number(evaluation[f"{variant}.map50_95"]),
            _number(evaluation[f"{variant}.map50"]),
            _number(evaluation[f"{variant}.map75"]),
            "(baseline)" if variant == BASELINE else _number(gap, signed=True),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def render(
    params: Params,
    evaluation: Mapping[str, Any],
    prepared: Mapping[str, Any],
    annotated: Mapping[str, Any],
    variants: Sequence[str],
    pr_curve: Path,
    grid: Path,
    report: Path,
) -> str:
    """The report as Markdown; `pr_curve`, `grid` are linked relative to `report`."""
    generate, yolo = params.generate, params.train_detector.yolo
    base_model = params.personalize.base_model
    epochs = yolo.get("epochs", "ultralytics' default number of")
    lines = ["# synthdet run report", "", "## Data", ""]
    lines += ["| split | images | boxes |", "|---|---:|---:|"]
    for split in SPLITS:
        images, boxes = prepared.get(f"{split}.images"), prepared.get(f"{split}.boxes")
        lines.append(f"| real {split} | {_number(images)} | {_number(boxes)} |")
    lines.append(
        f"| synthetic (auto-labelled) | {_number(annotated.get('images'))} | "
        f"{_number(annotated.get('boxes'))} |"
    )
    lines += [
        "",
        "## Settings",
        "",
        f"- Base model: `{base_model}`; LoRA personalisation for "
        f"{params.personalize.max_train_steps} steps on the "
        f"{_number(prepared.get('personalize.images'))} personalize images.",
        f"- Generation: {generate.num_images} images at {generate.resolution} px, "
        f"{generate.num_inference_steps} denoising steps, guidance {generate.guidance_scale}.",
        f"- Detectors: `{params.train_detector.model}`, {epochs} epochs at imgsz "
        f"{yolo.get('imgsz', 'default')}, seed {params.shared.seed}, identical for every variant.",
        f"- Annotation: confidence >= {params.annotate_with_baseline.confidence}, "
        f"NMS IoU {params.annotate_with_baseline.iou}.",
        "",
        f"## Detection on the real test split ({evaluation.get('test_images')} images, "
        f"{evaluation.get('test_boxes')} boxes)",
        "",
        *detection_table(evaluation, variants),
        "",
        "Gaps at IoU .5 and .75 are in `metrics/evaluate.json` (`<variant>.gap_map50`, "
        "`.gap_map75`).",
        "",
        f"## Annotator (the `{BASELINE}` detector on the real val split, "
        f"{_number(annotated.get('annotator.val_images'))} images, "
        f"{_number(annotated.get('annotator.val_boxes'))} boxes)",
        "",
        "At the labelling settings above; precision and recall match boxes greedily at IoU 0.5. "
        "The mAP ranks only the boxes kept at that confidence, so it is lower than the "
        "detector's mAP at the evaluation confidence.",
        "",
        "| precision | recall | mAP@.5 | mAP@[.5:.95] |",
        "|---:|---:|---:|---:|",
        "| "
        + " | ".join(
            _number(annotated.get(f"annotator.{key}"))
            for key in ("precision", "recall", "map50", "map50_95")
        )
        + " |",
        "",
        f"On the synthetic images: {_number(annotated.get('boxes_per_image'), 2)} boxes per "
        f"image, {_number(annotated.get('images_without_boxes'))} images without any box, mean "
        f"confidence {_number(annotated.get('mean_confidence'))}.",
        "",
        "## Image realism",
        "",
        f"- FID {_number(evaluation.get('fid'), 2)} and KID "
        f"{_number(evaluation.get('kid_mean'), 4)} ± {_number(evaluation.get('kid_std'), 4)} "
        f"(std over KID subsets of {evaluation.get('kid_subset_size')} images) between "
        f"{evaluation.get('fid_generated_images')} generated and "
        f"{evaluation.get('fid_real_images')} real {params.evaluate.fid_real_split} images.",
    ]
    if "leak_max_similarity" in evaluation:
        lines.append(
            f"- Closest generated-to-test similarity {_number(evaluation['leak_max_similarity'])}"
            f" (the run fails above evaluate.leak_threshold = {params.evaluate.leak_threshold})."
        )
    lines += [
        "",
        "## Plots",
        "",
        f"- Precision-recall at IoU .5 of every variant: `dvc plots show` "
        f"(data: [{pr_curve.name}]({_link(pr_curve, report)})); validation mAP per epoch: "
        "same command.",
        f"- Synthetic images with their auto-labels: [{grid.name}]({_link(grid, report)})",
        "",
        f"![synthetic images with auto-labels]({_link(grid, report)})",
        "",
        "## Limits",
        "",
    ]
    lines += [f"- {limit}" for limit in limits(params, evaluation, prepared, annotated)]
    return "\n".join(lines) + "\n"


def limits(
    params: Params,
    evaluation: Mapping[str, Any],
    prepared: Mapping[str, Any],
    annotated: Mapping[str, Any],
) -> list[str]:
    found = []
    resolution = params.generate.resolution
    if params.personalize.base_model == "builtin:tiny":
        found.append(
            f"Offline tiny base model (`builtin:tiny`, pretrained on the "
            f"{prepared.get('train.images', 'real')} real train images only), not Stable "
            f"Diffusion: the images are {resolution} px and low fidelity, so these numbers do not "
            "predict what a real base model gives."
        )
    found.append(
        f"One seed per variant (shared.seed = {params.shared.seed}), no error bars: a gap smaller "
        "than the seed-to-seed spread of the detector is not evidence; repeat with "
        "`dvc exp run -S shared.seed=...`."
    )
    found.append(
        f"The test split has {evaluation.get('test_images')} tiles cut from "
        f"{params.prepare.test_groups} photos; tiles of one photo are correlated, so the test "
        "set is smaller than its tile count suggests."
    )
    found.append(
        "The synthetic labels are the annotator's own predictions: what it misses on real images "
        f"(recall {_number(annotated.get('annotator.recall'))} on val) becomes unlabelled "
        "objects in the synthetic set, its false positives become wrong labels."
    )
    found.append(
        f"FID and KID from {evaluation.get('fid_generated_images')} generated images: FID is "
        "biased upwards for small sets (compare FIDs only at equal set sizes); KID is unbiased "
        "but noisy at this size. Both use Inception features of images upscaled from "
        f"{resolution} px to 299 px."
    )
    if params.train_detector.model.endswith(".yaml"):
        found.append(
            f"Detectors are trained from scratch (`{params.train_detector.model}`, no pretrained "
            f"weights) for {params.train_detector.yolo.get('epochs', 'the default')} epochs; "
            "gaps may change with pretrained weights or longer training."
        )
    return found
