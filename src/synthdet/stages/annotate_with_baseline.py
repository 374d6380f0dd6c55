"""Stage annotate-with-baseline: label the generated images with the real-data detector.

Writes a complete YOLO folder (images copied, one label file per image, empty when the baseline
found nothing), so the synthetic images can be trained on like real ones, and the same labels as
COCO JSON (`annotations.json`, file names relative to `images/`) for review in CVAT or Label
Studio.

Before its labels are trusted, the annotator is measured on the real val split with exactly the
settings it labels with (`confidence`, `iou`, `imgsz`): `annotator.precision` / `.recall` count
the boxes it keeps, matched greedily at IoU 0.5 (`metrics.precision_recall`);
`annotator.map50` / `.map50_95` are COCO mAP of those same boxes, so they are lower than the
evaluate stage's mAP of this detector, which ranks boxes down to a confidence of 0.001.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
from pathlib import Path
from typing import Any

from synthdet import detection, formats, metrics
from synthdet.cli import run_stage
from synthdet.data import (
    DataError,
    Sample,
    atomic_path,
    format_label,
    list_images,
    read_yolo_folder,
    write_json,
)
from synthdet.params import Params
from synthdet.tracking import stage_run


def annotator_quality(detector: Any, val_dir: Path, params: Params) -> dict[str, float | None]:
    """Precision, recall and mAP of `detector` on a real labelled folder, at the labelling
    settings; flat `annotator.*` keys."""
    config = params.annotate_with_baseline
    samples = read_yolo_folder(val_dir, len(params.shared.class_names))
    found = detection.predict(
        detector, [s.image for s in samples], config.imgsz, config.confidence, config.iou
    )
    predictions = [metrics.predicted_boxes(image) for image in found]
    targets = [metrics.target_boxes(sample) for sample in samples]
    counts = metrics.precision_recall(predictions, targets)
    ranked = metrics.detection_metrics(predictions, targets)
    return {
        "annotator.precision": None if counts.precision is None else round(counts.precision, 6),
        "annotator.recall": round(counts.recall, 6),
        "annotator.map50": round(ranked.map50, 6),
        "annotator.map50_95": round(ranked.map50_95, 6),
        "annotator.val_images": len(samples),
        "annotator.val_boxes": counts.true_positives + counts.false_negatives,
    }


def run(
    params: Params,
    images_dir: Path,
    baseline: Path,
    val_dir: Path,
    out_dir: Path,
    metrics_path: Path,
) -> dict:
    config = params.annotate_with_baseline
    images = list_images(images_dir) if Path(images_dir).is_dir() else []
    if not images:
        raise DataError(f"{images_dir}: no images to annotate (run the generate stage first)")
    logged_params = {
        "baseline": str(baseline),
        "images": str(images_dir),
        "val": str(val_dir),
        "annotate_with_baseline": dataclasses.asdict(config),
    }
    with stage_run(
        "annotate-with-baseline", params.shared.mlflow_experiment, logged_params
    ) as tracking:
        detector = detection.load_detector(baseline, params.shared.class_names)
        quality = annotator_quality(detector, val_dir, params)
        detections = detection.predict(
            detector, images, imgsz=config.imgsz, confidence=config.confidence, iou=config.iou
        )
        boxes_per_image = []
        confidences = []
        labelled = []
        with atomic_path(Path(out_dir)) as staging:
            (staging / "images").mkdir(parents=True)
            (staging / "labels").mkdir()
            for found in detections:
                boxes = found.yolo_boxes()
                image = staging / "images" / found.image.name
                shutil.copy2(found.image, image)
                labelled.append(Sample(image, tuple(box for box, _ in boxes)))
                label = staging / "labels" / f"{found.image.stem}.txt"
                label.write_text(format_label(box for box, _ in boxes))
                boxes_per_image.append(len(boxes))
                confidences.extend(score for _, score in boxes)
            coco = formats.coco_dict(labelled, params.shared.class_names, staging / "images")
            write_json(staging / "annotations.json", coco)
        metrics = {
            "images": len(images),
            "boxes": sum(boxes_per_image),
            "images_without_boxes": boxes_per_image.count(0),
            "boxes_per_image": round(statistics.fmean(boxes_per_image), 6),
            # undefined (null) when the baseline found nothing at annotate_with_baseline.confidence
            "mean_confidence": round(statistics.fmean(confidences), 6) if confidences else None,
            **quality,
        }
        write_json(metrics_path, metrics)
        tracking.log_metrics(metrics)
        tracking.log_artifact(metrics_path)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of generated images")
    parser.add_argument("--baseline", type=Path, required=True, help="baseline detector best.pt")
    parser.add_argument(
        "--val",
        type=Path,
        required=True,
        help="real labelled YOLO folder the annotator is measured on",
    )
    parser.add_argument("--out", type=Path, required=True, help="output YOLO folder")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    args = parser.parse_args()
    run_stage(
        lambda params: run(params, args.images, args.baseline, args.val, args.out, args.metrics)
    )


if __name__ == "__main__":
    main()
