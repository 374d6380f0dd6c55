"""Stage annotate-with-baseline: label the generated images with the real-data detector.

Writes a complete YOLO folder (images copied, one label file per image, empty when the baseline
found nothing), so the synthetic images can be trained on like real ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
from pathlib import Path

from synthdet import detection
from synthdet.cli import run_stage
from synthdet.data import DataError, atomic_path, format_label, list_images, write_json
from synthdet.params import Params
from synthdet.tracking import stage_run


def run(
    params: Params, images_dir: Path, baseline: Path, out_dir: Path, metrics_path: Path
) -> dict:
    config = params.annotate_with_baseline
    images = list_images(images_dir) if Path(images_dir).is_dir() else []
    if not images:
        raise DataError(f"{images_dir}: no images to annotate (run the generate stage first)")
    logged_params = {
        "baseline": str(baseline),
        "images": str(images_dir),
        "annotate_with_baseline": dataclasses.asdict(config),
    }
    with stage_run(
        "annotate-with-baseline", params.shared.mlflow_experiment, logged_params
    ) as tracking:
        detector = detection.load_detector(baseline, params.shared.class_names)
        detections = detection.predict(
            detector, images, imgsz=config.imgsz, confidence=config.confidence, iou=config.iou
        )
        boxes_per_image = []
        confidences = []
        with atomic_path(Path(out_dir)) as staging:
            (staging / "images").mkdir(parents=True)
            (staging / "labels").mkdir()
            for found in detections:
                boxes = found.yolo_boxes()
                shutil.copy2(found.image, staging / "images" / found.image.name)
                label = staging / "labels" / f"{found.image.stem}.txt"
                label.write_text(format_label(box for box, _ in boxes))
                boxes_per_image.append(len(boxes))
                confidences.extend(score for _, score in boxes)
        metrics = {
            "images": len(images),
            "boxes": sum(boxes_per_image),
            "images_without_boxes": boxes_per_image.count(0),
            "boxes_per_image": round(statistics.fmean(boxes_per_image), 6),
            # undefined (null) when the baseline found nothing at annotate_with_baseline.confidence
            "mean_confidence": round(statistics.fmean(confidences), 6) if confidences else None,
        }
        write_json(metrics_path, metrics)
        tracking.log_metrics(metrics)
        tracking.log_artifact(metrics_path)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of generated images")
    parser.add_argument("--baseline", type=Path, required=True, help="baseline detector best.pt")
    parser.add_argument("--out", type=Path, required=True, help="output YOLO folder")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    args = parser.parse_args()
    run_stage(lambda params: run(params, args.images, args.baseline, args.out, args.metrics))


if __name__ == "__main__":
    main()
