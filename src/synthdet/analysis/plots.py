"""Image grids with boxes drawn, with PIL only (ultralytics' plotting may download a font)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from synthdet.core.data import Box, Sample, atomic_path

# One outline colour per class id (cycled), chosen to stand out against foliage and fruit.
BOX_COLOURS = ("#00e5ff", "#ffea00", "#ff00ff", "#ffffff", "#76ff03")


def draw_boxes(sample: Sample, size: int) -> Image.Image:
    """The sample's image scaled to `size` x `size` with its boxes outlined."""
    with Image.open(sample.image) as image:
        tile = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(tile)
    width = max(1, size // 96)
    for box in sample.boxes:
        draw.rectangle(
            box.xyxy(size, size), outline=BOX_COLOURS[box.class_id % len(BOX_COLOURS)], width=width
        )
    return tile


def box_grid(samples: Sequence[Sample], path: Path, cell: int = 128, gap: int = 2) -> None:
    """Write a near-square grid of `samples` (boxes drawn, each scaled to `cell` px) as PNG."""
    if not samples:
        raise ValueError(f"no images to put in the grid {path}")
    columns = math.ceil(math.sqrt(len(samples)))
    rows = math.ceil(len(samples) / columns)
    grid = Image.new("RGB", (columns * (cell + gap) - gap, rows * (cell + gap) - gap), "black")
    for index, sample in enumerate(samples):
        row, column = divmod(index, columns)
        grid.paste(draw_boxes(sample, cell), (column * (cell + gap), row * (cell + gap)))
    with atomic_path(Path(path)) as tmp:
        grid.save(tmp, format="PNG")


def comparison_grid(
    images: Sequence[Path],
    columns: Mapping[str, Sequence[Sequence[Box]]],
    path: Path,
    cell: int = 128,
    gap: int = 2,
    header: int = 16,
) -> None:
    """One row per image, one column per box set (e.g. ground truth, then each detector's boxes),
    each column titled; written as PNG."""
    if not images or not columns:
        raise ValueError(f"no images or box sets to put in the grid {path}")
    for title, boxes in columns.items():
        if len(boxes) != len(images):
            raise ValueError(f"column {title!r} has {len(boxes)} box sets for {len(images)} images")
    width = len(columns) * (cell + gap) - gap
    height = header + len(images) * (cell + gap) - gap
    grid = Image.new("RGB", (width, height), "black")
    draw = ImageDraw.Draw(grid)
    for column, (title, boxes) in enumerate(columns.items()):
        x = column * (cell + gap)
        draw.text((x + 2, 2), title[: cell // 6], fill="white")
        for row, image in enumerate(images):
            tile = draw_boxes(Sample(Path(image), tuple(boxes[row])), cell)
            grid.paste(tile, (x, header + row * (cell + gap)))
    with atomic_path(Path(path)) as tmp:
        grid.save(tmp, format="PNG")
