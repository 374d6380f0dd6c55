"""benchmarks/colour_shift.py: object pixels change hue, the background keeps its bytes."""

from __future__ import annotations

import colorsys
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("colour_shift", ROOT / "benchmarks/colour_shift.py")
colour_shift = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(colour_shift)

SIZE = 40
BOX = (10, 10, 30, 30)  # x0, y0, x1, y1 px: the object's box
RED, GREEN = (200, 30, 40), (40, 140, 50)


def _dataset(root: Path) -> np.ndarray:
    """A 40 px JPEG tile: noisy blue-grey background, a red disc in BOX with a green leaf pixel
    block inside the disc; its YOLO label, LICENSE and README. Returns the decoded pixels."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(60, 200, size=(SIZE, SIZE, 3), dtype=np.uint8)
    pixels[..., 2] = 220  # bluish, far from red
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    disc = (xs + 0.5 - 20) ** 2 + (ys + 0.5 - 20) ** 2 <= 8**2
    pixels[disc] = RED
    pixels[18:22, 12:15] = GREEN  # a leaf in front of the fruit, inside the ellipse
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(pixels).save(root / "images" / "tile_0.jpg", quality=95)
    x0, y0, x1, y1 = BOX
    label = (
        f"0 {(x0 + x1) / 2 / SIZE} {(y0 + y1) / 2 / SIZE} {(x1 - x0) / SIZE} {(y1 - y0) / SIZE}\n"
    )
    (root / "labels" / "tile_0.txt").write_text(label)
    (root / "LICENSE").write_text("CC BY 4.0\n")
    (root / "README.md").write_text("# tiles\n")
    return np.asarray(Image.open(root / "images" / "tile_0.jpg").convert("RGB"))


def _hue_degrees(rgb: np.ndarray) -> float:
    return colorsys.rgb_to_hsv(*(rgb / 255.0))[0] * 360.0


def test_objects_change_hue_background_keeps_its_bytes_labels_are_copied(tmp_path):
    source = _dataset(tmp_path / "raw")
    counts = colour_shift.colour_shift_dataset(tmp_path / "raw", tmp_path / "out", degrees=80)
    out = np.asarray(Image.open(tmp_path / "out" / "images" / "tile_0.png"))
    assert out.shape == source.shape and counts["images"] == 1 and counts["objects"] == 1

    x0, y0, x1, y1 = BOX
    outside = np.ones((SIZE, SIZE), dtype=bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], source[outside])  # every background pixel, byte for byte
    assert np.array_equal(out[y0, x0], source[y0, x0])  # box corner: outside the ellipse
    assert np.array_equal(out[19:21, 13], source[19:21, 13])  # the green leaf in the ellipse

    centre = source[20, 20].astype(float), out[20, 20].astype(float)
    turned = (_hue_degrees(centre[1]) - _hue_degrees(centre[0])) % 360
    assert 70 < turned < 90  # red -> yellow-green
    changed = np.any(out != source, axis=-1)
    assert counts["changed_pixels"] >= changed.sum() > 100  # the disc (~200 px) less the leaf

    assert (tmp_path / "out/labels/tile_0.txt").read_bytes() == (
        tmp_path / "raw/labels/tile_0.txt"
    ).read_bytes()
    assert (tmp_path / "out/LICENSE").read_text() == "CC BY 4.0\n"
    readme = (tmp_path / "out/README.md").read_text()
    assert "colour_shift.py --degrees 80" in readme and readme.endswith("# tiles\n")


def test_errors_name_the_file_and_the_fix(tmp_path):
    _dataset(tmp_path / "raw")
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="out exists; delete it"):
        colour_shift.colour_shift_dataset(tmp_path / "raw", tmp_path / "out")
    (tmp_path / "raw/labels/tile_0.txt").write_text("0 0.5 0.5\n")
    with pytest.raises(ValueError, match=r"tile_0.txt:1: expected 'class cx cy w h'"):
        colour_shift.colour_shift_dataset(tmp_path / "raw", tmp_path / "out2")
    with pytest.raises(FileNotFoundError, match="images: no such folder"):
        colour_shift.colour_shift_dataset(tmp_path / "nothing", tmp_path / "out3")
