"""The whole DVC pipeline on a micro configuration, in a temporary copy of the project.

The DAG's shape is checked by `dvc repro --dry` (seconds, in `make test`); running every stage
(minutes of stage processes), rerunning, killing and pushing it are `slow` (`make test-pipeline`,
which CI runs)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo
from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro
from PIL import Image

from tests.conftest import MICRO_BASE, MICRO_RESOLUTION, REPO, copy_dvc_project

# Small enough for CI, large enough that every stage does its real work.
MICRO_OVERRIDES = {
    "shared": {
        "resolution": MICRO_RESOLUTION,
        "subjects": {
            "apple_tree": {
                "identifier": "sks",
                "class_noun": "apple tree",
                "images": 2,
                "stem_pattern": ".*",
            }
        },
    },
    "prepare": {"val_groups": 1, "test_groups": 1},
    "base": MICRO_BASE,
    "class_images": {"count": 2, "num_inference_steps": 2, "batch_size": 2},
    "personalize": {
        "max_train_steps": 2,
        "checkpointing_steps": 1,
        "batch_size": 1,
        "class_batch_size": 1,
        "validation_steps": 1,
        "validation_seeds": [0],
    },
    "generate": {"num_images": 3, "num_inference_steps": 2, "strength": 0.5, "batch_size": 2},
    "annotate_with_baseline": {"confidence": 0.0},
    "train_detector": {
        # one epoch: params.yaml's close_mosaic 2 would leave mosaic off from epoch 0 anyway
        "yolo": {"epochs": 1, "imgsz": 64, "batch": 4, "workers": 0, "mosaic": 0.0},
        "seeds": [42],
        "variants": [],  # the few-shot variants cover the generated images' stages
        # min_images_per_epoch: params.yaml's null, the 8 train tiles read from prepare.json
    },
    # 8 train tiles, a handful of 2: 3 extra images of each source; the real curve is handful
    # -> real only (its counts are tested without DVC, tests/test_variants.py)
    # copy-paste and pseudo-label stages are tested without DVC (test_copy_paste, test_detection)
    "few_shot": {"extra_images": 3, "real_image_counts": [], "sources": ["synthetic"]},
    "evaluate": {"grid_images": 3, "classifier_epochs": 1, "classifier_folds": 2},
}


def write_micro_project(root: Path) -> None:
    copy_dvc_project(root, folders=("plots", "data/corrections"))
    # the report's noise table: measured apart from the pipeline (benchmarks/protocol.py)
    (root / "metrics/protocol").mkdir(parents=True)
    shutil.copy(REPO / "metrics/protocol/noise.json", root / "metrics/protocol")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in MICRO_OVERRIDES.items():
        for key, value in values.items():
            if isinstance(value, dict) and section != "shared":
                params[section][key].update(value)
            else:
                params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # 6 photos x 2 tiles of the embedded dataset, downscaled (labels are normalised).
    photos = sorted({p.stem.rsplit("_", 1)[0] for p in (REPO / "data/raw/images").iterdir()})
    for sub in ("images", "labels"):
        (root / "data/raw" / sub).mkdir(parents=True)
    for photo in photos[:6]:
        for tile in (0, 1):
            stem = f"{photo}_{tile}"
            with Image.open(REPO / "data/raw/images" / f"{stem}.jpg") as image:
                image.resize((64, 64)).save(root / "data/raw/images" / f"{stem}.jpg")
            shutil.copy(REPO / "data/raw/labels" / f"{stem}.txt", root / "data/raw/labels")


def repro_env() -> dict[str, str]:
    """The environment with this interpreter's bin/ first, so `dvc` and `python` are ours; one
    torch thread per stage process, as the suite's other worker uses the other core."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "SYNTHDET_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }


def run(cmd: list[str], cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=repro_env(), capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def new_micro_project(root: Path) -> Path:
    write_micro_project(root)
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    return root


@pytest.fixture(scope="module")
def dry_project(tmp_path_factory) -> Path:
    """The micro project before any stage ran: `dvc repro --dry` shows the DAG in seconds."""
    return new_micro_project(tmp_path_factory.mktemp("dry"))


@pytest.fixture(scope="module")
def micro_project(tmp_path_factory) -> Path:
    """The micro project after a whole `dvc repro` (minutes of stage processes: slow tests)."""
    root = new_micro_project(tmp_path_factory.mktemp("project"))
    (root / "repro.log").write_text(run(["dvc", "repro"], root))
    return root


def repro_plan(project: Path, *targets: str, downstream: bool = False) -> list[str]:
    """The stages `dvc repro [--downstream] [targets]` goes through, in its order (DVC's own
    planner; `dvc repro --dry` cannot plan before prepare's outputs exist)."""
    with Repo(str(project)) as repo:
        # Targets resolve against the working directory, not the repo: give them absolute.
        paths = [f"{project / 'dvc.yaml'}:{target}" for target in targets] or [project / "dvc.yaml"]
        stages = collect_stages(repo, list(map(str, paths)), recursive=False, glob=False)
        graph = get_active_graph(repo.index.graph)
        return [stage.name for stage in plan_repro(graph, stages, downstream=downstream)]


def would_run(project: Path, *args: str) -> set[str]:
    """The stages `dvc repro --dry *args` would run."""
    out = run(["dvc", "repro", "--dry", *args], project)
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


def test_the_image_checks_run_before_any_detector_trains(dry_project):
    """A leak found by check-images stops `dvc repro` before a detector has trained."""
    order = repro_plan(dry_project)
    first_training = min(i for i, name in enumerate(order) if name.startswith("train-"))
    assert order.index("check-images@0") < first_training
    assert order[0] == "prepare" and order[-1] == "report" and len(order) == len(set(order))


def test_changing_generated_images_reruns_only_downstream(dry_project):
    """What depends on generate (dvc.yaml's deps): a new num_images reruns exactly these."""
    assert set(repro_plan(dry_project, "generate@0", downstream=True)) == {
        "generate@0",
        "check-images@0",
        "annotate-with-baseline@0",
        "train-few-shot@0-synthetic-42",
        "evaluate",
        "report",
    }


@pytest.mark.slow
def test_repro_writes_every_metric(micro_project):
    headline = json.loads((micro_project / "metrics/evaluate.json").read_text())
    assert headline["fid"] >= 0.0 and len(headline) <= 16
    metrics = json.loads((micro_project / "metrics/evaluation.json").read_text())
    for variant in ["real", "handful", "handful-synthetic"]:
        for key in ("map50_95", "map50", "map75"):
            assert 0.0 <= metrics[f"{variant}.{key}"] <= 1.0
    assert "handful-synthetic-vs-handful.diff_map50_95" in metrics
    assert "## The few-shot question" in (micro_project / "metrics/report.md").read_text()
    assert (micro_project / "metrics/synthetic_grid.png").stat().st_size > 0
    manifest = (micro_project / "data/generated/draw0/manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 3


@pytest.mark.slow
def test_second_repro_is_a_no_op(micro_project):
    out = run(["dvc", "status"], micro_project)
    assert "Data and pipelines are up to date" in out


@pytest.mark.slow
def test_a_new_num_images_leaves_the_upstream_stages_cached(micro_project):
    params_file = micro_project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["generate"]["num_images"] = 4
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        # --force-downstream: list what depends on generate too, not only what changed.
        stages = would_run(micro_project, "--force-downstream")
    finally:
        params_file.write_text(original)
    assert stages == set(repro_plan(micro_project, "generate@0", downstream=True))


@pytest.mark.slow
def test_adding_a_draw_runs_only_the_new_draws_stages(micro_project):
    """few_shot.draws [0] -> [0, 1] on the run project: DVC sees draw 1's stages and the
    evaluation and report changed, nothing of draw 0 (its lock entries stay valid). `dvc status`,
    as `dvc repro --dry` stops at the first stage whose dep a new stage would make."""
    params_file = micro_project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["few_shot"]["draws"] = [0, 1]
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = subprocess.run(
            ["dvc", "status", "--json"],
            cwd=micro_project,
            env=repro_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        listed = run(["dvc", "stage", "list", "--name-only"], micro_project).split()
    finally:
        params_file.write_text(original)
    new = {name for name in listed if "@1" in name and not name.startswith("class-images")}
    assert {"handful@1", "personalize@1-apple_tree", "train-few-shot@1-synthetic-42"} <= new
    changed = {name.rpartition(":")[2] for name in json.loads(status.stdout)}
    assert changed == new | {"evaluate", "report"}


def file_hashes(root: Path, folders: list[str]) -> dict[str, str]:
    import hashlib

    return {
        str(path.relative_to(root)): hashlib.md5(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


@pytest.mark.slow
def test_remote_round_trip_to_a_fresh_clone(micro_project, tmp_path):
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    run(["dvc", "remote", "add", "-d", "local", str(remote)], micro_project)
    run(["git", "add", "-A"], micro_project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], micro_project)
    run(["dvc", "push"], micro_project)
    run(["git", "clone", "-q", str(micro_project), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone)
    shared = ["data/prepared", "data/generated", "data/extra", "models"]
    assert file_hashes(clone, shared) == file_hashes(micro_project, shared)


OUTPUTS = [
    "data/prepared",
    "data/handfuls",
    "data/generated",
    "data/extra",
    "models",
    "data/captions",
]


def stage_processes(parent: int) -> list:
    import psutil

    found = []
    for child in psutil.Process(parent).children(recursive=True):
        try:
            if "synthdet.stages" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:  # it ended (or is a zombie) between listing and reading
            continue
    return found


def kill(processes: list) -> None:
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):  # a stage may end first: a fast one
            process.send_signal(signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["prepare", "generate@0", "annotate-with-baseline@0"])
def test_stage_killed_at_random_points_reruns_to_identical_outputs(micro_project, stage):
    import random
    import time

    stage_outputs = [path for path in OUTPUTS if not path.startswith("models")]
    before = file_hashes(micro_project, stage_outputs)
    started = time.monotonic()
    run(["dvc", "repro", "--force", "--single-item", stage], micro_project)
    duration = time.monotonic() - started
    assert file_hashes(micro_project, stage_outputs) == before, "the stage is not deterministic"
    rng = random.Random(stage)
    for fraction in (rng.uniform(0.3, 0.7), rng.uniform(0.7, 1.0)):
        dvc = subprocess.Popen(
            ["dvc", "repro", "--force", "--single-item", stage],
            cwd=micro_project,
            env=repro_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(duration * fraction)
        kill(stage_processes(dvc.pid))
        dvc.wait()
        run(["dvc", "repro"], micro_project)
        assert file_hashes(micro_project, stage_outputs) == before, f"killed at {fraction:.2f}"
        assert "Data and pipelines are up to date" in run(["dvc", "status"], micro_project)
    leftovers = [p for p in micro_project.glob("data/**/.*") if p.is_dir()]
    assert not leftovers, f"temporary outputs left behind: {leftovers}"


@pytest.mark.slow
def test_ctrl_c_leaves_a_message_and_no_partial_output(micro_project, tmp_path):
    import time

    out = tmp_path / "prepared"
    stage = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "synthdet.stages.prepare",
            "--raw",
            str(REPO / "data/raw"),
            "--out",
            str(out),
            "--metrics",
            str(tmp_path / "prepare.json"),
        ],
        cwd=micro_project,
        env=repro_env(),
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C in a terminal: SIGINT at its default. A test run started in the background
        # (`cmd &`) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not list(out.glob(".*")):
        assert stage.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    stage.send_signal(signal.SIGINT)
    _, stderr = stage.communicate()
    assert stage.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not any(out.glob(".*")), "a temporary output was left behind"
    assert not (tmp_path / "prepare.json").exists()
