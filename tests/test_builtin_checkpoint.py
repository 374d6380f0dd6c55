"""The shipped `builtin:orchard` checkpoint: never trained on an embedded photo, loadable as the
base stage loads it, and documented."""

from __future__ import annotations

import dataclasses
import re

import pytest

from synthdet.data import group_of, list_images
from synthdet.diffusion.builtin import load_checkpoint
from synthdet.params import ParamsError, load_params
from tests.conftest import REPO

CHECKPOINT = REPO / "models/builtin/orchard"


def embedded_photos() -> set[str]:
    pattern = re.compile(load_params(REPO / "params.yaml").prepare.group_pattern)
    return {group_of(p.stem, pattern) for p in list_images(REPO / "data/raw/images")}


def test_no_embedded_photo_reached_the_checkpoint():
    """Train, val and test of the default run are all embedded photos: none was pretrained on."""
    trained = set((CHECKPOINT / "photos.txt").read_text().split())
    excluded = set((CHECKPOINT / "excluded_photos.txt").read_text().split())
    assert trained and not trained & embedded_photos()
    assert excluded == embedded_photos()


def test_pool_images_never_include_an_excluded_photo(tmp_path):
    from synthdet.pretrain import pool_images

    (tmp_path / "pool").mkdir()
    (tmp_path / "embedded").mkdir()
    for name in ("a_0.jpg", "a_1.jpg", "b_0.jpg", "c_3.png"):
        (tmp_path / "pool" / name).write_bytes(b"")
    (tmp_path / "embedded" / "a_7.jpg").write_bytes(b"")
    kept, excluded = pool_images(tmp_path / "pool", tmp_path / "embedded", r"(.+)_\d+")
    assert [p.name for p in kept] == ["b_0.jpg", "c_3.png"] and excluded == {"a"}


def test_checkpoint_loads_with_the_default_base_sizes_and_card_is_complete():
    base = load_params(REPO / "params.yaml").base
    pipeline = load_checkpoint("builtin:orchard", REPO / "models/builtin", base)
    assert pipeline.vae.config.scaling_factor > 0
    card = (CHECKPOINT / "README.md").read_text()
    for needed in ("CC BY 4.0", "excluded_photos.txt", "Wall time", "loss.tsv", "Recipe"):
        assert needed in card
    size = sum(p.stat().st_size for p in CHECKPOINT.rglob("*") if p.is_file())
    assert size <= 40 * 2**20
    assert not list(CHECKPOINT.rglob("*.bin")), "weights are safetensors only"


def test_checkpoint_with_other_sizes_is_refused_naming_the_keys():
    base = load_params(REPO / "params.yaml").base
    other = dataclasses.replace(base, unet_channels=(16, 32, 32))
    with pytest.raises(ParamsError, match=r"base.unet_channels=\(16, 32, 32\) \(checkpoint: "):
        load_checkpoint("builtin:orchard", REPO / "models/builtin", other)
