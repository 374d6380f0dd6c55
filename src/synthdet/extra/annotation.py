"""Labelling the generated images with the real-data detector (the annotate-with-baseline stage).

The labels form a complete YOLO folder (images copied, one label file per image, empty when the
baseline found nothing), so the synthetic images can be trained on like real ones, and the same
labels as COCO JSON (`annotations.json`, file names relative to `images/`) for review in CVAT or
Label Studio.

Before its labels are trusted, the annotator is measured on the real val split with exactly the
settings it labels with (`confidence`, `iou`, train_detector's `imgsz`):
`annotator.precision` / `.recall` count the boxes it keeps, matched greedily at IoU 0.5
(`metrics.precision_recall`); `annotator.map50` / `.map50_95` are COCO mAP of those same boxes,
so they are lower than the evaluate stage's mAP of this detector, which ranks boxes down to a
confidence of 0.001.

Two further label sources:

- `source_boxes` (img2img / ControlNet): the real boxes of the train image a generated image was
  made from (manifest `source`) are merged with the baseline's boxes (`source_proposals`).
- Reviewed labels: a YOLO folder (default `data/corrections`: images/ + labels/, e.g. Label
  Studio's YOLO export of `annotations.json` after review) replaces the labels of every
  generated image whose bytes equal one of its images (`read_corrections`). Corrections that
  match no generated image are counted (`corrections_unused`), never applied to another image.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import batched_nms

from synthdet import formats
from synthdet.analysis import metrics
from synthdet.core.data import (
    Box,
    DataError,
    Sample,
    drop_duplicate_boxes,
    list_images,
    parse_label_file,
    read_jsonl,
    read_yolo_folder,
    write_json,
)
from synthdet.detectors import detection
from synthdet.diffusion.hashing import sha256_of
from synthdet.params import AnnotateParams, Params


def generated_images(generated_dir: Path) -> list[Path]:
    """The images of generate's folder (`images/`); none is an error."""
    images_dir = Path(generated_dir) / "images"
    images = list_images(images_dir) if images_dir.is_dir() else []
    if not images:
        raise DataError(f"{images_dir}: no images to annotate (run the generate stage first)")
    return images


def annotator_quality(detector: Any, val_dir: Path, params: Params) -> dict[str, float | None]:
    """Precision, recall and mAP of `detector` on a real labelled folder, at the labelling
    settings; flat `annotator.*` keys."""
    config = params.annotate_with_baseline
    samples = read_yolo_folder(val_dir, len(params.shared.class_names))
    found = detection.predict(
        detector,
        [s.image for s in samples],
        params.train_detector.imgsz,
        config.confidence,
        config.iou,
    )
    predictions = [metrics.predicted_boxes(image) for image in found]
    targets = [metrics.target_boxes(sample) for sample in samples]
    scores = [score for image in found for _, score in image.yolo_boxes()]
    counts = metrics.precision_recall(predictions, targets)
    ranked = metrics.detection_metrics(predictions, targets)
    return {
        "annotator.precision": None if counts.precision is None else round(counts.precision, 6),
        "annotator.recall": round(counts.recall, 6),
        "annotator.map50": round(ranked.map50, 6),
        "annotator.map50_95": round(ranked.map50_95, 6),
        "annotator.val_images": len(samples),
        "annotator.val_boxes": counts.true_positives + counts.false_negatives,
        # the same annotator at the same confidence on real images: what boxes_per_image and
        # mean_confidence of the generated images are to be read against
        "annotator.val_boxes_per_image": round(len(scores) / max(1, len(samples)), 6),
        "annotator.val_mean_confidence": round(statistics.fmean(scores), 6) if scores else None,
    }


def source_proposals(
    detections: list[detection.Detections],
    manifest: Path,
    source_labels: Path,
    config: AnnotateParams,
    num_classes: int,
) -> tuple[list[detection.Detections], dict[str, int]]:
    """Merge each generated image's source boxes into the baseline's detections.

    img2img and ControlNet start from a real train image (manifest `source`); its real boxes,
    read from `source_labels/<stem>.txt` in the image's normalised coordinates, are offered with
    score `source_box_confidence` next to the baseline's boxes, and class-wise NMS at `merge_iou`
    keeps the higher-scoring box of each overlapping pair. Images without a source (txt2img) keep
    the baseline's boxes.
    """
    rows = {row.get("file"): row for row in read_jsonl(manifest)} if manifest.is_file() else {}
    merged, offered, kept, with_source = [], 0, 0, 0
    for found in detections:
        source = rows.get(found.image.name, {}).get("source")
        if not source:
            merged.append(found)
            continue
        label = Path(source_labels) / f"{Path(source).stem}.txt"
        if not label.is_file():
            raise DataError(
                f"{manifest}: {found.image.name} was made from {source}, which has no label file "
                f"{label} (annotate_with_baseline.source_boxes)"
            )
        source_boxes = parse_label_file(label, num_classes)
        real = [box.xyxy(found.width, found.height) for box in source_boxes]
        classes = [box.class_id for box in source_boxes]
        with_source += 1
        offered += len(real)
        boxes = torch.cat(
            [
                torch.as_tensor(found.xyxy, dtype=torch.float64).reshape(-1, 4),
                torch.tensor(real, dtype=torch.float64).reshape(-1, 4),
            ]
        )
        scores = torch.cat(
            [
                torch.as_tensor(found.scores, dtype=torch.float64),
                torch.full((len(real),), config.source_box_confidence, dtype=torch.float64),
            ]
        )
        labels = torch.cat(
            [
                torch.as_tensor(found.class_ids, dtype=torch.int64),
                torch.tensor(classes, dtype=torch.int64),
            ]
        )
        keep = batched_nms(boxes.float(), scores.float(), labels, config.merge_iou)
        keep = keep.sort().values  # the baseline's boxes first, in their order
        kept += int((keep >= len(found.scores)).sum())
        merged.append(
            dataclasses.replace(
                found,
                xyxy=boxes[keep].numpy(),
                scores=scores[keep].numpy(),
                class_ids=labels[keep].numpy(),
            )
        )
    counts = {
        "source_images": with_source,
        "source_boxes_offered": offered,
        "source_boxes_kept": kept,
    }
    return merged, counts


def read_corrections(corrections: Path | None, num_classes: int) -> dict[str, tuple[Box, ...]]:
    """{sha256 of an image: its corrected boxes} from a reviewed YOLO folder (images/ + labels/).

    A correction applies to the generated image with exactly the same bytes, whatever its name,
    so a label reviewed for one image never lands on a regenerated, different one.
    """
    if corrections is None or not (Path(corrections) / "images").is_dir():
        return {}
    if not list_images(Path(corrections) / "images"):
        return {}
    return {
        sha256_of(sample.image): sample.boxes
        for sample in read_yolo_folder(Path(corrections), num_classes)
    }


def write_labelled_folder(
    detections: Sequence[detection.Detections],
    corrected: dict[str, tuple[Box, ...]],
    out_dir: Path,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Write the labelled YOLO folder and its `annotations.json` to `out_dir`, atomically: each
    image's reviewed boxes if `corrected` holds its bytes, else its detections without exact
    duplicates. Returns the counts of annotate's metrics file."""
    boxes_per_image, confidences = [], []
    duplicates: Counter = Counter()
    labelled, used_corrections = [], set()
    with formats.new_yolo_folder(Path(out_dir)) as folder:
        for found in detections:
            digest = sha256_of(found.image)
            if digest in corrected:
                used_corrections.add(digest)
                boxes = corrected[digest]
            else:
                scored = found.yolo_boxes()
                boxes = drop_duplicate_boxes((box for box, _ in scored), duplicates)
                confidences.extend(score for _, score in scored)
            labelled.append(Sample(folder.add(found.image.name, found.image, boxes), boxes))
            boxes_per_image.append(len(boxes))
        coco = formats.coco_dict(labelled, class_names, folder.root / "images")
        write_json(folder.root / "annotations.json", coco)
    return {
        "images": len(boxes_per_image),
        "boxes": sum(boxes_per_image),
        "images_without_boxes": boxes_per_image.count(0),
        "boxes_per_image": round(statistics.fmean(boxes_per_image), 6),
        # undefined (null) when the baseline found nothing at annotate_with_baseline.confidence
        "mean_confidence": round(statistics.fmean(confidences), 6) if confidences else None,
        "corrected_images": len(used_corrections),
        "corrections_unused": len(set(corrected) - used_corrections),
        # boxes identical to another of the same image once written (6 decimals)
        "duplicate_boxes_dropped": duplicates["duplicate_boxes"],
        # no box in any image: the synthetic variant would learn only "nothing to find"
        "empty_label_set": sum(boxes_per_image) == 0,
    }


def empty_labels_warning(images: int, config: AnnotateParams) -> str:
    return (
        f"annotate-with-baseline labelled no box in any of the {images} generated images "
        f"(annotate_with_baseline.confidence={config.confidence}): the synthetic variant trains "
        "on background only, and metrics/draws/draw<d>/annotate.json says empty_label_set: "
        "true. Lower annotate_with_baseline.confidence, label by construction with "
        "generate.mode=img2img and annotate_with_baseline.source_boxes=true, or look at the images "
        "(metrics/synthetic_grid.png)."
    )
