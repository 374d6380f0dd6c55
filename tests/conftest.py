"""Shared fixtures: a tiny YOLO dataset, the tests' params (tests/config/params.yaml), and an
isolated MLflow store."""

from __future__ import annotations

import os
import sys

# Tests never touch the network: hub lookups fail at once instead of retrying for minutes.
# Set before anything imports huggingface_hub, which reads it at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Under `pytest -n 2` each worker gets one core: one torch thread each (set before torch loads),
# instead of two threads per worker fighting over the two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("SYNTHDET_TORCH_THREADS", "1")

import random
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from synthdet.params import Params, load_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> Path:
    # One store per session: creating an MLflow SQLite schema takes seconds.
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(autouse=True)
def isolated_mlflow(mlflow_store, monkeypatch):
    """Tests log into a throwaway SQLite store, never the project's mlflow.db."""
    store = mlflow_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.setenv("DVC_ROOT", str(store))
    return store


# The tests' params file: params.yaml with tiny, fast values (its header lists the keys that
# differ). Only tests about the project's own params.yaml (loading it, its defaults, the docs,
# DVC overrides of it, dvc.yaml) read REPO / "params.yaml".
TEST_PARAMS_YAML = Path(__file__).resolve().parent / "config" / "params.yaml"


def load_test_params() -> Params:
    """tests/config/params.yaml through the project's loader (checked like any params file), for
    module-level helpers; tests take the `test_params` fixture. A fresh object each call: the
    frozen sections hold dicts (train_detector.yolo, personalize.lora) a test could change."""
    return load_params(TEST_PARAMS_YAML)


@pytest.fixture
def test_params() -> Params:
    return load_test_params()


@pytest.fixture
def params(test_params: Params) -> Params:
    """The same test params under the short name most tests use."""
    return test_params


def write_tiny_yolo_folder(root: Path, photos: int = 6, tiles: int = 3, size: int = 32) -> Path:
    """`photos` groups of `tiles` images named <photo>_<k>.jpg, each with 1-3 red 'apples'."""
    rng = random.Random(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for photo in range(photos):
        for tile in range(tiles):
            image = Image.new("RGB", (size, size), (40, 110 + 10 * photo, 40))
            draw = ImageDraw.Draw(image)
            rows = []
            for _ in range(rng.randint(1, 3)):
                w, h = rng.randint(4, 10), rng.randint(4, 10)
                x, y = rng.randint(0, size - w), rng.randint(0, size - h)
                draw.ellipse((x, y, x + w, y + h), fill=(200, 30, 30))
                cx, cy = (x + w / 2) / size, (y + h / 2) / size
                rows.append(f"0 {cx:.6f} {cy:.6f} {w / size:.6f} {h / size:.6f}\n")
            stem = f"DSC_{photo:04d}_tree_{tile}"
            image.save(root / "images" / f"{stem}.jpg", quality=95)
            (root / "labels" / f"{stem}.txt").write_text("".join(rows))
    return root


@pytest.fixture
def tiny_yolo_folder(tmp_path) -> Path:
    return write_tiny_yolo_folder(tmp_path / "raw")


def accelerate_launch(processes: int) -> list[str]:
    """`accelerate launch` for `processes` CPU processes on this machine, before `-m module ...`."""
    import socket

    with socket.socket() as sock:  # a free port for the processes' rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"),
        *("--num_processes", str(processes), "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)),
    ]


# The modules that take longest (tiny diffusion models and detectors trained), in that order.
LONGEST_MODULES = ("test_personalization.py", "test_detection.py", "test_generation.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first: under `pytest -n 2 --dist loadfile` the short ones then fill
    in around them instead of one long module running alone at the end."""
    rank = {name: index for index, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# The base stage at test size (shared.resolution MICRO_RESOLUTION), from random weights (no
# shipped checkpoint).
MICRO_RESOLUTION = 32
MICRO_BASE = {
    "vae_steps": 2,
    "unet_steps": 2,
    "batch_size": 2,
    "init": None,
    "vae_crop": 16,
    "unet_crop": 16,
    "lr_warmup_steps": 0,  # below the 2 steps
}


def copy_dvc_project(root: Path, folders: tuple[str, ...] = ()) -> None:
    """What `dvc repro` of the stages needs besides params and data: dvc.yaml, pyproject.toml,
    .dvcignore (bytecode in a code folder dep is no edit), src/, data/pool and the
    shipped-checkpoints folder (a DVC dep; empty, as base.init is null at test size), plus
    `folders` of the repo."""
    for name in ("dvc.yaml", "pyproject.toml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    for folder in ("src", "data/pool", *folders):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "models/builtin").mkdir(parents=True)
    (root / "models/builtin/README.md").write_text("no checkpoint\n")
