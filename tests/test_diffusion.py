"""The diffusion half: CLIP tokenizer, builtin:tiny, LoRA personalisation, generation."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDPMScheduler, StableDiffusionPipeline
from PIL import Image

from synthdet.artifacts.adapter import AdapterInfo
from synthdet.core.data import DataError
from synthdet.core.errors import ModelNotAvailableError
from synthdet.diffusion.hashing import derive_seed, files_sha256
from synthdet.diffusion.loading import load_pipeline
from synthdet.diffusion.loss_curve import LossCurve
from synthdet.diffusion.training import read_captions
from synthdet.diffusion.vocabulary import build_clip_tokenizer
from synthdet.params import Params
from synthdet.personalization.adapters import LORA_WEIGHT_NAME
from synthdet.stages import base, class_images, personalize
from tests.conftest import REPO, TEST_PARAMS_YAML, load_test_params, write_tiny_yolo_folder

SENTENCES = [
    "a photo of sks apple tree with 12 apples",
    "A Photo of an APPLE tree, in the sun!",
    "apples' leaves: 3.5cm  wide   (roughly) — naïve café",
]

# Over the test params (tests/config/params.yaml: 32 px, random-weight base): a 2-level VAE and
# UNet, a few steps each.
TINY_OVERRIDES = {
    "base": {
        "vae_channels": (8, 16),
        "unet_channels": (16, 32),
        "text_hidden_size": 32,
        "text_layers": 1,
        "vae_steps": 3,
        "unet_steps": 3,
        "batch_size": 4,
    },
    # A high learning rate so that a few steps visibly change the images.
    "personalize": {
        "method": "lora",
        "max_train_steps": 6,
        "checkpointing_steps": 3,
        "learning_rate": 0.05,
    },
    "class_images": {"count": 0},
    "generate": {"num_images": 4, "num_inference_steps": 3, "batch_size": 4},
    "few_shot": {"extra_images": 4},
}


def tiny_params(**sections: dict) -> Params:
    params = load_test_params()
    changed = {}
    for name, overrides in TINY_OVERRIDES.items():
        section = dataclasses.replace(getattr(params, name), **overrides)
        changed[name] = dataclasses.replace(section, **sections.get(name, {}))
    # one replace: the sections are checked against each other (method lora, no class images)
    return dataclasses.replace(params, **changed)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, mlflow_store) -> Path:
    """Train data, personalize images with captions, and MLflow isolated like conftest does."""
    root = tmp_path_factory.mktemp("diffusion")
    write_tiny_yolo_folder(root / "train", photos=2, tiles=3, size=40)
    personalize_images = write_tiny_yolo_folder(
        root / "personalize" / "apple_tree", photos=1, tiles=3, size=40
    )
    captions = [
        {"file": path.name, "caption": f"a photo of sks apple tree with {i + 1} apples"}
        for i, path in enumerate(sorted((personalize_images / "images").iterdir()))
    ]
    (root / "captions").mkdir()
    (root / "captions/apple_tree.jsonl").write_text("".join(json.dumps(c) + "\n" for c in captions))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_store / 'mlflow.db'}")
        patch.setenv("DVC_ROOT", str(mlflow_store))
        yield root


@pytest.fixture(scope="module")
def base_model(workdir) -> Path:
    out = workdir / "models/base"
    metrics = base.run(
        tiny_params(), workdir / "train", REPO / "models/builtin", out, workdir / "base_loss.tsv"
    )
    assert metrics["train_images"] == 6
    return out


@pytest.fixture(scope="module")
def adapter(workdir, base_model) -> tuple[Path, dict]:
    out = workdir / "models/personalize/apple_tree"
    class_images.run(tiny_params(), "apple_tree", base_model, workdir / "class_images/apple_tree")
    metrics = personalize.run(
        tiny_params(),
        "apple_tree",
        workdir / "personalize/apple_tree",
        workdir / "captions/apple_tree.jsonl",
        workdir / "class_images/apple_tree",
        base_model,
        out,
        workdir / "metrics/personalize/apple_tree",
    )
    return out, metrics


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_loss_curve_continues_the_curve_it_wrote():
    earlier = LossCurve(None)
    earlier.recorder("vae")(1, 0.5)
    earlier.recorder("unet", first_step=2)(1, 0.25)
    later = LossCurve(None)
    later.extend_tsv(earlier.tsv())
    later.recorder("decoder", first_step=3)(1, 0.125)
    assert later.rows == [(1, "vae", 0.5), (2, "unet", 0.25), (3, "decoder", 0.125)]
    assert later.tsv().startswith(earlier.tsv())


def test_tokenizer_matches_open_clip():
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    tokenizer = build_clip_tokenizer()
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)
    assert tokenizer.model_max_length == 77
    for sentence in SENTENCES:
        expected = [reference.sot_token_id, *reference.encode(sentence), reference.eot_token_id]
        assert tokenizer(sentence).input_ids == expected, sentence


def test_builtin_tiny_loads_with_stock_pipeline(workdir, base_model):
    pipeline = StableDiffusionPipeline.from_pretrained(base_model)
    assert isinstance(pipeline.scheduler, DDPMScheduler)
    assert pipeline.tokenizer.model_max_length == 77
    assert pipeline.unet.config.cross_attention_dim == pipeline.text_encoder.config.hidden_size
    # Measured from the train latents, not SD 1.5's constant.
    assert pipeline.vae.config.scaling_factor != pytest.approx(0.18215)
    assert sorted(p.suffix for p in base_model.rglob("*.safetensors")) == [".safetensors"] * 3
    image = pipeline(
        "a photo of apple tree", num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (32, 32)

    rows = (workdir / "base_loss.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["step", "phase", "loss"]
    steps = [int(row.split("\t")[0]) for row in rows[1:]]
    assert steps == list(range(1, 3 + 3 + 1))
    assert all(np.isfinite(float(row.split("\t")[2])) for row in rows[1:])


def test_lora_loads_into_stock_pipeline_and_changes_images(base_model, adapter):
    folder, metrics = adapter
    assert np.isfinite(metrics["loss_final"])
    info = json.loads((folder / "adapter.json").read_text())
    assert info["base_model"] == "builtin:tiny"
    assert (info["subject"], info["method"], info["family"]) == ("apple_tree", "lora", "sd")
    assert info["max_train_steps"] == 6
    assert info["lora"]["r"] == 8
    assert info["weight_files"] == [LORA_WEIGHT_NAME]
    assert info["sha256"] == files_sha256(folder, info["weight_files"])
    assert AdapterInfo.read(folder).to_json() == info

    pipeline = StableDiffusionPipeline.from_pretrained(base_model)
    pipeline.set_progress_bar_config(disable=True)

    def sample() -> Image.Image:
        return pipeline(
            "a photo of sks apple tree",
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
        ).images[0]

    without = sample()
    pipeline.load_lora_weights(folder)
    with_adapter = sample()
    assert np.abs(pixels(with_adapter) - pixels(without)).max() > 0


def test_unknown_hub_id_says_how_to_fix(tmp_path):
    # conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported, so this fails at once.
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(ModelNotAvailableError) as error:
        load_pipeline("no-such-org/no-such-model", tmp_path)
    message = str(error.value)
    assert "no-such-org/no-such-model" in message
    assert "local diffusers folder" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert "builtin:tiny" in message


def test_missing_builtin_base_and_local_folder_are_named(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="run the base stage"):
        load_pipeline("builtin:tiny", tmp_path / "models/base")
    with pytest.raises(ModelNotAvailableError, match="not found"):
        load_pipeline("./models/sd15", tmp_path)


def test_captions_must_cover_exactly_the_images(tmp_path):
    images = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    captions = tmp_path / "captions.jsonl"
    captions.write_text(
        json.dumps({"file": "a.jpg", "caption": "a photo of sks apple tree"}) + "\n"
    )
    with pytest.raises(DataError, match=r"no caption for b\.jpg"):
        read_captions(captions, images)
    captions.write_text(
        "".join(json.dumps({"file": name, "caption": "x"}) + "\n" for name in "abc")
    )
    with pytest.raises(DataError, match="stale"):
        read_captions(captions, [tmp_path / name for name in "ab"])
    captions.write_text(json.dumps({"file": "a.jpg"}) + "\n")
    with pytest.raises(DataError, match="line 1 needs string fields"):
        read_captions(captions, images[:1])


def test_image_seed_depends_on_seed_and_index_only():
    assert derive_seed(42, 3, bits=32) == derive_seed(42, 3, bits=32)
    assert len({derive_seed(seed, i, bits=32) for seed in (1, 2) for i in range(100)}) == 200


@pytest.mark.slow
def test_stage_clis_run_as_in_dvc_yaml(tmp_path):
    """The three stage commands of dvc.yaml, as subprocesses, on the tiny configuration."""
    params = yaml.safe_load(TEST_PARAMS_YAML.read_text())
    for name, overrides in TINY_OVERRIDES.items():
        params[name].update(
            {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}
        )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_tiny_yolo_folder(tmp_path / "train", photos=1, tiles=4)
    write_tiny_yolo_folder(tmp_path / "pers/apple_tree", photos=1, tiles=2)
    (tmp_path / "data/pool").mkdir(parents=True)  # base.pool_dir: no unlabelled images
    commands = [
        [
            "base",
            *("--train", "train", "--checkpoints", "models/builtin"),
            *("--out", "models/base", "--loss", "metrics/base_loss.tsv"),
        ],
        ["caption", "--images", "pers", "--out", "data/captions"],
        [
            "class_images",
            "--subject",
            "apple_tree",
            "--builtin-base",
            "models/base",
            "--out",
            "data/class_images/apple_tree",
        ],
        [
            "personalize",
            "--subject",
            "apple_tree",
            "--images",
            "pers/apple_tree",
            "--captions",
            "data/captions/apple_tree.jsonl",
            "--class-images",
            "data/class_images/apple_tree",
            "--builtin-base",
            "models/base",
            "--out",
            "models/personalize/apple_tree",
            "--metrics",
            "metrics/personalize/apple_tree",
            "--checkpoints",
            ".checkpoints/personalize/apple_tree",
        ],
        [
            "generate",
            "--builtin-base",
            "models/base",
            "--adapter",
            "models/personalize",
            "--train",
            "train",
            "--personalize",
            "pers",
            "--out",
            "data/generated",
            "--metrics",
            "metrics/generate.json",
        ],
    ]
    for stage, *args in commands:
        result = subprocess.run(
            [sys.executable, "-m", f"synthdet.stages.{stage}", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
    generated = tmp_path / "data/generated"
    kept = len(list((generated / "images").iterdir()))
    assert kept + len(list((generated / "dropped").glob("*.png"))) == 4 and kept >= 1
