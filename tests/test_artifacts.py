"""Typed artifacts and registries: the files between stages keep their format, every choice has
one entry."""

import hashlib
import json

import numpy as np
import pytest

from synthdet.artifacts.adapter import ADAPTER_INFO, AdapterInfo
from synthdet.artifacts.class_images import CLASS_IMAGES_INFO, ClassImagesInfo
from synthdet.artifacts.manifest import MANIFEST, ManifestRow, read_manifest, write_manifest
from synthdet.core.data import DataError
from synthdet.diffusion.hashing import derive_seed, files_sha256
from synthdet.params import methods
from synthdet.params.diffusion import PERSONALIZE_METHODS


def adapter_info(folder, **changes) -> AdapterInfo:
    (folder / "weights.safetensors").write_bytes(b"weights")
    fields = dict(
        subject="apple_tree",
        identifier="sks",
        class_noun="apple tree",
        instance_prompt="a photo of sks apple tree",
        method="lora",
        family="sd",
        pipeline_class="StableDiffusionPipeline",
        base_model="builtin:tiny",
        base_fingerprint="f" * 64,
        vae=None,
        weight_files=["weights.safetensors"],
        sha256=files_sha256(folder, ["weights.safetensors"]),
        resolution=64,
        max_train_steps=2,
        train_text_encoder=False,
        lora={"r": 4},
        textual_inversion=None,
        seed=42,
        prior={"prior_preservation": False},
    )
    return AdapterInfo(**{**fields, **changes})


def test_adapter_info_round_trip_keeps_the_flat_json(tmp_path):
    info = adapter_info(tmp_path)
    info.write(tmp_path)
    raw = json.loads((tmp_path / ADAPTER_INFO).read_text())
    assert raw["prior_preservation"] is False and "prior" not in raw
    assert AdapterInfo.read(tmp_path) == info
    with pytest.raises(DataError, match="personalize.base_model is 'other'"):
        info.check_base(tmp_path, "other")
    (tmp_path / "weights.safetensors").write_bytes(b"tampered")
    with pytest.raises(DataError, match="sha256"):
        AdapterInfo.read(tmp_path)


def test_class_images_info_round_trip_and_staleness(tmp_path):
    info = ClassImagesInfo("apple tree", "a photo of apple tree", 2, "builtin:tiny", None)
    info.write(tmp_path)
    assert json.loads((tmp_path / CLASS_IMAGES_INFO).read_text())["count"] == 2
    assert ClassImagesInfo.read(tmp_path) == info
    with pytest.raises(DataError, match="stale"):
        info.verify(tmp_path, "pear tree", "builtin:tiny")


def test_manifest_rows_put_the_engine_settings_at_the_top_level(tmp_path):
    row = ManifestRow(
        *("a_000000.png", "a", 0, "a photo", "a photo", 1, 1, 0, None, True, None, {}, "k"),
        *("builtin:tiny", "r", "s", "lora", "sd"),
        engine={"mode": "txt2img", "steps": 4},
    )
    write_manifest(tmp_path, [row])
    (line,) = read_manifest(tmp_path)
    assert (tmp_path / MANIFEST).is_file() and line == row.to_json()
    assert line["mode"] == "txt2img" and "engine" not in line


def test_every_method_of_params_has_one_registry_entry():
    assert tuple(methods.METHODS) == PERSONALIZE_METHODS
    assert methods.method("textual_inversion").concept_token("sks") == "<sks>"
    assert methods.method("lora").instance_prompt("sks", "apple tree") == (
        "a photo of sks apple tree"
    )
    assert methods.method("textual_inversion").instance_prompt("sks", "apple tree") == (
        "a photo of <sks>"
    )
    assert methods.PRIOR_METHODS == ("dreambooth", "dreambooth_lora")


def test_derived_seeds_keep_their_historical_values():
    words = np.random.SeedSequence([3, 5]).generate_state(2)
    assert derive_seed(3, 5, bits=32) == int(words[0])
    assert derive_seed(3, 5, bits=64) == int(words[0]) << 32 | int(words[1])
    name = int.from_bytes(hashlib.sha256(b"a").digest()[:8], "little")
    words = np.random.SeedSequence([3, name, 7, 0]).generate_state(2)
    assert derive_seed(3, "a", 7, 0) == int(words[0]) | (int(words[1]) & 0x7FFFFFFF) << 32
