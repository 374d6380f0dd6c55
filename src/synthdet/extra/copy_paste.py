"""Box-level copy-paste composites: the cheap baseline the generated images must beat.

Simple Copy-Paste (Ghiasi et al. 2021, "Simple Copy-Paste is a Strong Data Augmentation Method
for Instance Segmentation", CVPR) pastes objects of one image onto another; the paper finds
plain pasting as good as blending. With boxes only (no masks) an object is its box's rectangle.
Each composite takes one labelled image as background (its boxes kept), pastes object crops cut
from the labelled images at their boxes, each resized by a factor drawn from `scale`, flipped
horizontally with probability 0.5 and placed uniformly inside the image, and drops every box
whose object is hidden by later crops by more than `max_occlusion` of its area (the paper drops
fully occluded objects). Boxes are known by construction, exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from synthdet.core.data import Box, DataError, Sample


@dataclass(frozen=True)
class Crop:
    pixels: np.ndarray  # (H, W, 3) uint8
    class_id: int


@dataclass(frozen=True)
class Composite:
    pixels: np.ndarray  # (H, W, 3) uint8
    boxes: tuple[Box, ...]  # YOLO boxes, normalised
    pasted: int  # crops pasted
    dropped: int  # boxes dropped as hidden


def _rgb(sample: Sample) -> np.ndarray:
    with Image.open(sample.image) as image:
        return np.asarray(image.convert("RGB"))


def object_crops(
    samples: Sequence[Sample], images: Sequence[np.ndarray] | None = None
) -> list[Crop]:
    """Every box of `samples` cut out of its image (boxes under 2 px a side are skipped);
    `images`: the samples' decoded RGB pixels, if already read."""
    crops = []
    for index, sample in enumerate(samples):
        pixels = images[index] if images is not None else _rgb(sample)
        height, width = pixels.shape[:2]
        for box in sample.boxes:
            x1, y1, x2, y2 = (round(v) for v in box.xyxy(width, height))
            if x2 - x1 >= 2 and y2 - y1 >= 2:
                crops.append(Crop(pixels[y1:y2, x1:x2].copy(), box.class_id))
    if not crops:
        raise DataError(
            "copy-paste: the handful's labels hold no box with at least 2 px a side, so there "
            "is no object to paste; check the labels of the handful images"
        )
    return crops


def composite(
    background: np.ndarray,
    boxes: Sequence[Box],
    crops: Sequence[Crop],
    rng: np.random.Generator,
    objects: int,
    scale: tuple[float, float],
    max_occlusion: float,
) -> Composite:
    """Paste `objects` crops drawn from `crops` onto `background` (H, W, 3) with its `boxes`."""
    pixels = background.copy()
    height, width = pixels.shape[:2]
    # the index (in `placed`) of the last crop pasted over each pixel (-1: none), so the share
    # of a box hidden by crops pasted after it is measured exactly
    owner = np.full((height, width), -1, dtype=np.int32)
    placed: list[tuple[int, int, int, int, int]] = []  # x1, y1, x2, y2, class id
    for box in boxes:
        x1, y1, x2, y2 = (round(v) for v in box.xyxy(width, height))
        placed.append((x1, y1, x2, y2, box.class_id))
    pasted = 0
    for index in rng.choice(len(crops), size=objects, replace=True):
        crop = crops[int(index)]
        factor = rng.uniform(*scale)
        crop_h, crop_w = crop.pixels.shape[:2]
        new_w = min(width, max(2, round(crop_w * factor)))
        new_h = min(height, max(2, round(crop_h * factor)))
        patch = Image.fromarray(crop.pixels).resize((new_w, new_h), Image.Resampling.BILINEAR)
        patch_pixels = np.asarray(patch)
        if rng.random() < 0.5:
            patch_pixels = patch_pixels[:, ::-1]
        x1 = int(rng.integers(0, width - new_w + 1))
        y1 = int(rng.integers(0, height - new_h + 1))
        pixels[y1 : y1 + new_h, x1 : x1 + new_w] = patch_pixels
        owner[y1 : y1 + new_h, x1 : x1 + new_w] = len(placed)
        placed.append((x1, y1, x1 + new_w, y1 + new_h, crop.class_id))
        pasted += 1
    kept, dropped = [], 0
    for index, (x1, y1, x2, y2, class_id) in enumerate(placed):
        area = max(1, (x2 - x1) * (y2 - y1))
        hidden = int((owner[y1:y2, x1:x2] > index).sum()) / area
        if hidden > max_occlusion:
            dropped += 1
            continue
        kept.append(
            Box(
                class_id,
                (x1 + x2) / 2 / width,
                (y1 + y2) / 2 / height,
                (x2 - x1) / width,
                (y2 - y1) / height,
            )
        )
    return Composite(pixels, tuple(kept), pasted, dropped)


def composites(
    samples: Sequence[Sample],
    count: int,
    seed: int,
    objects: int,
    scale: tuple[float, float],
    max_occlusion: float,
) -> list[tuple[str, Composite]]:
    """`count` composites of `samples` (backgrounds round-robin), each seeded by (seed, index)
    so one composite does not depend on how many are made. Returns (background stem, composite)."""
    if not samples:
        raise DataError("copy-paste: no labelled images to compose from")
    crops = object_crops(samples)
    made = []
    for index in range(count):
        sample = samples[index % len(samples)]
        rng = np.random.default_rng([seed, index])
        made.append(
            (
                sample.image.stem,
                composite(_rgb(sample), sample.boxes, crops, rng, objects, scale, max_occlusion),
            )
        )
    return made
