"""Object-level fidelity: crops of the generated boxes against the handful's and real val's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthdet.core.data import Box, DataError, Sample
from synthdet.image_checks import fidelity
from synthdet.image_checks.metrics import FidInceptionFeatures
from synthdet.stages import check_images
from tests.conftest import load_test_params

SIZE = 32
GREEN = (40, 160, 40)
RED = (160, 40, 40)  # GREEN with its hue turned by 120 degrees (same HSV saturation and value)


def scene(path: Path, corners: list[tuple[int, int]], colour: tuple[int, int, int], seed: int):
    """Grey noise with noisy 8-px squares of `colour` at `corners`: the 'objects'."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 130, (SIZE, SIZE, 3))
    boxes = []
    for x, y in corners:
        pixels[y : y + 8, x : x + 8] = np.array(colour) + rng.integers(-15, 15, (8, 8, 3))
        boxes.append(Box(0, (x + 4) / SIZE, (y + 4) / SIZE, 8 / SIZE, 8 / SIZE))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return Sample(path, tuple(boxes))


def corners(rng: np.random.Generator) -> list[tuple[int, int]]:
    return [(int(rng.integers(0, 8)), int(rng.integers(0, 24))), (20, int(rng.integers(0, 24)))]


@pytest.fixture(scope="module")
def inception() -> FidInceptionFeatures:
    return FidInceptionFeatures()


@pytest.fixture
def world(tmp_path: Path) -> dict:
    """A handful of 4 train images, 4 real val images and a generated folder whose 8 images
    (2 per source) keep their source's layout; `make(colour)` writes the generated images."""
    rng = np.random.default_rng(0)
    train = [scene(tmp_path / "train" / f"t{i}.png", corners(rng), GREEN, i) for i in range(4)]
    val = [scene(tmp_path / "val" / f"v{i}.png", corners(rng), GREEN, 10 + i) for i in range(4)]
    generated_dir = tmp_path / "generated"

    def make(colour: tuple[int, int, int]) -> list[Path]:
        rows, paths = [], []
        for i in range(8):
            source = train[i % 4]
            layout = [(round(b.cx * SIZE) - 4, round(b.cy * SIZE) - 4) for b in source.boxes]
            path = generated_dir / "images" / f"g{i}.png"
            paths.append(scene(path, layout, colour, 100 + i).image)
            rows.append({"file": path.name, "source": source.image.name})
        (generated_dir / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return paths

    return {"train": train, "val": val, "dir": generated_dir, "make": make}


def test_lab_of_reference_colours() -> None:
    # sRGB white and primaries in CIE L*a*b* (D65), as tabulated by colour-science tools
    lab = fidelity.srgb_to_lab(np.array([[255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 0]]))
    assert lab[0] == pytest.approx([100, 0, 0], abs=0.01)
    assert lab[1] == pytest.approx([53.24, 80.09, 67.20], abs=0.05)
    assert lab[2] == pytest.approx([87.73, -86.18, 83.18], abs=0.05)
    assert lab[3] == pytest.approx([0, 0, 0], abs=0.01)


def test_generated_boxes_are_their_sources_boxes(world: dict) -> None:
    generated = world["make"](GREEN)
    with_boxes, sources = fidelity.generated_samples(generated, world["dir"], world["train"])
    assert [s.image.name for s in sources] == ["t0.png", "t1.png", "t2.png", "t3.png"]
    assert with_boxes[5].image == generated[5] and with_boxes[5].boxes == world["train"][1].boxes
    crops = fidelity.object_crops(with_boxes, SIZE)
    assert len(crops.crops) == 16 and crops.lab.shape == (16, 3)
    assert all(crop.size == (fidelity.CROP_SIDE,) * 2 for crop in crops.crops)
    assert (crops.lab[:, 1] < -20).all()  # every crop is a green square: a* well below 0


def test_a_source_outside_train_is_an_error(world: dict) -> None:
    generated = world["make"](GREEN)
    with pytest.raises(DataError, match="g0.png was made from t0.png"):
        fidelity.generated_samples(generated, world["dir"], world["train"][1:])


def test_hue_shifted_objects_drift_and_the_same_colours_do_not(
    world: dict, inception: FidInceptionFeatures, capsys: pytest.CaptureFixture
) -> None:
    train, val = world["train"], world["val"]
    img2img = dataclasses.replace(load_test_params().generate, mode="img2img", vae_residual=False)
    same = check_images.object_metrics(
        world["make"](GREEN), world["dir"], train, val, inception, 0, generate=img2img
    )
    assert same["objects.valid"] == 1 and same["objects.drift"] == 0
    assert same["objects.generated_crops"] == 16 and same["objects.handful_crops"] == 8
    assert abs(same["objects.a_shift_z"]) < fidelity.DRIFT_Z
    assert same["objects.kid_subset_size"] == 4  # half of the 8 crops of the smallest set
    assert "warning" not in capsys.readouterr().err

    shifted = check_images.object_metrics(
        world["make"](RED), world["dir"], train, val, inception, 0, generate=img2img
    )
    assert shifted["objects.drift"] == 1
    assert shifted["objects.a_shift_z"] > 5  # far to the red side, in val standard deviations
    assert "a*" in shifted["objects.drift_reason"]
    assert shifted["objects.kid_generated_vs_handful"] > same["objects.kid_generated_vs_handful"]
    assert shifted["objects.kid_val_vs_handful"] == same["objects.kid_val_vs_handful"]
    warning = capsys.readouterr().err
    assert "warning: check-images: the generated objects drift" in warning
    # img2img without vae_residual: the measured cause (the VAE's round trip) and its fixes
    for key in ("-S generate.vae_residual=true", "base.vae_steps"):
        assert key in warning
    txt2img = dataclasses.replace(img2img, mode="txt2img")
    check_images.object_metrics(
        world["make"](RED), world["dir"], train, val, inception, 0, generate=txt2img
    )
    warning = capsys.readouterr().err
    assert "vae_residual" not in warning
    for key in ("base.init", "base.vae_steps", "personalize.max_train_steps"):
        assert key in warning


def test_without_source_boxes_the_check_says_why(
    world: dict, inception: FidInceptionFeatures, capsys: pytest.CaptureFixture
) -> None:
    generated = world["make"](GREEN)
    rows = [{"file": p.name, "source": None} for p in generated]  # txt2img: no source
    (world["dir"] / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = check_images.object_metrics(
        generated,
        world["dir"],
        world["train"],
        world["val"],
        inception,
        0,
        generate=load_test_params().generate,
    )
    assert set(summary) == {"objects.valid", "objects.invalid_reason"}  # no number at all
    assert summary["objects.valid"] == 0
    assert "txt2img" in summary["objects.invalid_reason"]
    assert "object check did not run" in capsys.readouterr().err
