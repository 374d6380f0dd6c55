"""Detection quality: COCO mAP, the PR curve, precision/recall at a threshold, the spread over
seeds.

mAP comes from `torchmetrics.detection.MeanAveragePrecision` (pycocotools backend).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

from synthdet.core.data import DataError, Sample, verify_image

if TYPE_CHECKING:
    from synthdet.detectors.detection import Detections

# The PR curve is COCO's interpolated precision at this IoU threshold (the mAP@.5 curve), on
# torchmetrics' recall grid 0, 0.01, ..., 1, averaged over the classes that have boxes.
PR_CURVE_IOU = 0.5
# Precision and recall at a confidence threshold count a prediction as correct at this IoU.
MATCH_IOU = 0.5


@dataclass(frozen=True)
class DetectionMetrics:
    map50_95: float
    map50: float
    map75: float
    recall: tuple[float, ...]  # recall grid of the PR curve
    precision: tuple[float, ...]  # precision at PR_CURVE_IOU for each recall of the grid
    # mAP@[.5:.95] by COCO object size (box area in pixels of the original image: small < 32²,
    # medium < 96², large above); None when the images have no ground-truth box of that size
    map_small: float | None = None
    map_medium: float | None = None
    map_large: float | None = None


def target_boxes(sample: Sample) -> dict[str, Tensor]:
    """A labelled image as a torchmetrics target (pixel xyxy boxes)."""
    width, height = verify_image(sample.image)
    boxes = [box.xyxy(width, height) for box in sample.boxes]
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([box.class_id for box in sample.boxes], dtype=torch.int64),
    }


def predicted_boxes(detections: Detections) -> dict[str, Tensor]:
    """A detector's output for one image as a torchmetrics prediction."""
    return {
        "boxes": torch.as_tensor(detections.xyxy, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.as_tensor(detections.scores, dtype=torch.float32),
        "labels": torch.as_tensor(detections.class_ids, dtype=torch.int64),
    }


def detection_metrics(
    predictions: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]]
) -> DetectionMetrics:
    """COCO mAP@[.5:.95], mAP@.5, mAP@.75 and the precision-recall curve at IoU .5."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} images")
    if sum(len(target["labels"]) for target in targets) == 0:
        raise DataError("the evaluation images have no labelled boxes; mAP is undefined")
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", extended_summary=True)
    # COCO scores the 100 most confident detections per image; that cut is intended here.
    metric.warn_on_many_detections = False
    metric.update(list(predictions), list(targets))
    result = metric.compute()
    # precision: (IoU thresholds, recall thresholds, classes, area ranges, max detections);
    # area range 0 is "all", the last max-detections setting is the one mAP uses (100).
    iou_index = int(np.argmin(np.abs(np.array(metric.iou_thresholds) - PR_CURVE_IOU)))
    per_class = result["precision"][iou_index, :, :, 0, -1]
    has_boxes = (per_class >= 0).any(dim=0)  # -1 marks classes without ground truth
    precision = per_class[:, has_boxes].mean(dim=1)
    return DetectionMetrics(
        map50_95=float(result["map"]),
        map50=float(result["map_50"]),
        map75=float(result["map_75"]),
        recall=tuple(round(float(r), 6) for r in metric.rec_thresholds),
        precision=tuple(round(float(p), 6) for p in precision),
        map_small=_defined(result["map_small"]),
        map_medium=_defined(result["map_medium"]),
        map_large=_defined(result["map_large"]),
    )


def _defined(value: Tensor) -> float | None:
    # COCO writes -1 for "no ground truth in this range".
    return None if float(value) < 0 else float(value)


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float | None  # sample standard deviation (n - 1); None for a single value
    n: int


def spread(values: Sequence[float]) -> Spread:
    """Mean and sample standard deviation, e.g. of one variant's mAP over its seeds."""
    if not values:
        raise ValueError("no values to average")
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else None
    return Spread(float(array.mean()), std, len(array))


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float | None  # None when there is no prediction at all (0 / 0)
    recall: float
    true_positives: int
    false_positives: int
    false_negatives: int


def precision_recall(
    predictions: Sequence[dict[str, Tensor]],
    targets: Sequence[dict[str, Tensor]],
    iou_threshold: float = MATCH_IOU,
) -> PrecisionRecall:
    """Precision and recall of the predicted boxes as they are (cut at a confidence threshold).

    Greedy matching, per image and class, as COCO matches at one IoU threshold: predictions in
    descending score order each take the still unmatched target with the highest IoU, provided
    that IoU is >= `iou_threshold`; a target is matched at most once. Unmatched predictions are
    false positives, unmatched targets false negatives.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} images")
    if sum(len(target["labels"]) for target in targets) == 0:
        raise DataError("the evaluation images have no labelled boxes; recall is undefined")
    true_positives = predicted = expected = 0
    for prediction, target in zip(predictions, targets, strict=True):
        predicted += len(prediction["labels"])
        expected += len(target["labels"])
        for label in torch.unique(torch.cat([prediction["labels"], target["labels"]])):
            mine = prediction["labels"] == label
            order = torch.argsort(prediction["scores"][mine], descending=True, stable=True)
            iou = box_iou(
                prediction["boxes"][mine][order], target["boxes"][target["labels"] == label]
            )
            for row in iou:  # most confident prediction first
                if row.numel() == 0:
                    break
                best = int(row.argmax())
                if row[best] >= iou_threshold:
                    true_positives += 1
                    iou[:, best] = -1  # this target is taken
    return PrecisionRecall(
        precision=true_positives / predicted if predicted else None,
        recall=true_positives / expected,
        true_positives=true_positives,
        false_positives=predicted - true_positives,
        false_negatives=expected - true_positives,
    )
