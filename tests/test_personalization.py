"""Personalisation: every method on tiny SD 1.x / v-prediction / SDXL models built from configs.

For each method: the loss at fixed noise goes down, the artifact loads into a stock pipeline of
the family's class, and the identifier/placeholder changes the images at a fixed seed. Plus prior
preservation batches, exact resume from a checkpoint, textual inversion training every vector,
and the clear errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from synthdet.artifacts.adapter import AdapterInfo
from synthdet.core.data import DataError
from synthdet.diffusion.hashing import files_sha256
from synthdet.params import ParamsError, TextualInversionParams
from synthdet.params.methods import PRIOR_METHODS
from synthdet.personalization.adapters import (
    EMBEDDINGS_NAMES,
    LORA_WEIGHT_NAME,
    load_personalized_pipeline,
)
from synthdet.personalization.examples import Examples
from synthdet.personalization.training import (
    make_optimizer,
    resolve_mixed_precision,
    sample_batch,
    step_generator,
)
from synthdet.stages import caption, class_images, personalize
from tests.conftest import (
    MICRO_BASE,
    MICRO_RESOLUTION,
    REPO,
    accelerate_launch,
    copy_dvc_project,
    load_test_params,
    write_tiny_yolo_folder,
)
from tests.tiny_models import SAMPLE_SIZE, tiny_sd_pipeline, tiny_sdxl_pipeline

SUBJECT = "apple_tree"
FAMILIES = {
    "sd": lambda: tiny_sd_pipeline(),
    "sd-v": lambda: tiny_sd_pipeline(prediction_type="v_prediction"),
    "sdxl": lambda: tiny_sdxl_pipeline(),
}
STEPS = 8  # = personalize.max_train_steps of tests/config/params.yaml


def make_params(model: Path, method: str, **personalize_changes):
    """The test params (32 px = SAMPLE_SIZE, a handful of 3, STEPS steps, one validation image
    of 2 steps) for `method` on the tiny model folder `model`."""
    params = load_test_params()
    assert (params.shared.resolution, params.personalize.max_train_steps) == (SAMPLE_SIZE, STEPS)
    defaults = {
        "method": method,
        "base_model": str(model),
        # high: a few steps must visibly change a randomly initialised model
        "learning_rate": 0.02 if method == "dreambooth" else 0.05,
    }
    settings = dataclasses.replace(params.personalize, **(defaults | personalize_changes))
    # class images only for the methods with prior preservation (params refuse unused ones)
    images = dataclasses.replace(
        params.class_images, count=params.class_images.count if method in PRIOR_METHODS else 0
    )
    return dataclasses.replace(params, personalize=settings, class_images=images)


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch):
    """These models are tiny: one thread is faster than two that wait for each other (and much
    faster on a machine shared with other jobs). Restored afterwards for the other tests."""
    threads = torch.get_num_threads()
    monkeypatch.setenv("SYNTHDET_TORCH_THREADS", "1")
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("personalization")
    write_tiny_yolo_folder(root / "prepared" / SUBJECT, photos=1, tiles=3, size=40)
    return root


@pytest.fixture(scope="module")
def models(root) -> dict[str, Path]:
    folders = {}
    for name, build in FAMILIES.items():
        folders[name] = root / "models" / name
        build().save_pretrained(folders[name])
    return folders


def stage_inputs(root: Path, params) -> tuple[Path, Path]:
    """caption + class-images, once per method / model: (captions file, class images folder)."""
    settings = params.personalize
    captions = root / "captions" / settings.method
    if not captions.exists():
        caption.run(params, root / "prepared", captions)
    class_dir = (
        root / "class_images" / f"{Path(settings.base_model).name}-{params.class_images.count}"
    )
    if not class_dir.exists():
        class_images.run(params, SUBJECT, root / "no-builtin", class_dir)
    return captions / f"{SUBJECT}.jsonl", class_dir


def train(root: Path, params, name: str, **kwargs) -> tuple[Path, dict]:
    """Inputs + personalize; outputs under root/name."""
    captions, class_dir = stage_inputs(root, params)
    metrics = personalize.run(
        params,
        SUBJECT,
        root / "prepared" / SUBJECT,
        captions,
        class_dir,
        root / "no-builtin",
        root / name / "adapter",
        root / name / "metrics",
        **kwargs,
    )
    return root / name / "adapter", metrics


def sample(pipeline, prompt: str) -> np.ndarray:
    image = pipeline(
        prompt,
        height=SAMPLE_SIZE,
        width=SAMPLE_SIZE,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    return np.asarray(image, dtype=np.int16)


THREE_VECTORS = {"textual_inversion": TextualInversionParams(num_vectors=3, initializer_token=None)}
CASES = [
    ("sd", "dreambooth_lora", {"train_text_encoder": True}),
    ("sd", "dreambooth", {}),
    ("sd", "textual_inversion", THREE_VECTORS),
    ("sdxl", "lora", {"train_text_encoder": True}),
    ("sd", "lora", {}),
    ("sd-v", "dreambooth_lora", {}),
    ("sdxl", "dreambooth_lora", {}),
    ("sdxl", "textual_inversion", THREE_VECTORS),
    ("sdxl", "dreambooth", {"train_text_encoder": True}),
]
# Every method and both families run by default; the other combinations with -m slow.
SLOW_CASES = {
    ("sd", "lora"),
    ("sd-v", "dreambooth_lora"),
    ("sdxl", "dreambooth_lora"),
    ("sdxl", "textual_inversion"),
    ("sdxl", "dreambooth"),
}


@pytest.mark.parametrize(
    ("family", "method", "changes"),
    [
        pytest.param(*case, marks=[pytest.mark.slow] if case[:2] in SLOW_CASES else [])
        for case in CASES
    ],
    ids=[f"{family}-{method}" for family, method, _ in CASES],
)
def test_method_trains_saves_and_loads_into_stock_pipeline(root, models, family, method, changes):
    params = make_params(models[family], method, **changes)
    folder, metrics = train(root, params, f"{family}-{method}")
    info = AdapterInfo.read(folder).to_json()
    assert info["method"] == method and info["subject"] == SUBJECT
    assert info["family"] == ("sdxl" if family == "sdxl" else "sd")
    assert info["sha256"] == files_sha256(folder, info["weight_files"])
    if LORA_WEIGHT_NAME in info["weight_files"]:
        # peft's set of target modules is written sorted: the bytes do not hang on PYTHONHASHSEED
        with safe_open(folder / LORA_WEIGHT_NAME, "pt") as weights:
            saved = json.loads(weights.metadata()["lora_adapter_metadata"])
        modules = [value for key, value in saved.items() if key.endswith(".target_modules")]
        assert modules and all(value == sorted(value) for value in modules), saved
    dreambooth_style = method in PRIOR_METHODS
    assert info["prior_preservation"] is dreambooth_style
    assert metrics["class_images"] == (2 if dreambooth_style else 0)

    # The loss at fixed noise and timesteps on the subject's images went down.
    assert metrics["eval_loss_personalised"] < metrics["eval_loss_base"], metrics
    lines = (root / f"{family}-{method}" / "metrics" / "loss.tsv").read_text().splitlines()
    assert len(lines) == 1 + STEPS
    assert (root / f"{family}-{method}" / "metrics" / "validation.png").stat().st_size > 0
    seen = (root / f"{family}-{method}" / "metrics" / "captions.jsonl").read_text().splitlines()
    assert len(seen) == metrics["images"] and metrics["captions_truncated"] == 0
    assert all(row["seen"] == row["caption"] for row in map(json.loads, seen))

    # A stock diffusers pipeline of the family's class takes the artifact with its own loader.
    stock_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    stock = stock_class.from_pretrained(models[family])
    stock.set_progress_bar_config(disable=True)
    prompt = info["instance_prompt"]
    before = sample(stock, prompt)
    if method == "dreambooth":
        components = {
            name: type(getattr(stock, name)).from_pretrained(folder / name)
            for name in ("unet", "text_encoder", "text_encoder_2")
            if (folder / name).is_dir()
        }
        assert ("text_encoder" in components) is changes.get("train_text_encoder", False)
        personalised = stock_class.from_pretrained(models[family], **components)
        personalised.set_progress_bar_config(disable=True)
    else:
        if method == "textual_inversion":
            stock.load_textual_inversion(folder, weight_name=EMBEDDINGS_NAMES[0])
            if family == "sdxl":
                stock.load_textual_inversion(
                    folder,
                    weight_name=EMBEDDINGS_NAMES[1],
                    text_encoder=stock.text_encoder_2,
                    tokenizer=stock.tokenizer_2,
                )
        else:
            stock.load_lora_weights(folder)
        personalised = stock
    after = sample(personalised, prompt)
    assert np.abs(after - before).max() > 0, "the adapter does not change the image"

    # Our loader gives the same pipeline class and the same image.
    loaded = load_personalized_pipeline(folder, root / "no-builtin")
    assert type(loaded) is stock_class
    assert np.abs(sample(loaded, prompt) - after).max() <= 1


def test_textual_inversion_trains_every_vector(root, models):
    folder = root / "sd-textual_inversion" / "adapter"
    if not folder.exists():  # run alone, without the parametrized test that trains it
        params = make_params(models["sd"], "textual_inversion", **THREE_VECTORS)
        train(root, params, "sd-textual_inversion")
    vectors = load_file(folder / EMBEDDINGS_NAMES[0])["<sks>"]
    base = StableDiffusionPipeline.from_pretrained(models["sd"])
    (tree,) = base.tokenizer.encode("tree", add_special_tokens=False)
    start = base.text_encoder.get_input_embeddings().weight[tree].detach()
    assert vectors.shape == (3, start.shape[0])
    for i in range(3):
        assert (vectors[i] - start).abs().max() > 1e-4, f"vector {i} did not train"
    # Every other token keeps its embedding; prompts expand to all three vectors.
    loaded = load_personalized_pipeline(folder, root / "no-builtin")
    table = loaded.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(
        table[: len(base.tokenizer)], base.text_encoder.get_input_embeddings().weight
    )
    assert loaded.maybe_convert_prompt("a <sks>", loaded.tokenizer) == "a <sks> <sks>_1 <sks>_2"
    for line in (root / "captions/textual_inversion" / f"{SUBJECT}.jsonl").read_text().splitlines():
        text = json.loads(line)["caption"]
        assert "tree" not in text and text.startswith("a photo of <sks> ")


def test_prior_batches_hold_instance_and_class_examples_in_proportion():
    def examples(value: float, count: int) -> Examples:
        return Examples(
            torch.full((count, 8, 2, 2), value), torch.zeros(count, 6), [torch.zeros(count, 77)]
        )

    instance, prior = examples(1.0, 6), examples(-1.0, 10)
    for step in range(5):
        generator = step_generator(0, step, 0, 0)
        batch, instances = sample_batch(instance, prior, 3, 2, generator)
        values = batch.latent_distributions[:, 0, 0, 0].tolist()
        assert instances == 3 and values == [1.0, 1.0, 1.0, -1.0, -1.0]
    batch, _ = sample_batch(instance, None, 3, 2, generator)
    assert len(batch) == 3


def test_resume_from_checkpoint_ends_at_the_same_weights(root, models, tmp_path):
    """A run stopped after step 5 (checkpoint at 4) and restarted ends with exactly the weights
    of an uninterrupted run: batches and noise of step k depend on (seed, k) only. With prior
    preservation and gradient accumulation, so both are part of the resumed state."""
    params = make_params(
        models["sd"],
        "dreambooth_lora",
        checkpointing_steps=4,
        max_train_steps=6,
        gradient_accumulation_steps=2,
        validation_steps=1,
    )
    checkpoints = tmp_path / "checkpoints"
    straight, _ = train(root, params, "straight")
    stopped = train(root, params, "resumed", checkpoints=checkpoints, stop_after=5)[1]
    assert stopped == {"steps": 5, "resumed_from": 0}
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-4"]
    resumed, metrics = train(root, params, "resumed", checkpoints=checkpoints)
    assert metrics["resumed_from"] == 4
    assert not checkpoints.exists(), "checkpoints are removed after a complete run"
    a = load_file(straight / LORA_WEIGHT_NAME)
    b = load_file(resumed / LORA_WEIGHT_NAME)
    assert a.keys() == b.keys()
    for key in a:  # tolerance: 1e-6 absolute (same ops on CPU, in practice bit-identical)
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_checkpoint_of_another_configuration_is_not_resumed(root, models, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    params = make_params(models["sd"], "lora", checkpointing_steps=2)
    train(root, params, "other-a", checkpoints=checkpoints, stop_after=3)
    changed = make_params(models["sd"], "lora", checkpointing_steps=2, learning_rate=0.01)
    _, metrics = train(root, changed, "other-b", checkpoints=checkpoints)
    assert metrics["resumed_from"] == 0


def test_loader_refuses_adapter_of_another_base_model(root, models, tmp_path):
    params = make_params(models["sd"], "lora", max_train_steps=2)
    folder, _ = train(root, params, "refuse")
    with pytest.raises(DataError, match="trained on .* but personalize.base_model is"):
        load_personalized_pipeline(folder, root, base_model="builtin:tiny")
    changed = tmp_path / "changed"
    shutil.copytree(models["sd"], changed)
    info = json.loads((folder / "adapter.json").read_text())
    info["base_model"] = str(changed)
    (folder / "adapter.json").write_text(json.dumps(info))
    load_personalized_pipeline(folder, root)  # an identical copy is fine
    tiny_sd_pipeline(seed=1).save_pretrained(changed)  # the base model changed
    with pytest.raises(DataError, match="the base model changed"):
        load_personalized_pipeline(folder, root)
    (folder / info["weight_files"][0]).write_bytes(b"tampered")
    with pytest.raises(DataError, match="sha256"):
        AdapterInfo.read(folder).to_json()


def test_clear_errors_for_8bit_adam_fp16_and_unknown_subject(root, models):
    message = "adamw_8bit needs (bitsandbytes|a CUDA GPU)"
    with pytest.raises(ParamsError, match=message):
        make_optimizer("adamw_8bit", [torch.nn.Parameter(torch.zeros(1))], 0.1)
    if not torch.cuda.is_available():
        with pytest.raises(ParamsError, match="'personalize.mixed_precision' fp16 needs a CUDA"):
            resolve_mixed_precision("fp16")
        assert resolve_mixed_precision("auto") == "no"
    params = make_params(models["sd"], "lora")
    with pytest.raises(ParamsError, match="no subject 'shared.subjects.pear'"):
        personalize.run(params, "pear", root, root, root, root, root / "x", root / "y")


@pytest.mark.slow
def test_changing_one_subject_retrains_only_that_subject(tmp_path):
    """DVC: with two subjects, a change to one subject's params reruns only its stages."""
    project = tmp_path / "project"
    project.mkdir()
    copy_dvc_project(project)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["shared"]["subjects"] = {
        "red": {"identifier": "sks", "class_noun": "apple tree", "images": 2, "stem_pattern": ".*"},
        "green": {
            "identifier": "zwx",
            "class_noun": "apple tree",
            "images": 2,
            "stem_pattern": ".*",
        },
    }
    params["prepare"].update({"val_groups": 1, "test_groups": 1})
    params["shared"]["resolution"] = MICRO_RESOLUTION
    params["base"].update(MICRO_BASE)
    params["class_images"].update({"count": 2, "num_inference_steps": 2})
    params["personalize"].update({"max_train_steps": 2, "batch_size": 1, "validation_steps": 1})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_tiny_yolo_folder(project / "data/raw", photos=4, tiles=2)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def dvc(*args: str) -> str:
        result = subprocess.run(
            ["dvc", *args], cwd=project, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    dvc("init", "-q")
    dvc("repro", "personalize@red", "personalize@green")
    params["shared"]["subjects"]["green"]["identifier"] = "qwv"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc("repro", "personalize@red", "personalize@green")
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    # prepare and caption read all subjects (cheap) and rerun; red's images and captions come
    # out unchanged, so only green retrains, and no class images are drawn again.
    assert ran == {"prepare", "caption", "personalize@green"}, out


@pytest.mark.slow
def test_two_processes_train_one_adapter(root, models, tmp_path):
    """`accelerate launch` with 2 CPU processes: each trains on its own batches, the main process
    alone writes the adapter, the metrics and one MLflow run."""
    import mlflow

    params = make_params(models["sd"], "dreambooth_lora", checkpointing_steps=4)
    captions, class_dir = stage_inputs(root, params)
    raw = json.loads(json.dumps(dataclasses.asdict(params)))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    stage = ["-m", "synthdet.stages.personalize", "--subject", SUBJECT]
    stage += ["--images", str(root / "prepared" / SUBJECT), "--captions", str(captions)]
    stage += ["--class-images", str(class_dir), "--builtin-base", str(root / "no-builtin")]
    stage += ["--out", "adapter", "--metrics", "metrics", "--checkpoints", "checkpoints"]
    runs_before = len(mlflow.search_runs(search_all_experiments=True))
    done = subprocess.run(
        [*accelerate_launch(2), *stage], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == runs_before + 1, runs["tags.mlflow.runName"].tolist()
    assert runs.iloc[0]["params.processes"] == "2"
    lines = (tmp_path / "metrics" / "loss.tsv").read_text().splitlines()
    assert len(lines) == 1 + STEPS
    assert not (tmp_path / "checkpoints").exists(), "a complete run keeps no checkpoint"
    info = AdapterInfo.read(tmp_path / "adapter").to_json()
    assert info["sha256"] == files_sha256(tmp_path / "adapter", info["weight_files"])
    stock = StableDiffusionPipeline.from_pretrained(models["sd"])
    stock.set_progress_bar_config(disable=True)
    before = sample(stock, info["instance_prompt"])
    stock.load_lora_weights(tmp_path / "adapter")
    assert np.abs(sample(stock, info["instance_prompt"]) - before).max() > 0
