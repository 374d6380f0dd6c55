"""mAP and PR curve through torchmetrics; FID with the Inception network shipped offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthdet.data import DataError
from synthdet.metrics import (
    FidInceptionFeatures,
    detection_metrics,
    frechet_inception_distance,
)


def boxes(rows: list[list[float]], scores: list[float] | None = None) -> dict[str, torch.Tensor]:
    entry = {
        "boxes": torch.tensor(rows, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.zeros(len(rows), dtype=torch.int64),
    }
    if scores is not None:
        entry["scores"] = torch.tensor(scores, dtype=torch.float32)
    return entry


TARGETS = [
    boxes([[10, 10, 40, 40], [50, 50, 90, 80]]),
    boxes([[0, 0, 30, 60]]),
]


def test_perfect_predictions_score_one() -> None:
    predictions = [
        boxes([[10, 10, 40, 40], [50, 50, 90, 80]], [0.9, 0.8]),
        boxes([[0, 0, 30, 60]], [0.7]),
    ]
    result = detection_metrics(predictions, TARGETS)
    assert (result.map50_95, result.map50, result.map75) == pytest.approx((1.0, 1.0, 1.0))
    assert len(result.recall) == len(result.precision) == 101
    assert result.precision == pytest.approx((1.0,) * 101)


def test_shifted_boxes_score_less() -> None:
    # Shifted by a quarter of their size: IoU 0.6, so they still count at .5 but not at .75.
    predictions = [
        boxes([[15, 10, 45, 40], [60, 50, 100, 80]], [0.9, 0.8]),
        boxes([[0, 15, 30, 75]], [0.7]),
    ]
    result = detection_metrics(predictions, TARGETS)
    assert result.map50 == pytest.approx(1.0)
    assert result.map75 == pytest.approx(0.0)
    assert 0 < result.map50_95 < 1


def test_missed_boxes_lower_the_pr_curve() -> None:
    predictions = [boxes([[10, 10, 40, 40]], [0.9]), boxes([], [])]
    result = detection_metrics(predictions, TARGETS)
    assert result.map50 < 1
    assert result.precision[-1] == 0  # recall 1 is never reached


def write_images(folder: Path, count: int, size: int, seed: int, mean: int) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        pixels = np.clip(rng.normal(mean, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"{index:05d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def inception() -> FidInceptionFeatures:
    return FidInceptionFeatures()


def test_inception_features_take_uint8_images_of_any_size(inception: FidInceptionFeatures) -> None:
    features = inception(torch.randint(0, 256, (2, 3, 48, 80), dtype=torch.uint8))
    assert features.shape == (2, inception.num_features)
    with pytest.raises(ValueError, match="uint8"):
        inception(torch.rand(1, 3, 64, 64))


# torchmetrics' FID takes the eigenvalues of a 2048x2048 matrix per computation (~20 s on 2 CPU
# cores), so the fast suite computes one FID and the comparison of two is marked slow.
def test_fid_runs_offline_with_the_shipped_inception(
    tmp_path: Path, inception: FidInceptionFeatures
) -> None:
    real = write_images(tmp_path / "real", 4, 96, seed=0, mean=90)
    generated = write_images(tmp_path / "generated", 3, 64, seed=1, mean=170)
    fid = frechet_inception_distance(real, generated, features=inception)
    assert fid > 0


@pytest.mark.slow
def test_fid_separates_image_sets(tmp_path: Path, inception: FidInceptionFeatures) -> None:
    real = write_images(tmp_path / "real", 4, 96, seed=0, mean=90)
    generated = write_images(tmp_path / "generated", 4, 64, seed=1, mean=170)
    same = frechet_inception_distance(real, real, features=inception)
    different = frechet_inception_distance(real, generated, features=inception)
    assert abs(same) < 1.0
    assert different > 10 * max(abs(same), 1.0)


def test_fid_needs_two_images_per_set(tmp_path: Path) -> None:
    (one,) = write_images(tmp_path / "one", 1, 32, seed=0, mean=90)
    with pytest.raises(DataError, match="at least 2 generated"):
        frechet_inception_distance([one, one], [one], features=torch.nn.Identity())
