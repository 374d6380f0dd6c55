"""The shipped `builtin:orchard` checkpoint: never trained on an embedded photo, loadable as the
base stage loads it, and documented."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
import yaml

from synthdet.core.data import DataError, group_of, list_images
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


def tiny_params(folder, monkeypatch):
    """params.yaml with a tiny base model in `folder`, the working directory: the recipe reads
    params.yaml's base section for sizes and learning rates."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["shared"]["resolution"] = 32
    params["base"].update(
        vae_channels=[8, 16],
        unet_channels=[16, 32],
        text_hidden_size=32,
        text_layers=1,
        vae_crop=16,
        unet_crop=16,
        lr_warmup_steps=0,
        batch_size=2,
    )
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(folder)


def tiles(folder, count=2):
    from PIL import Image

    folder.mkdir()
    for number in range(count):
        colour = (40 * number, 120, 200 - 50 * number)
        Image.new("RGB", (200, 200), colour).save(folder / f"pool{number}_0.png")
    return folder


def test_the_recipe_continues_a_checkpoint_with_the_decoder_alone(tmp_path, monkeypatch):
    """A decoder run keeps the encoder, the UNet and the latent scale (the UNet's latents stay
    valid), appends its steps to loss.tsv and its run to the recipe and the card."""
    from safetensors.torch import load_file

    from synthdet import pretrain

    tiny_params(tmp_path, monkeypatch)
    pool, embedded = tiles(tmp_path / "pool"), tiles(tmp_path / "embedded", 0)
    first, second = tmp_path / "first", tmp_path / "second"
    pretrain.run(pool, embedded, first, {"vae": 2, "unet": 2, "decoder": 0}, save_every=10)
    pretrain.run(
        pool, embedded, second, {"vae": 0, "unet": 0, "decoder": 3}, 2, first, decoder_crop=16
    )
    before, after = (
        load_file(f / "vae/diffusion_pytorch_model.safetensors") for f in (first, second)
    )
    assert all(
        torch.equal(before[k], after[k])
        for k in before
        if not k.startswith(("decoder", "post_quant"))
    )
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder"))
    unets = [load_file(f / "unet/diffusion_pytorch_model.safetensors") for f in (first, second)]
    assert all(torch.equal(unets[0][k], unets[1][k]) for k in unets[0])
    scales = [
        json.loads((f / "vae/config.json").read_text())["scaling_factor"] for f in (first, second)
    ]
    assert scales[0] == scales[1]
    rows = [line.split("\t")[:2] for line in (second / "loss.tsv").read_text().splitlines()[1:]]
    phases = ["vae"] * 2 + ["unet"] * 2 + ["decoder"] * 3
    assert rows == [[str(step), phase] for step, phase in enumerate(phases, 1)]
    recipe = json.loads((second / "recipe.json").read_text())
    assert [r["steps"] for r in recipe] == [
        {"vae": 2, "unet": 2, "decoder": 0},
        {"vae": 0, "unet": 0, "decoder": 3},
    ]
    card = (second / "README.md").read_text()
    assert (
        f"--init {first} --decoder-steps 3 --decoder-crop 16" in card
        and "VAE 2, UNet 2, decoder 3" in card
    )


def test_the_recipe_refuses_to_retrain_an_encoder_or_continue_a_stranger(tmp_path, monkeypatch):
    from synthdet import pretrain

    tiny_params(tmp_path, monkeypatch)
    pool, embedded = tiles(tmp_path / "pool"), tiles(tmp_path / "embedded", 0)

    def attempt(vae: int, decoder: int, init, **options) -> None:
        steps = {"vae": vae, "unet": 0, "decoder": decoder}
        pretrain.run(pool, embedded, tmp_path / "out", steps, 10, init=init, **options)

    with pytest.raises(ParamsError, match="--vae-steps 5 with --init: retraining the encoder"):
        attempt(5, 0, CHECKPOINT)
    with pytest.raises(ParamsError, match="--decoder-crop 64 is above shared.resolution 32"):
        attempt(0, 1, CHECKPOINT)
    (tmp_path / "stranger").mkdir()
    with pytest.raises(DataError, match="no recipe.json and loss.tsv, so it is not a checkpoint"):
        attempt(0, 1, tmp_path / "stranger", decoder_crop=16)
    assert not (tmp_path / "out").exists()
