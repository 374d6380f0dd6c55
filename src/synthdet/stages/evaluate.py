"""Stage evaluate: every detector on the real test split, FID and KID of the generated images.

Writes flat metrics (`<variant>.map50_95`, `.map50`, `.map75`, `.gap_*` = variant minus `real`,
`fid`, `kid_mean`, `kid_std`, counts), the precision-recall curve at IoU .5 of every variant as
one CSV (columns `recall` and one precision column per variant), a grid of synthetic images with
their auto-labels drawn, and `report.md`, a one-page summary of the run (`synthdet.report`) that
also reads the prepare and annotate metrics.

FID and KID share one Inception pass per image (`metrics.image_realism`); the leakage check
embeds the images separately, at the generated images' size.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import torch
from PIL import Image

from synthdet import detection, metrics, plots, report
from synthdet.cli import run_stage
from synthdet.data import (
    DataError,
    atomic_path,
    list_images,
    read_yolo_folder,
    write_json,
    write_text,
)
from synthdet.params import Params
from synthdet.tracking import stage_run

BASELINE = "real"  # the variant the others are compared with
MAP_KEYS = ("map50_95", "map50", "map75")


def find_detectors(detectors_dir: Path) -> dict[str, Path]:
    """{variant: best.pt} for every `<detectors_dir>/<variant>/best.pt`, the baseline first."""
    found = {path.parent.name: path for path in sorted(Path(detectors_dir).glob("*/best.pt"))}
    if BASELINE not in found:
        raise DataError(
            f"{detectors_dir}: no {BASELINE}/best.pt; the '{BASELINE}' detector is the baseline "
            "every variant is compared with (run train-detector first)"
        )
    return {BASELINE: found.pop(BASELINE), **found}


def check_test_leakage(
    generated: list[Path], test: list[Path], threshold: float, inception: torch.nn.Module
) -> float:
    """Fail when a generated image is a near-copy of a test image; return the top similarity.

    A test image can only come out of the generator if it leaked into personalisation; a
    detector evaluated on it would be scored on its own training data.
    """
    with Image.open(generated[0]) as first:
        size = max(first.size)
    matches = metrics.nearest_matches(generated, test, size, inception)
    leaks = sorted((m for m in matches if m.similarity > threshold), key=lambda m: -m.similarity)
    if leaks:
        pairs = "; ".join(f"{m.image} ~ {m.match} ({m.similarity:.3f})" for m in leaks[:5])
        raise DataError(
            f"{len(leaks)} generated images are near-copies of test images (similarity above "
            f"evaluate.leak_threshold={threshold}): {pairs}. Check that no val/test photo "
            "reached the personalize split."
        )
    return max(m.similarity for m in matches)


def write_pr_curves(curves: dict[str, metrics.DetectionMetrics], path: Path) -> None:
    recall = next(iter(curves.values())).recall
    with atomic_path(Path(path)) as tmp, tmp.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["recall", *curves])
        for index, value in enumerate(recall):
            writer.writerow([value, *(curve.precision[index] for curve in curves.values())])


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the metrics JSON ({exc})") from exc


def run(
    params: Params,
    test_dir: Path,
    detectors_dir: Path,
    generated_dir: Path,
    annotated_dir: Path,
    real_images_dir: Path,
    metrics_path: Path,
    pr_curve_path: Path,
    grid_path: Path,
    prepare_metrics: Path,
    annotate_metrics: Path,
    report_path: Path,
) -> dict:
    config = params.evaluate
    class_names = params.shared.class_names
    detectors = find_detectors(detectors_dir)
    test_samples = read_yolo_folder(test_dir, len(class_names))
    logged_params = {
        "evaluate": dataclasses.asdict(config),
        "detectors": {variant: str(path) for variant, path in detectors.items()},
        "test": str(test_dir),
        "real_images": str(real_images_dir),
    }
    with stage_run("evaluate", params.shared.mlflow_experiment, logged_params) as tracking:
        generated_images = list_images(generated_dir)
        inception = metrics.FidInceptionFeatures()
        leak_similarity = check_test_leakage(
            generated_images, [s.image for s in test_samples], config.leak_threshold, inception
        )
        targets = [metrics.target_boxes(sample) for sample in test_samples]
        results: dict[str, metrics.DetectionMetrics] = {}
        for variant, weights in detectors.items():
            detector = detection.load_detector(weights, class_names)
            found = detection.predict(
                detector,
                [sample.image for sample in test_samples],
                imgsz=config.imgsz,
                confidence=config.confidence,
                iou=config.iou,
            )
            predictions = [metrics.predicted_boxes(image) for image in found]
            results[variant] = metrics.detection_metrics(predictions, targets)

        summary: dict[str, float | int] = {}
        for variant, result in results.items():
            for key in MAP_KEYS:
                summary[f"{variant}.{key}"] = round(getattr(result, key), 6)
        for variant, result in results.items():
            if variant != BASELINE:
                for key in MAP_KEYS:
                    gap = getattr(result, key) - getattr(results[BASELINE], key)
                    summary[f"{variant}.gap_{key}"] = round(gap, 6)

        summary["leak_max_similarity"] = round(leak_similarity, 6)
        real_images = list_images(real_images_dir)
        realism = metrics.image_realism(
            real_images, generated_images, inception, seed=params.shared.seed
        )
        summary["fid"] = round(realism.fid, 4)
        summary["kid_mean"] = round(realism.kid_mean, 6)
        summary["kid_std"] = round(realism.kid_std, 6)
        summary["kid_subset_size"] = realism.kid_subset_size
        summary["fid_real_images"] = len(real_images)
        summary["fid_generated_images"] = len(generated_images)
        summary["test_images"] = len(test_samples)
        summary["test_boxes"] = sum(len(sample.boxes) for sample in test_samples)

        write_pr_curves(results, pr_curve_path)
        annotated = read_yolo_folder(annotated_dir, len(class_names))
        plots.box_grid(annotated[: config.grid_images], grid_path)
        write_json(metrics_path, summary)
        page = report.render(
            params,
            summary,
            _read_json(prepare_metrics),
            _read_json(annotate_metrics),
            list(results),
            Path(pr_curve_path),
            Path(grid_path),
            Path(report_path),
        )
        write_text(report_path, page)
        tracking.log_metrics(summary)
        for path in (metrics_path, pr_curve_path, grid_path, report_path):
            tracking.log_artifact(path)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", type=Path, required=True, help="real test YOLO folder")
    parser.add_argument(
        "--detectors",
        type=Path,
        required=True,
        help="folder with one <variant>/best.pt per detector",
    )
    parser.add_argument("--generated", type=Path, required=True, help="generated images folder")
    parser.add_argument(
        "--annotated",
        type=Path,
        required=True,
        help="YOLO folder of the auto-labelled generated images",
    )
    parser.add_argument(
        "--real-images",
        type=Path,
        required=True,
        help="real images the generated ones are compared with (FID)",
    )
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--pr-curve", type=Path, required=True, help="precision-recall CSV")
    parser.add_argument("--grid", type=Path, required=True, help="grid PNG of annotated images")
    parser.add_argument(
        "--prepare-metrics", type=Path, required=True, help="metrics JSON of prepare"
    )
    parser.add_argument(
        "--annotate-metrics", type=Path, required=True, help="metrics JSON of annotate"
    )
    parser.add_argument("--report", type=Path, required=True, help="Markdown report to write")
    args = parser.parse_args()
    run_stage(
        lambda params: run(
            params,
            args.test,
            args.detectors,
            args.generated,
            args.annotated,
            args.real_images,
            args.metrics,
            args.pr_curve,
            args.grid,
            args.prepare_metrics,
            args.annotate_metrics,
            args.report,
        )
    )


if __name__ == "__main__":
    main()
