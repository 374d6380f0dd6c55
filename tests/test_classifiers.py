"""The two classifier checks of the generated images (timm, from scratch, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from synthdet.core.data import Box, Sample, format_label
from synthdet.image_checks import classifiers
from synthdet.params import ParamsError

MODEL = "test_resnet"


def noise_images(folder: Path, count: int, seed: int, green: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 60, (32, 32, 3))
        pixels[..., 1] += green
        paths.append(folder / f"{index:03d}.png")
        Image.fromarray(pixels.astype(np.uint8)).save(paths[-1])
    return paths


def test_two_sample_test_separates_different_sets_and_not_equal_ones(tmp_path: Path) -> None:
    real = noise_images(tmp_path / "real", 10, seed=0, green=80)
    other = noise_images(tmp_path / "other", 10, seed=1, green=180)
    same = noise_images(tmp_path / "same", 10, seed=2, green=80)
    different = classifiers.two_sample_test(real, other, MODEL, 16, 30, 2, seed=0)
    assert different.tested == 20 and different.folds == 2
    assert different.accuracy >= 0.9 and different.p_value < 0.01
    assert different.train_accuracy >= 0.9
    assert different.valid and different.summary()["valid"] == 1
    alike = classifiers.two_sample_test(real, same, MODEL, 16, 30, 2, seed=0)
    assert alike.accuracy <= 0.75 and alike.p_value > 0.01
    # equal numbers of each: the larger set is subsampled
    assert classifiers.two_sample_test(real, other[:6], MODEL, 16, 1, 2, seed=0).tested == 12


def scene(path: Path, apples: list[tuple[int, int]], size: int = 64) -> Sample:
    """Green noise with red 8-px 'apples' at the given corners."""
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    pixels = rng.integers(0, 50, (size, size, 3))
    pixels[..., 1] += 100
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    boxes = []
    for x, y in apples:
        draw.ellipse((x, y, x + 7, y + 7), fill=(220, 30, 30))
        boxes.append(Box(0, (x + 4) / size, (y + 4) / size, 8 / size, 8 / size))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return Sample(path, tuple(boxes))


def test_subject_check_finds_the_subject_only_where_it_is(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def apples(count: int) -> list[tuple[int, int]]:
        return [tuple(int(v) for v in rng.integers(0, 56, 2)) for _ in range(count)]

    train = [scene(tmp_path / "train" / f"t{i}.png", apples(2)) for i in range(20)]
    with_subject = [scene(tmp_path / "gen" / f"a{i}.png", apples(1)).image for i in range(6)]
    # as the reference: real images without any apple
    without = [scene(tmp_path / "val" / f"b{i}.png", []) for i in range(6)]
    result = classifiers.subject_check(train, without, with_subject, MODEL, 16, 30, seed=0)
    assert result.scale == 64 and result.generated_images == 6 and result.reference_images == 6
    assert result.window == pytest.approx(0.25)  # 2 x the 8-px boxes on 64 px
    assert result.crop_accuracy >= 0.9
    assert result.generated_share == 1.0  # every image with an apple is found
    assert result.reference_share <= 1 / 6  # the images without one are not
    assert result.valid and result.crop_p_value < classifiers.ALPHA
    assert result.summary()["valid"] == 1 and result.summary()["invalid_reason"] is None


def test_subject_check_at_chance_is_invalid_with_null_shares(tmp_path: Path) -> None:
    # boxes on plain noise, with nothing drawn in them: subject and background crops are the same
    # kind of picture, so no classifier can beat chance on held-out crops
    rng = np.random.default_rng(1)
    train = []
    for i in range(20):
        empty = scene(tmp_path / "train" / f"t{i}.png", [])
        corners = [tuple(int(v) for v in rng.integers(0, 56, 2)) for _ in range(2)]
        boxes = tuple(Box(0, (x + 4) / 64, (y + 4) / 64, 8 / 64, 8 / 64) for x, y in corners)
        train.append(Sample(empty.image, boxes))
    generated = [scene(tmp_path / "gen" / f"g{i}.png", []).image for i in range(3)]
    val = [scene(tmp_path / "val" / f"v{i}.png", []) for i in range(3)]
    result = classifiers.subject_check(train, val, generated, MODEL, 16, 5, seed=0)
    summary = result.summary()
    assert summary["valid"] == 0 and not result.valid
    assert "chance" in result.invalid_reason or "background" in result.invalid_reason
    assert summary["invalid_reason"] == result.invalid_reason
    assert summary["generated_share"] is None and summary["reference_share"] is None
    assert summary["crop_tested"] > 0


def test_subject_invalid_reason_names_each_cause() -> None:
    assert classifiers.subject_invalid_reason(30, 30, 0.0) is None
    assert "no held-out crop" in classifiers.subject_invalid_reason(0, 0, None)
    # 14 of 30: one-sided binomial p = 0.71
    assert "does not beat chance" in classifiers.subject_invalid_reason(14, 30, 0.2)
    background = classifiers.subject_invalid_reason(25, 30, 0.5)
    assert "background" in background and "chance" not in background
    # 4 of 4 right is still p = 1/16 >= 0.05: too few crops to show anything
    assert "p = 0.062" in classifiers.subject_invalid_reason(4, 4, 0.0)


def test_two_sample_test_that_cannot_fit_is_invalid(tmp_path: Path) -> None:
    # the same images labelled real and generated: each pair trains together with both labels,
    # so no network can fit its training images above 0.5
    real = noise_images(tmp_path / "real", 8, seed=0, green=80)
    result = classifiers.two_sample_test(real, real, MODEL, 16, 5, 2, seed=0)
    assert result.train_accuracy <= 0.5 and result.train_p_value >= classifiers.ALPHA
    assert not result.valid and "training images above chance" in result.invalid_reason
    assert result.summary()["valid"] == 0
    assert result.summary()["invalid_reason"] == result.invalid_reason


def test_unknown_classifier_names_the_key() -> None:
    with pytest.raises(ParamsError, match="'evaluate.classifier_model'"):
        classifiers.build_classifier("no_such_net")


def test_scan_windows_tile_the_image() -> None:
    image = Image.new("RGB", (64, 64))
    windows = classifiers.scan_windows(image, 0.25)
    assert len(windows) == 49 and all(w.size == (16, 16) for w in windows)  # stride 8 px
    assert len(classifiers.scan_windows(image, 0.3)) == 36  # 6 x 6, the stride a bit shorter


def test_background_crops_avoid_every_box(tmp_path: Path) -> None:
    import random

    samples = [scene(tmp_path / f"s{i}.png", [(8, 8), (40, 40)]) for i in range(3)]
    for sample in samples:
        (tmp_path / f"{sample.image.stem}.txt").write_text(format_label(sample.boxes))
    subject, background = classifiers.subject_crops(samples, 64, 0.25, random.Random(0))
    assert len(subject) == 6 and len(background) == 6
    for crop in subject:  # centred on an apple: red in the middle
        assert np.asarray(crop)[8, 8, 0] > 150
    for crop in background:  # no apple anywhere
        assert (np.asarray(crop)[..., 0] < 150).all()
