"""The leakage guard: a generated image that copies a test image fails evaluation."""

import pytest
from PIL import Image

from synthdet.core.data import DataError, list_images
from synthdet.image_checks import metrics
from synthdet.stages.check_images import check_test_leakage
from tests.conftest import REPO


@pytest.fixture(scope="module")
def inception():
    return metrics.FidInceptionFeatures()


def downscaled(sources, folder, size=64):
    folder.mkdir()
    for source in sources:
        with Image.open(source) as image:
            image.resize((size, size), Image.Resampling.LANCZOS).save(folder / f"{source.stem}.png")
    return list_images(folder)


def real_tiles():
    tiles = list_images(REPO / "data/raw/images")
    by_photo = {}
    for tile in tiles:
        by_photo.setdefault(tile.stem.rsplit("_", 1)[0], []).append(tile)
    photos = sorted(by_photo)
    test = by_photo[photos[0]][:4]
    others = [by_photo[photo][0] for photo in photos[1:4]]
    return test, others


def test_planted_leak_is_caught(tmp_path, inception):
    test, others = real_tiles()
    generated = downscaled([*others, test[2]], tmp_path / "generated")
    with pytest.raises(DataError, match=rf"1 generated images are near-copies.*{test[2].stem}"):
        check_test_leakage(generated, test, 0.95, inception)


def test_distinct_images_pass(tmp_path, inception):
    test, others = real_tiles()
    generated = downscaled(others, tmp_path / "generated")
    similarity = check_test_leakage(generated, test, 0.95, inception)
    assert 0.0 < similarity < 0.95


def test_features_computed_once_give_the_same_guard(tmp_path, inception):
    # check-images passes the generated images' FID features (computed at their own size) to
    # the guard instead of computing them a second time: the similarities must not change.
    test, others = real_tiles()
    generated = downscaled([*others, test[1]], tmp_path / "generated")
    features = metrics.inception_features(generated, inception)
    assert check_test_leakage(generated, test[:1] + test[2:], 0.99, inception) == pytest.approx(
        check_test_leakage(generated, test[:1] + test[2:], 0.99, inception, features), abs=1e-6
    )
    with pytest.raises(DataError, match=rf"near-copies.*{test[1].stem}"):
        check_test_leakage(generated, test, 0.95, inception, features)
