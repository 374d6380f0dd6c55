"""Copy-paste composites: pasted boxes match their pixels, hidden objects lose their box."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthdet.core.data import Box, DataError, Sample
from synthdet.extra import copy_paste


def test_a_pasted_objects_box_matches_its_pixels() -> None:
    red = copy_paste.Crop(np.full((6, 10, 3), (255, 0, 0), dtype=np.uint8), class_id=0)
    background = np.zeros((64, 64, 3), dtype=np.uint8)
    rng = np.random.default_rng(0)
    result = copy_paste.composite(background, (), [red], rng, 3, (1.0, 1.0), 0.99)
    assert result.pasted == 3
    red_pixels = (result.pixels == (255, 0, 0)).all(axis=2)
    covered = np.zeros_like(red_pixels)
    for box in result.boxes:
        x1, y1, x2, y2 = (round(v) for v in box.xyxy(64, 64))
        assert (x2 - x1, y2 - y1) == (10, 6)  # scale 1: the crop's own size
        assert red_pixels[y1:y2, x1:x2].any()  # the box lies on the pasted pixels
        covered[y1:y2, x1:x2] = True
    assert (red_pixels == covered).all()  # and every pasted pixel lies in a box


def test_a_hidden_background_object_is_dropped_and_a_visible_one_kept() -> None:
    background = np.zeros((20, 20, 3), dtype=np.uint8)
    boxes = (Box(0, 0.25, 0.25, 0.2, 0.2), Box(0, 0.75, 0.75, 0.2, 0.2))  # 4x4 px each
    big = copy_paste.Crop(np.full((12, 12, 3), 255, dtype=np.uint8), class_id=0)

    class Fixed:  # the crop lands at the top-left corner, over the first box only
        def choice(self, n, size, replace):
            return np.zeros(size, dtype=int)

        def uniform(self, low, high):
            return 1.0

        def random(self):
            return 0.9

        def integers(self, low, high):
            return 0

    result = copy_paste.composite(background, boxes, [big], Fixed(), 1, (1.0, 1.0), 0.7)
    assert result.dropped == 1
    assert Box(0, 0.75, 0.75, 0.2, 0.2) in result.boxes and len(result.boxes) == 2


def test_composites_are_seeded_per_image_and_need_a_box(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(np.full((32, 32, 3), 40, dtype=np.uint8)).save(image)
    sample = Sample(image, (Box(0, 0.5, 0.5, 0.25, 0.25),))
    few = copy_paste.composites([sample], 2, 7, 2, (0.8, 1.2), 0.7)
    more = copy_paste.composites([sample], 3, 7, 2, (0.8, 1.2), 0.7)
    assert all((a.pixels == b.pixels).all() for (_, a), (_, b) in zip(few, more, strict=False))
    with pytest.raises(DataError, match="no box"):
        copy_paste.composites([Sample(image, ())], 1, 7, 2, (1.0, 1.0), 0.7)


def test_the_stage_writes_a_yolo_folder_of_composites(params, tmp_path: Path) -> None:
    import dataclasses

    from synthdet.core.data import read_yolo_folder
    from synthdet.stages import copy_paste as stage
    from tests.conftest import write_tiny_yolo_folder

    handful = tmp_path / "personalize"
    write_tiny_yolo_folder(handful / "apple_tree", photos=2, tiles=2)
    few_shot = dataclasses.replace(params.few_shot, extra_images=5)
    metrics = stage.run(
        dataclasses.replace(params, few_shot=few_shot),
        handful,
        tmp_path / "copy-paste",
        tmp_path / "copy_paste.json",
    )
    written = read_yolo_folder(tmp_path / "copy-paste", 1)
    assert len(written) == metrics["images"] == 5
    assert sum(len(s.boxes) for s in written) == metrics["boxes"] > 0
    # the handful's own boxes stay (4 images, backgrounds round-robin) next to the pasted ones
    assert metrics["pasted"] == 5 * params.few_shot.copy_paste.objects_per_image
