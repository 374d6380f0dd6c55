"""Generation at scale: modes and families, determinism, growth, invalidation, resume, filters.

The engine runs on tiny SD 1.x / SDXL / ControlNet models built from configs (tests/tiny_models.py);
the stage tests personalise a tiny model with the personalize stage first, so they exercise the
real adapter files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from synthdet.artifacts.adapter import AdapterInfo
from synthdet.core.data import DataError
from synthdet.diffusion.hashing import derive_seed, files_sha256
from synthdet.diffusion.images import fit_square
from synthdet.diffusion.loading import load_pipeline
from synthdet.generation.engine import Engine
from synthdet.generation.filters import largest_cluster, realism_scores
from synthdet.generation.modes import control_map, engine_description, engine_record
from synthdet.generation.plan import SubjectPlan, engine_identity, plan_units, subject_images
from synthdet.generation.run import generate_dataset
from synthdet.generation.store import read_provenance
from synthdet.image_checks.metrics import FidInceptionFeatures
from synthdet.params import ParamsError, parse_params
from synthdet.personalization.adapters import (
    LORA_WEIGHT_NAME,
    load_personalized_pipeline,
    save_adapter,
    setup_method,
)
from tests.conftest import (
    TEST_PARAMS_YAML,
    accelerate_launch,
    load_test_params,
    write_tiny_yolo_folder,
)
from tests.tiny_models import SAMPLE_SIZE, tiny_controlnet, tiny_sd_pipeline, tiny_sdxl_pipeline

SUBJECT = "apple_tree"
PROMPTS = (
    "a photo of {identifier} {class_noun}",
    "a photo of {identifier} {class_noun} in the snow",
)


def settings(**changes):
    """Small txt2img generate params: the test params' (2 steps, strength 0.5: img2img denoises
    one of them, batches of 2), 4 images, no off-distribution filter."""
    params = load_test_params().generate
    filters = dataclasses.replace(
        params.filters, **{"outliers": "none", **changes.pop("filters", {})}
    )
    base = {
        "mode": "txt2img",  # the repo default is img2img; most cases here need no sources
        "vae_residual": False,  # img2img only
        "num_images": 4,
        "prompts": PROMPTS,
        "filters": filters,
    }
    return dataclasses.replace(params, **{**base, **changes})


def plan(count: int = 4, sources=(), references=(), templates=PROMPTS, **identity):
    return SubjectPlan(
        name=SUBJECT,
        identifier="sks",
        class_noun="apple tree",
        count=count,
        templates=templates,
        sources=tuple(sources),
        references=tuple(references),
        identity={"base_model": "tiny", "adapter_sha256": "a" * 64, **identity},
    )


def hashes(out: Path) -> dict[str, str]:
    return {
        f"{p.parent.name}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in ("images", "dropped")
        for p in sorted((out / folder).glob("*.png"))
    }


@pytest.fixture(scope="module")
def inception() -> FidInceptionFeatures:
    return FidInceptionFeatures()


class PixelFeatures(torch.nn.Module):
    """A cheap stand-in for the Inception network where its semantics do not matter (the
    bookkeeping tests): 4 x 4 average colours. The memorisation and stage tests use Inception."""

    num_features = 48

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1)


PIXELS = PixelFeatures()


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real")
    return write_tiny_yolo_folder(root / "train", photos=2, tiles=3, size=40)


@pytest.fixture(scope="module")
def sd_pipeline():
    return tiny_sd_pipeline()


def run(out, plans, s, pipeline, real, inception, seed=42, engine_wrapper=None, **kwargs):
    """One generate run with the stage's code path, on an in-memory tiny pipeline."""

    def load_engine(subject):
        engine = Engine(type(pipeline)(**pipeline.components), s, SAMPLE_SIZE)
        return engine_wrapper(engine) if engine_wrapper else engine

    identity = engine_identity(s, SAMPLE_SIZE, None)
    return generate_dataset(
        plans,
        s,
        SAMPLE_SIZE,
        seed,
        out,
        load_engine,
        sorted((real / "images").iterdir()),
        identity,
        features=inception,
        **kwargs,
    )


# ---------------------------------------------------------------- seeds and params


def test_seed_depends_on_seed_subject_index_and_attempt():
    seeds = {
        derive_seed(seed, subject, index, attempt)
        for seed in (1, 2)
        for subject in ("red", "green")
        for index in range(50)
        for attempt in range(3)
    }
    assert len(seeds) == 2 * 2 * 50 * 3
    assert derive_seed(1, "red", 7, 1) == derive_seed(1, "red", 7, 1)
    assert all(0 <= seed < 2**63 for seed in seeds)


def test_params_name_the_bad_key():
    raw = yaml.safe_load(TEST_PARAMS_YAML.read_text())
    raw["generate"]["subjects"] = {"apple_tree": {"num_images": 482}}
    params = parse_params(raw)
    assert params.generate.count("apple_tree") == 482
    assert params.generate.count("pear") == params.generate.num_images
    assert params.generate.templates("pear") == params.generate.prompts
    raw["generate"]["subjects"]["pear"] = {"num_images": 54}
    with pytest.raises(ParamsError, match=r"'generate\.subjects\.pear' names no subject"):
        parse_params(raw)
    for change, key in [
        ({"strength": 0.0}, "generate.strength"),
        ({"mode": "controlnet", "vae_residual": False}, "generate.controlnet_model"),
        ({"scheduler": "heun"}, "generate.scheduler"),
        ({"subjects": {"apple_tree": {"prompts": ["a {subject}"]}}}, "generate.subjects"),
        ({"subjects": {"apple_tree": {"count": 3}}}, "generate.subjects.apple_tree.count"),
        ({"filters": {**raw["generate"]["filters"], "clusters": 1}}, "generate.filters.clusters"),
    ]:
        broken = yaml.safe_load(TEST_PARAMS_YAML.read_text())
        broken["generate"].update(change)
        with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
            parse_params(broken)


# ---------------------------------------------------------------- the engine


@pytest.fixture(scope="module")
def sdxl_pipeline():
    return tiny_sdxl_pipeline()


# SDXL's engine path (pooled prompt embeddings) runs with -m slow, to keep make test under 5 min.
@pytest.mark.parametrize("family", ["sd", pytest.param("sdxl", marks=pytest.mark.slow)])
def test_engine_modes_and_families(family, sd_pipeline, sdxl_pipeline, real):
    base = sd_pipeline if family == "sd" else sdxl_pipeline
    for mode in ("txt2img", "img2img", "controlnet"):
        pipeline = type(base)(**base.components)
        controlnet = tiny_controlnet(pipeline.unet) if mode == "controlnet" else None
        s = settings(mode=mode, controlnet_model="tiny" if controlnet else None)
        engine = Engine(pipeline, s, SAMPLE_SIZE, controlnet=controlnet)
        encoded = []
        hook = engine.pipeline.text_encoder.register_forward_hook(
            lambda *_, calls=encoded: calls.append(1)
        )
        sources = sorted((real / "images").iterdir())[:3] if mode != "txt2img" else [None] * 3
        prompts = ["a photo of sks apple tree", "a photo of sks apple tree", "in the snow"]
        images, flags = engine(prompts, [1, 2, 3], sources)
        assert images.shape == (3, SAMPLE_SIZE, SAMPLE_SIZE, 3) and images.dtype == np.uint8
        assert flags == [False] * 3
        assert len(encoded) == 2 * 2  # prompt and negative prompt, once per distinct prompt
        again, _ = engine(prompts[:1], [1], sources[:1])
        assert len(encoded) == 2 * 2
        hook.remove()
        assert np.array_equal(again[0], images[0]), mode  # the seed decides the image
        assert not np.array_equal(images[0], images[1]), mode  # another seed, another image
        assert type(engine.pipeline.scheduler).__name__ == "DPMSolverMultistepScheduler"
        expected = {"txt2img": "", "img2img": "Img2Img", "controlnet": "ControlNet"}[mode]
        assert expected in type(engine.pipeline).__name__
        assert ("XL" in type(engine.pipeline).__name__) == (family == "sdxl")


def test_sources_cycle_through_the_subject_train_images(real):
    train = subject_images(real, "DSC_0001")
    assert len(train) == 3 and all("DSC_0001" in p.stem for p in train)
    units = plan_units(
        plan(5, sources=train),
        settings(mode="img2img"),
        42,
        engine_identity(settings(mode="img2img"), SAMPLE_SIZE, None),
    )
    specs = [spec for unit in units for spec in unit]
    assert [spec.source for spec in specs] == [train[i % 3] for i in range(6)]
    assert [spec.in_range for spec in specs] == [True] * 5 + [False]  # padded last unit
    assert len({spec.key for spec in specs}) == 6
    with pytest.raises(DataError, match="needs real train images"):
        plan_units(plan(2), settings(mode="img2img"), 42, {})


def test_control_maps_are_edges_of_the_real_image():
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (48, 40), (20, 90, 20))
    ImageDraw.Draw(image).ellipse((14, 10, 30, 26), fill=(230, 230, 40))
    square = fit_square(image, SAMPLE_SIZE)
    assert square.size == (SAMPLE_SIZE, SAMPLE_SIZE)
    for kind in ("canny", "sobel"):
        edges = np.asarray(control_map(square, kind))
        assert edges.shape == (SAMPLE_SIZE, SAMPLE_SIZE, 3)
        assert edges.max() > 0 and edges.min() == 0  # the apples' outlines, flat elsewhere


# ---------------------------------------------------------------- store: growth, invalidation


def test_growth_reuse_and_invalidation(tmp_path, sd_pipeline, real):
    out = tmp_path / "generated"
    s = settings()
    stats, rows, metrics = run(out, [plan(4)], s, sd_pipeline, real, PIXELS)
    assert stats.generated == 4 and metrics["generated"] == 4 and metrics["reused"] == 0
    assert [row["file"] for row in rows] == [f"{SUBJECT}_{i:06d}.png" for i in range(4)]
    assert [row["prompt"] for row in rows[:2]] == [
        "a photo of sks apple tree",
        "a photo of sks apple tree in the snow",
    ]
    for row in rows:
        assert row["subject"] == SUBJECT and row["source"] is None and row["mode"] == "txt2img"
        assert row["seed"] == derive_seed(42, SUBJECT, row["index"], 0)
        assert row["negative_prompt"] == s.negative_prompt
        assert row["adapter_sha256"] == "a" * 64 and row["kept"] and row["drop_reason"] is None
    first = hashes(out)
    assert len(first) == 4 and not (out / "pending").exists()
    manifest = (out / "manifest.jsonl").read_text()

    stats, _, metrics = run(out, [plan(4)], s, sd_pipeline, real, PIXELS)
    assert stats.generated == 0 and stats.computed == 0 and metrics["reused"] == 4
    assert hashes(out) == first and (out / "manifest.jsonl").read_text() == manifest

    # 4 -> 6 images: only the 2 new ones are generated, the old files are untouched.
    stats, rows, _ = run(out, [plan(6)], s, sd_pipeline, real, PIXELS)
    assert stats.generated == 2
    grown = hashes(out)
    assert {k: grown[k] for k in first} == first and len(grown) == 6

    # A changed template regenerates exactly the images that use it (indices 1, 3, 5).
    templates = (PROMPTS[0], "a photo of {identifier} {class_noun} in the shadow")
    stats, rows, _ = run(out, [plan(6, templates=templates)], s, sd_pipeline, real, PIXELS)
    assert stats.generated == 3
    assert rows[3]["prompt"] == "a photo of sks apple tree in the shadow"

    # A changed adapter (or base model, seed, steps...) regenerates every image.
    changed = plan(6, templates=templates, adapter_sha256="b" * 64)
    stats, rows, _ = run(out, [changed], s, sd_pipeline, real, PIXELS)
    assert stats.generated == 6 and {row["adapter_sha256"] for row in rows} == {"b" * 64}

    # Fewer images: the extra files go, nothing is generated.
    stats, rows, _ = run(
        out,
        [plan(3, templates=templates, adapter_sha256="b" * 64)],
        s,
        sd_pipeline,
        real,
        PIXELS,
    )
    assert len(rows) == 3 and len(hashes(out)) == 3


@pytest.mark.slow
def test_batch_size_units_and_padding_keep_images_identical(tmp_path, sd_pipeline, real):
    """Units are full aligned batches: a count of 3 or 4 gives the same first 3 images."""
    s = settings()
    run(tmp_path / "three", [plan(3)], s, sd_pipeline, real, PIXELS)
    run(tmp_path / "four", [plan(4)], s, sd_pipeline, real, PIXELS)
    three, four = hashes(tmp_path / "three"), hashes(tmp_path / "four")
    assert three == {k: four[k] for k in three}


def test_resume_after_interrupt_gives_the_same_files(tmp_path, sd_pipeline, real):
    s = settings()
    run(tmp_path / "clean", [plan(5)], s, sd_pipeline, real, PIXELS)
    out = tmp_path / "resumed"
    written = []

    def interrupt():
        written.append(1)
        if len(written) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(out, [plan(5)], s, sd_pipeline, real, PIXELS, on_image=interrupt)
    (out / "pending" / ".apple_tree_000003.png.x.tmp").write_bytes(b"half")  # a killed write
    pending = sorted((out / "pending").glob("*.png"))
    assert len(pending) == 3  # whole files only
    assert all(read_provenance(p)["key"] for p in pending)
    assert not (out / "images").exists() and not (out / "manifest.jsonl").exists()
    # Image 3 shares its batch with image 2, which was written: the batch is recomputed whole
    # and gives the same bytes.
    stats, _, metrics = run(out, [plan(5)], s, sd_pipeline, real, PIXELS)
    assert stats.generated == 2 and metrics["generated"] == 2 and metrics["resumed"] == 3
    assert hashes(out) == hashes(tmp_path / "clean")
    assert not list(out.rglob("*.tmp")) and not (out / "pending").exists()


# ---------------------------------------------------------------- filters


class Blackout:
    """An engine whose outputs for some seeds come back black, as a safety checker makes them."""

    def __init__(self, engine, seeds):
        self.engine, self.seeds = engine, set(seeds)

    def __call__(self, prompts, seeds, sources=()):
        images, flags = self.engine(prompts, seeds, sources)
        for position, seed in enumerate(seeds):
            if seed in self.seeds:
                images[position] = 0
        return images, flags


def test_blank_images_are_redone_with_a_new_seed(tmp_path, sd_pipeline, real):
    s = settings(filters={"max_attempts": 3})
    black = {derive_seed(42, SUBJECT, 1, 0)} | {
        derive_seed(42, SUBJECT, 2, attempt) for attempt in range(3)
    }
    stats, rows, metrics = run(
        tmp_path / "out",
        [plan(4)],
        s,
        sd_pipeline,
        real,
        PIXELS,
        engine_wrapper=lambda engine: Blackout(engine, black),
    )
    by_index = {row["index"]: row for row in rows}
    assert by_index[1]["attempt"] == 1 and by_index[1]["kept"]
    assert by_index[1]["seed"] == derive_seed(42, SUBJECT, 1, 1)
    assert by_index[2]["kept"] is False and by_index[2]["drop_reason"] == "blank"
    assert by_index[2]["scores"]["blank_std"] == 0.0
    assert by_index[0]["attempt"] == 0 and by_index[3]["attempt"] == 0
    assert metrics["dropped_blank"] == 1 and metrics["blank_retried"] == 2
    assert metrics["kept"] == 3
    assert (tmp_path / "out/dropped" / by_index[2]["file"]).is_file()
    assert sorted(p.name for p in (tmp_path / "out/images").iterdir()) == [
        by_index[i]["file"] for i in (0, 1, 3)
    ]
    # Two of the four images needed another attempt: the unit {0, 1} once, {2, 3} twice.
    assert stats.computed == 4 + 2 + 2 * 2


def test_memorised_images_are_dropped(tmp_path, sd_pipeline, real, inception):
    out = tmp_path / "out"
    s = settings()
    run(out, [plan(4)], s, sd_pipeline, real, inception)
    refs = tmp_path / "personalize"
    refs.mkdir()
    shutil.copy(out / "images" / f"{SUBJECT}_000002.png", refs / "copy.png")
    shutil.copy(sorted((real / "images").iterdir())[0], refs / "real.jpg")
    references = sorted(refs.iterdir())
    stats, rows, metrics = run(
        out, [plan(4, references=references)], s, sd_pipeline, real, inception
    )
    assert stats.generated == 0  # filters run on the stored images
    copied = rows[2]
    assert copied["scores"]["memorization_similarity"] > 0.999
    assert copied["scores"]["memorization_match"] == "copy.png"
    assert copied["drop_reason"] == "memorized" and not (out / "images" / copied["file"]).exists()
    for row in rows:
        similar = row["scores"]["memorization_similarity"] > s.filters.memorization_threshold
        assert (row["drop_reason"] == "memorized") == similar
    assert metrics["dropped_memorized"] == sum(r["drop_reason"] == "memorized" for r in rows)


def test_largest_cluster_keeps_the_main_mode():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 64)) * 10
    features = np.concatenate(
        [centres[0] + rng.normal(size=(7, 64)), centres[1] + rng.normal(size=(3, 64))]
    )
    features = np.concatenate([features, centres[2] + rng.normal(size=(2, 64))])
    filters = settings().filters
    keep, labels = largest_cluster(features.astype(np.float32), filters, seed=0)
    assert keep.tolist() == [True] * 7 + [False] * 5
    assert len(set(labels[:7])) == 1 and len(set(labels)) == 3


def test_realism_score_is_one_on_the_manifold_edge():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(40, 8))
    inside, outside = real[:5] + 0.01, real[:5] + 100
    scores = realism_scores(real, np.concatenate([inside, outside]), k=3)
    assert (scores[:5] > 1).all() and (scores[5:] < 0.2).all()


def test_off_distribution_filter_and_fid_before_after(tmp_path, sd_pipeline, real):
    s = settings(filters={"outliers": "kmeans", "min_cluster_images": 3, "pca_components": 4})
    _, rows, metrics = run(tmp_path / "out", [plan(6)], s, sd_pipeline, real, PIXELS)
    sizes = {row["scores"]["cluster"]: row["scores"]["cluster_size"] for row in rows}
    assert sum(sizes.values()) == 6 and len(sizes) == 3
    assert metrics["dropped_off_distribution"] == 6 - max(sizes.values())
    assert metrics["kept"] == max(sizes.values())
    for row in rows:
        kept_cluster = row["scores"]["cluster_size"] == max(sizes.values())
        assert row["kept"] == kept_cluster or list(sizes.values()).count(max(sizes.values())) > 1
    assert metrics["fid_before_filters"] > 0 and metrics["fid_real_images"] == 6
    assert metrics["fid_after_filters"] is None or metrics["fid_after_filters"] > 0
    assert len(list((tmp_path / "out/images").iterdir())) == metrics["kept"]


def project(tmp_path_factory, real):
    """A tiny SD model folder personalised by the personalize stage (LoRA), in stage layout."""
    from tests.test_personalization import make_params, train

    root = tmp_path_factory.mktemp("stage")
    write_tiny_yolo_folder(root / "prepared" / SUBJECT, photos=1, tiles=3, size=40)
    model = root / "models" / "sd"
    tiny_sd_pipeline().save_pretrained(model)
    params = make_params(model, "lora")
    adapter, _ = train(root, params, "lora")
    shutil.copytree(adapter, root / "adapters" / SUBJECT)
    params = dataclasses.replace(
        params, generate=settings(num_images=2, filters={"outliers": "kmeans"})
    )
    return root, params


def stage_run(root: Path, params, out: str = "generated"):
    from synthdet.stages import generate

    return generate.run(
        params,
        root / "no-builtin",
        root / "adapters",
        root / "prepared" / SUBJECT,  # the subject's train images (sources, FID)
        root / "prepared",
        root / out,
        root / f"{out}.json",
    )


@pytest.mark.slow
def test_stage_manifest_metrics_and_adapter_invalidation(project):
    from tests.test_personalization import train

    root, params = project
    metrics = stage_run(root, params)
    assert metrics["generated"] == 2 and metrics["kept"] + metrics["dropped_memorized"] == 2
    assert json.loads((root / "generated.json").read_text())["images"] == 2
    info = AdapterInfo.read(root / "adapters" / SUBJECT).to_json()
    rows = [
        json.loads(line) for line in (root / "generated/manifest.jsonl").read_text().splitlines()
    ]
    for row in rows:
        assert row["adapter_sha256"] == info["sha256"] and row["adapter_method"] == "lora"
        assert row["base_model"] == info["base_model"]
        assert row["base_revision"] == info["base_fingerprint"]
        assert row["prompt"].startswith("a photo of sks apple tree")
        assert row["scores"]["memorization_match"].endswith(".jpg")
    before = hashes(root / "generated")
    assert stage_run(root, params)["generated"] == 0

    # Personalise again with other settings: every image is regenerated from the new adapter.
    retrained = dataclasses.replace(
        params, personalize=dataclasses.replace(params.personalize, learning_rate=0.2)
    )
    adapter, _ = train(root, retrained, "lora-2")
    shutil.rmtree(root / "adapters" / SUBJECT)
    shutil.copytree(adapter, root / "adapters" / SUBJECT)
    metrics = stage_run(root, params)
    assert metrics["generated"] == 2 and metrics["reused"] == 0
    new_sha = AdapterInfo.read(root / "adapters" / SUBJECT).to_json()["sha256"]
    rows = [
        json.loads(line) for line in (root / "generated/manifest.jsonl").read_text().splitlines()
    ]
    assert new_sha != info["sha256"] and {row["adapter_sha256"] for row in rows} == {new_sha}
    after = hashes(root / "generated")
    assert {k.split("/")[1]: v for k, v in after.items()} != {
        k.split("/")[1]: v for k, v in before.items()
    }


@pytest.mark.slow
def test_stage_img2img_and_controlnet_use_train_images_only(project):
    root, params = project
    controlnet = root / "models" / "controlnet"
    from diffusers import StableDiffusionPipeline

    tiny_controlnet(
        StableDiffusionPipeline.from_pretrained(root / "models/sd").unet
    ).save_pretrained(controlnet)
    train_names = {p.name for p in (root / "prepared" / SUBJECT / "images").iterdir()}
    for mode in ("img2img", "controlnet"):
        changed = settings(
            mode=mode,
            num_images=3,
            controlnet_model=str(controlnet) if mode == "controlnet" else None,
        )
        metrics = stage_run(root, dataclasses.replace(params, generate=changed), out=mode)
        assert metrics["images"] == 3
        rows = [
            json.loads(line) for line in (root / mode / "manifest.jsonl").read_text().splitlines()
        ]
        assert {row["mode"] for row in rows} == {mode}
        assert {row["source"] for row in rows} <= train_names and len(
            {r["source"] for r in rows}
        ) == 3


def test_stage_rejects_unknown_subject_and_adapter_of_another_model(tmp_path):
    from synthdet.params import GenerateSubjectParams
    from synthdet.stages import generate

    adapter = tmp_path / "adapters" / SUBJECT
    adapter.mkdir(parents=True)
    (adapter / "weights.safetensors").write_bytes(b"weights")
    info = {"base_model": "builtin:tiny", "weight_files": ["weights.safetensors"]}
    info["sha256"] = files_sha256(adapter, info["weight_files"])
    (adapter / "adapter.json").write_text(json.dumps(info))
    params = load_test_params()

    def stage(params):
        train = tmp_path / "train"
        return generate.run(
            params,
            tmp_path,
            tmp_path / "adapters",
            train,
            train,
            tmp_path / "out",
            tmp_path / "m.json",
        )

    # checked as soon as the params are made, before the stage starts
    with pytest.raises(ParamsError, match=r"generate\.subjects\.pear"):
        dataclasses.replace(
            params,
            generate=dataclasses.replace(
                params.generate, subjects={"pear": GenerateSubjectParams(num_images=3)}
            ),
        )
    other = dataclasses.replace(
        params, personalize=dataclasses.replace(params.personalize, base_model="other/model")
    )
    with pytest.raises(DataError, match="rerun the personalize stage"):
        stage(other)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the stage as a command (slow)


def write_project_params(root: Path, params, **generate_changes) -> None:
    raw = json.loads(json.dumps(dataclasses.asdict(params)))
    raw["generate"].update(generate_changes)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def stage_command(out: str) -> list[str]:
    return [
        "-m",
        "synthdet.stages.generate",
        "--builtin-base",
        "no-builtin",
        "--adapter",
        "adapters",
        "--train",
        f"prepared/{SUBJECT}",
        "--personalize",
        "prepared",
        "--out",
        out,
        "--metrics",
        f"{out}.json",
    ]


@pytest.mark.slow
def test_two_processes_write_the_same_bytes_as_one(project):
    root, params = project
    write_project_params(root, params, num_images=8)
    one = subprocess.run(
        [sys.executable, *stage_command("one")], cwd=root, capture_output=True, text=True
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [*accelerate_launch(2), *stage_command("two")], cwd=root, capture_output=True, text=True
    )
    assert two.returncode == 0, two.stderr
    assert json.loads((root / "two.json").read_text())["processes"] == 2
    assert hashes(root / "one") == hashes(root / "two") and len(hashes(root / "one")) == 8
    assert (root / "one/manifest.jsonl").read_text() == (root / "two/manifest.jsonl").read_text()


@pytest.mark.slow
def test_killed_run_resumes_where_it_stopped(project):
    root, params = project
    write_project_params(root, params, num_images=8)
    clean = subprocess.run(
        [sys.executable, *stage_command("clean")], cwd=root, capture_output=True, text=True
    )
    assert clean.returncode == 0, clean.stderr
    process = subprocess.Popen([sys.executable, *stage_command("killed")], cwd=root)
    pending = root / "killed" / "pending"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(pending.glob("*.png"))) < 3:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = sorted(pending.glob("*.png"))
    assert 3 <= len(done) < 8, "the run must be killed mid-way"
    for path in done:  # every visible file is whole: it decodes and carries its provenance
        assert read_provenance(path)["key"]
    resumed = subprocess.run(
        [sys.executable, *stage_command("killed")], cwd=root, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((root / "killed.json").read_text())
    assert metrics["resumed"] == len(done) and metrics["generated"] == 8 - len(done)
    assert hashes(root / "killed") == hashes(root / "clean")


# ---------------------------------------------------------------- what settings silently change


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_guidance_off_is_said_and_recorded(tmp_path, sd_pipeline, real, capsys):
    out = tmp_path / "generated"
    off = settings(guidance_scale=1.0, num_images=2)
    run(out, [plan(2)], off, sd_pipeline, real, PIXELS)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "guidance" in line]
    assert warnings == [
        "warning: generate.guidance_scale=1.0 is <= 1: classifier-free guidance is off, so "
        "generate.negative_prompt ('blurry, low quality') is ignored; the manifest records "
        "negative_prompt: null. Set it above 1 (e.g. 5) to use guidance."
    ]
    rows = manifest(out)
    assert [(r["negative_prompt"], r["classifier_free_guidance"]) for r in rows] == [
        (None, False)
    ] * 2
    # The negative prompt decides nothing then: changing it regenerates nothing.
    _, _, metrics = run(
        out, [plan(2)], dataclasses.replace(off, negative_prompt="dark"), sd_pipeline, real, PIXELS
    )
    assert metrics["generated"] == 0 and metrics["reused"] == 2
    capsys.readouterr()
    # With guidance the negative prompt is used and recorded, and nothing is said.
    run(tmp_path / "guided", [plan(2)], settings(num_images=2), sd_pipeline, real, PIXELS)
    assert "guidance" not in capsys.readouterr().err
    rows = manifest(tmp_path / "guided")
    assert {(r["negative_prompt"], r["classifier_free_guidance"]) for r in rows} == {
        ("blurry, low quality", True)
    }
    assert all("negative_prompt_seen" not in r for r in rows)  # read whole: nothing added


LONG = "a photo of {identifier} {class_noun}" + " in a green orchard" * 20


def test_long_prompt_is_said_and_the_text_seen_recorded(tmp_path, sd_pipeline, real, capsys):
    out = tmp_path / "generated"
    s = settings(num_images=2)
    subject = dataclasses.replace(plan(2, templates=(PROMPTS[0], LONG)))
    _, _, metrics = run(out, [subject], s, sd_pipeline, real, PIXELS)
    lines = [line for line in capsys.readouterr().err.splitlines() if "tokens" in line]
    seen = "a photo of sks apple tree" + " in a green orchard" * 17 + " in"  # 75 tokens
    assert lines == [
        f"warning: generate.prompts[1] (subject apple_tree) gives {LONG!r}, 88 tokens, more "
        "than the text encoder reads (77 with its start and end tokens): the model sees only "
        f"{seen!r}. Shorten it; the manifest records that text as prompt_seen."
    ]
    short, long = manifest(out)
    assert short["prompt_seen"] == short["prompt"] == "a photo of sks apple tree"
    assert long["prompt_seen"] == seen and long["prompt"] == LONG.format(
        identifier="sks", class_noun="apple tree"
    )
    tokenizer = sd_pipeline.tokenizer
    assert len(tokenizer(long["prompt_seen"]).input_ids) == tokenizer.model_max_length
    assert metrics["prompts_truncated"] == 1
    # Nothing to generate the second time: still said once, from the images' provenance.
    _, _, metrics = run(out, [subject], s, sd_pipeline, real, PIXELS)
    lines = [line for line in capsys.readouterr().err.splitlines() if "tokens" in line]
    assert metrics["generated"] == 0 and len(lines) == 1
    assert "generate.prompts[1]" in lines[0] and manifest(out)[1] == long


def test_long_negative_prompt_is_said_and_the_text_seen_recorded(
    tmp_path, sd_pipeline, real, capsys
):
    out = tmp_path / "generated"
    negative = "blurry" + " low quality" * 40
    s = settings(num_images=2, negative_prompt=negative)
    run(out, [plan(2)], s, sd_pipeline, real, PIXELS)
    seen = "blurry" + " low quality" * 37  # 75 tokens
    said = [
        f"warning: generate.negative_prompt gives {negative!r}, 83 tokens, more than the text "
        f"encoder reads (77 with its start and end tokens): the model sees only {seen!r}. "
        "Shorten it; the manifest records that text as negative_prompt_seen."
    ]
    assert [line for line in capsys.readouterr().err.splitlines() if "negative" in line] == said
    assert [(r["negative_prompt"], r["negative_prompt_seen"]) for r in manifest(out)] == [
        (negative, seen)
    ] * 2
    # all reused: said again from the images' provenance, without the count
    _, _, metrics = run(out, [plan(2)], s, sd_pipeline, real, PIXELS)
    lines = [line for line in capsys.readouterr().err.splitlines() if "negative" in line]
    assert metrics["generated"] == 0 and lines == [
        said[0].replace(", 83 tokens,", ",").replace(" (77 with its start and end tokens)", "")
    ]


def test_img2img_with_one_denoising_step_runs_and_fewer_fail_at_params(tmp_path, real):
    s = settings(mode="img2img", strength=0.5, num_inference_steps=2)
    pipeline = tiny_sd_pipeline()
    engine = Engine(pipeline, s, SAMPLE_SIZE)
    sources = sorted((real / "images").iterdir())[:2]
    images, _ = engine(["a photo of sks apple tree"] * 2, [1, 2], sources)
    assert images.shape == (2, SAMPLE_SIZE, SAMPLE_SIZE, 3)
    assert engine_record(s, SAMPLE_SIZE)["denoising_steps"] == 1
    with pytest.raises(ParamsError, match=r"'generate\.strength' x 'generate\.num_inference_steps"):
        settings(mode="img2img", strength=0.04, num_inference_steps=20)


def test_vae_residual_puts_the_denoisers_change_on_the_real_pixels(real):
    """generate.vae_residual: each image is its source + (the plain img2img image - the source's
    VAE round trip), so the VAE's own loss (the tiny random VAE's: everything) stays out."""
    s = settings(mode="img2img", strength=0.5, num_inference_steps=2, vae_residual=False)
    sources = sorted((real / "images").iterdir())[:2]
    prompts = ["a photo of sks apple tree"] * 2
    plain_engine = Engine(tiny_sd_pipeline(), s, SAMPLE_SIZE)
    plain, _ = plain_engine(prompts, [1, 2], sources)
    kept, _ = Engine(tiny_sd_pipeline(), dataclasses.replace(s, vae_residual=True), SAMPLE_SIZE)(
        prompts, [1, 2], sources
    )
    source = np.stack([np.asarray(plain_engine._condition(p), dtype=np.float32) for p in sources])
    round_trip = np.stack([plain_engine._round_trip(p) for p in sources]) * 255
    expected = np.clip(source + plain.astype(np.float32) - round_trip, 0, 255)
    assert np.abs(kept - expected).max() <= 1  # the plain image was rounded to uint8
    # the untrained VAE loses the source: the plain images are far from it, the kept ones near
    assert np.abs(kept - source).mean() < np.abs(plain - source).mean() / 2
    assert engine_description(dataclasses.replace(s, vae_residual=True), 8)["vae_residual"]
    assert "vae_residual" not in engine_description(s, 8)  # images made without it keep their keys
    with pytest.raises(ParamsError, match=r"'generate\.vae_residual' is true, but generate\.mode"):
        settings(mode="txt2img", vae_residual=True)


def lora_adapter(folder: Path, model: Path, train_text_encoder: bool) -> Path:
    """An untrained LoRA adapter folder of the tiny SD model, as the personalize stage writes it."""
    pipeline = load_pipeline(str(model), folder / "no-builtin")
    lora = {"r": 4, "lora_alpha": 4, "init_lora_weights": "gaussian"}
    lora["target_modules"] = ["to_q", "to_k", "to_v", "to_out.0"]
    settings = dataclasses.replace(
        load_test_params().personalize,
        method="lora",
        train_text_encoder=train_text_encoder,
        lora=lora,
    )
    trainable = setup_method(pipeline, settings, "sks", "apple tree", torch.float32)
    adapter = folder / ("with-text" if train_text_encoder else "unet-only")
    files = save_adapter(pipeline, trainable, "lora", adapter)
    AdapterInfo(
        subject=SUBJECT,
        identifier="sks",
        class_noun="apple tree",
        instance_prompt="a photo of sks apple tree",
        method="lora",
        family="sd",
        pipeline_class=type(pipeline).__name__,
        base_model=str(model),
        base_fingerprint=None,
        vae=None,
        weight_files=files,
        sha256=files_sha256(adapter, files),
        resolution=32,
        max_train_steps=0,
        train_text_encoder=train_text_encoder,
        lora=settings.lora,
        textual_inversion=None,
        seed=0,
    ).write(adapter)
    return adapter


def ours(capsys) -> list[str]:
    """synthdet's lines on stderr (without the libraries' progress bars)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("loaded ")]


def test_unet_only_lora_loads_with_one_line_of_our_own(tmp_path, capsys):
    import logging

    model = tmp_path / "sd"
    tiny_sd_pipeline().save_pretrained(model)
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("diffusers").addHandler(handler)
    try:
        unet_only = lora_adapter(tmp_path, model, train_text_encoder=False)
        # diffusers' own loader says it, and users read it as "my LoRA did not load"
        load_pipeline(str(model), tmp_path).load_lora_weights(
            str(unet_only), weight_name=LORA_WEIGHT_NAME
        )
        assert any("No LoRA keys associated to CLIPTextModel" in text for text in records)
        records.clear()
        capsys.readouterr()
        load_personalized_pipeline(unet_only, tmp_path)
        assert not any("No LoRA keys" in text for text in records), records
        assert ours(capsys) == [
            f"loaded {unet_only} (lora): UNet LoRA (32 layers); no text-encoder LoRA"
        ]
        with_text = lora_adapter(tmp_path, model, train_text_encoder=True)
        capsys.readouterr()
        load_personalized_pipeline(with_text, tmp_path)
        assert ours(capsys) == [
            f"loaded {with_text} (lora): UNet LoRA (32 layers); text-encoder LoRA (8 layers)"
        ]
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
