"""pseudo-label: real train images outside the handful, labelled by the annotator, labels withheld.

The `handful-pseudo` variant's extra images: `few_shot.extra_images` real train images that are
not in the handful, drawn with shared.seed, labelled by the annotator detector
(`annotate_with_baseline.annotator`, at its confidence and NMS IoU). Only the images folder is
read, never a label file of these images: they compete with the generated images on equal terms
(real unlabelled photos against generated ones). Writes a YOLO folder and
`metrics/draws/draw<d>/pseudo.json`.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from tqdm import tqdm

from synthdet import formats
from synthdet.core import data
from synthdet.core.cli import run_stage
from synthdet.core.errors import warn
from synthdet.core.tracking import stage_run
from synthdet.detectors import detection
from synthdet.params import Params


def unlabelled_pool(images_dir: Path, handful_dir: Path, count: int, seed: int) -> list[Path]:
    """`count` images of `images_dir` not in the handful (by file name), drawn with `seed`.

    Raises DataError when fewer exist."""
    handful = {p.name for folder in Path(handful_dir).glob("*/images") for p in folder.iterdir()}
    pool = [p for p in data.list_images(images_dir) if p.name not in handful]
    if len(pool) < count:
        raise data.DataError(
            f"{images_dir}: {len(pool)} train images outside the handful, but "
            f"few_shot.extra_images is {count}; lower it"
        )
    return sorted(random.Random(seed).sample(pool, count))


def run(
    params: Params,
    images_dir: Path,
    handful_dir: Path,
    annotator_dir: Path,
    out_dir: Path,
    metrics_path: Path,
) -> dict:
    """Label `few_shot.extra_images` images of `images_dir` (the train images, no labels) outside
    `handful_dir` with the detector in `annotator_dir`; write them to `out_dir` (YOLO)."""
    config = params.annotate_with_baseline
    pool = unlabelled_pool(
        images_dir, handful_dir, params.few_shot.extra_images, params.shared.seed
    )
    logged = {"annotator": config.annotator, "images": len(pool), "confidence": config.confidence}
    with stage_run("pseudo-label", params.shared.mlflow_experiment, logged) as mlflow_run:
        detector = detection.load_detector(annotator_dir, params.shared.class_names)
        found = detection.predict(
            detector,
            tqdm(pool, desc="pseudo-label", unit="image"),
            imgsz=params.train_detector.imgsz,
            confidence=config.confidence,
            iou=config.iou,
        )
        labels = [[box for box, _ in detections.yolo_boxes()] for detections in found]
        with formats.new_yolo_folder(out_dir) as folder:
            for image, boxes in zip(pool, labels, strict=True):
                folder.add(image.name, image, boxes)
        boxes = sum(len(image_boxes) for image_boxes in labels)
        metrics = {
            "images": len(pool),
            "boxes": boxes,
            "boxes_per_image": round(boxes / len(pool), 6),
            "images_without_box": sum(1 for image_boxes in labels if not image_boxes),
            # handful-pseudo would learn these real objects as background (read by the report)
            "empty_label_set": boxes == 0,
        }
        data.write_json(metrics_path, metrics)
        mlflow_run.log_metrics(metrics)
    if boxes == 0:
        warn(
            f"pseudo-label labelled no box in any of its {len(pool)} real images (the "
            f"{config.annotator} annotator at annotate_with_baseline.confidence="
            f"{config.confidence}): handful-pseudo trains on them as background, and "
            f"{metrics_path.name} says empty_label_set: true. Lower "
            "annotate_with_baseline.confidence, or drop pseudo from few_shot.sources."
        )
    print(
        f"pseudo-label: {len(pool)} real images labelled by the {config.annotator} detector, "
        f"{boxes} boxes ({metrics['images_without_box']} images without one)"
    )
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="train images folder only")
    parser.add_argument("--handful", type=Path, required=True, help="the draw's handful folder")
    parser.add_argument(
        "--annotator",
        type=Path,
        nargs=2,
        required=True,
        metavar=("REAL", "HANDFUL"),
        help="the real and the draw's handful detector folders: annotate_with_baseline.annotator "
        "picks one",
    )
    parser.add_argument("--out", type=Path, required=True, help="output YOLO folder")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    args = parser.parse_args()
    run_stage(
        lambda params: run(
            params,
            args.images,
            args.handful,
            params.annotate_with_baseline.annotator_folder(*args.annotator),
            args.out,
            args.metrics,
        )
    )


if __name__ == "__main__":
    main()
