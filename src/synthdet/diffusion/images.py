"""Real images at a model's size: shorter side resized, centre-cropped (the one implementation)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, crop left, crop top) of a `width` x `height` image whose
    shorter side is resized to `size` and which is then centre-cropped to `size` x `size`."""
    scale = size / min(width, height)
    resized_width = max(size, round(width * scale))
    resized_height = max(size, round(height * scale))
    return resized_width, resized_height, (resized_width - size) // 2, (resized_height - size) // 2


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (bicubic) and centre-crop: an RGB `size` x `size` image."""
    image = image.convert("RGB")
    width, height, left, top = crop_box(image.width, image.height, size)
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    return image.crop((left, top, left + size, top + size))


def load_images(paths: Sequence[Path], resolution: int) -> torch.Tensor:
    """Images resized (shorter side) and centre-cropped to `resolution`, as floats in [-1, 1]."""
    tensors = []
    for path in paths:
        with Image.open(path) as opened:
            image = fit_square(opened, resolution)
        array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
        tensors.append(array.permute(2, 0, 1) / 127.5 - 1)
    return torch.stack(tensors)


def with_flips(images: torch.Tensor) -> torch.Tensor:
    """The images followed by their mirror images: the random-flip augmentation, precomputed."""
    return torch.cat([images, torch.flip(images, dims=[3])])
