"""Stage annotate-with-baseline: label the generated images with the real-data detector.

The labelling itself (annotator quality on val, source boxes, reviewed corrections, counts) is
`synthdet.extra.annotation`; this file is the stage's command line and MLflow run.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from synthdet.artifacts.manifest import MANIFEST
from synthdet.core.cli import run_stage
from synthdet.core.data import DataError, write_json
from synthdet.core.errors import warn
from synthdet.core.tracking import stage_run
from synthdet.detectors import detection
from synthdet.extra import annotation
from synthdet.params import Params

STAGE = "annotate-with-baseline"  # the DVC stage, and its MLflow run's name


def run(
    params: Params,
    generated_dir: Path,
    baseline: Path,
    val_dir: Path,
    out_dir: Path,
    metrics_path: Path,
    source_labels: Path | None = None,
    corrections: Path | None = None,
) -> dict:
    """Label generate's images with the `baseline` detector and measure it on `val_dir`.

    Inputs: `generated_dir` (generate's `images/` and `manifest.jsonl`), `baseline` (a detector
    folder), `val_dir` (real labelled YOLO folder), `source_labels` (the real `labels/` img2img
    started from; needed when `annotate_with_baseline.source_boxes`), `corrections` (a reviewed
    YOLO folder, optional). Labels at `train_detector.yolo.imgsz`.
    Outputs: `out_dir` (YOLO folder + `annotations.json`, written atomically) and `metrics_path`
    (`artifacts.metrics.AnnotateMetrics`), also logged to MLflow; returns the metrics. Warns
    when no image got a box (`empty_label_set`).
    Errors: DataError when there is no generated image, source boxes lack `source_labels` or a
    source's label file, or a folder is malformed; ModelNotAvailableError for an unusable
    detector.
    """
    config = params.annotate_with_baseline
    imgsz = params.train_detector.imgsz
    images = annotation.generated_images(generated_dir)
    if config.source_boxes and source_labels is None:
        raise DataError("annotate_with_baseline.source_boxes needs --source-labels")
    class_names = params.shared.class_names
    corrected = annotation.read_corrections(corrections, len(class_names))
    logged_params = {
        "baseline": str(baseline),
        "generated": str(generated_dir),
        "val": str(val_dir),
        "corrections": str(corrections),
        "annotate_with_baseline": dataclasses.asdict(config) | {"imgsz": imgsz},
    }
    with stage_run(STAGE, params.shared.mlflow_experiment, logged_params) as mlflow_run:
        detector = detection.load_detector(baseline, class_names)
        quality = annotation.annotator_quality(detector, val_dir, params)
        detections = detection.predict(
            detector, images, imgsz=imgsz, confidence=config.confidence, iou=config.iou
        )
        source_counts: dict[str, int] = {}
        if config.source_boxes:
            detections, source_counts = annotation.source_proposals(
                detections,
                Path(generated_dir) / MANIFEST,
                Path(source_labels),
                config,
                len(class_names),
            )
        labelled = annotation.write_labelled_folder(detections, corrected, out_dir, class_names)
        metrics = {**labelled, **source_counts, **quality}
        if metrics["empty_label_set"]:
            warn(annotation.empty_labels_warning(len(images), config))
        write_json(metrics_path, metrics)
        mlflow_run.log_metrics(metrics)
        mlflow_run.log_artifact(metrics_path)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--generated", type=Path, required=True, help="generate's folder: images/, manifest.jsonl")
    add(
        "--baseline",
        type=Path,
        nargs=2,
        required=True,
        metavar=("REAL", "HANDFUL"),
        help="the real and the draw's handful detector folders: annotate_with_baseline.annotator "
        "picks one",
    )
    add("--val", type=Path, required=True, help="real labelled YOLO folder to measure it on")
    add("--source-labels", type=Path, help="labels/ of the real images img2img started from")
    add("--corrections", type=Path, help="reviewed YOLO folder whose labels replace auto-labels")
    add("--out", type=Path, required=True, help="output YOLO folder")
    add("--metrics", type=Path, required=True, help="metrics JSON")
    args = parser.parse_args()
    run_stage(
        lambda params: run(
            params,
            args.generated,
            params.annotate_with_baseline.annotator_folder(*args.baseline),
            args.val,
            args.out,
            args.metrics,
            args.source_labels,
            args.corrections,
        )
    )


if __name__ == "__main__":
    main()
