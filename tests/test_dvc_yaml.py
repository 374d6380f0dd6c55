"""dvc.yaml lists exactly the code each stage runs, so only what changed reruns."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

SRC = REPO / "src"


def synthdet_imports(module_file: Path) -> set[str]:
    """synthdet module names imported by a file (including `from synthdet import x` and
    `from synthdet.package import module`)."""
    found = set()
    for node in ast.walk(ast.parse(module_file.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("synthdet.")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("synthdet"):
            found.add(node.module)
            # a submodule imported from its package (names that are not modules are dropped)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found - {"synthdet"}


def module_file(name: str) -> Path:
    """The file of a module: `a/b.py`, or `a/b/__init__.py` for a package."""
    path = SRC / name.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def code_closure(stage_module: str) -> set[str]:
    """Source files a stage module runs: itself, every synthdet module it reaches and the
    `__init__.py` of their packages (`synthdet` and `synthdet.stages` aside: every stage runs
    them), and what `synthdet/__init__.py` imports (the kernel pins, which decide float bits)."""
    todo, seen = [stage_module, *synthdet_imports(SRC / "synthdet" / "__init__.py")], set()
    while todo:
        name = todo.pop()
        if name in seen or not module_file(name).is_file():
            continue
        seen.add(name)
        todo.extend(synthdet_imports(module_file(name)))
        parent = name.rpartition(".")[0]
        if parent not in ("synthdet", "synthdet.stages"):
            todo.append(parent)
    return {str(module_file(name).relative_to(REPO)) for name in seen}


def test_stage_code_deps_are_exact():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        module = body["cmd"].split("python -m ")[1].split()[0]
        listed = {dep for dep in body["deps"] if dep.startswith("src/")}
        assert listed == code_closure(module), f"stage {name}: dvc.yaml deps vs imports"


def test_every_detector_stage_declares_the_prepare_metrics_it_reads():
    """train_detector.min_images_per_epoch: null is the train split's size, which the train
    stages read from prepare's metrics: each passes the file and lists it as a dep."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    bodies = {name: stage.get("do", stage) for name, stage in stages.items()}
    trains = {n: b for n, b in bodies.items() if "synthdet.stages.train_detector" in b["cmd"]}
    assert len(trains) == 6
    for name, stage in trains.items():
        assert "--prepare-metrics ${paths.metrics}/prepare.json" in stage["cmd"], name
        assert "${paths.metrics}/prepare.json" in stage["deps"], name


def test_mix_matrix_expands_to_one_stage_per_share_fraction_and_seed(tmp_path):
    """The default trains no mix variant; setting the mix params adds exactly these stages."""
    shutil.copy(REPO / "dvc.yaml", tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train_detector"].update(
        seeds=[1, 2], mix_real_shares=[0.5, 1.0], mix_synthetic_fractions=[0.1]
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    command = [dvc, "stage", "list", "--name-only"]
    done = subprocess.run(command, cwd=tmp_path, check=True, capture_output=True, text=True)
    listed = done.stdout.split()
    assert sorted(name for name in listed if name.startswith("train-mix@")) == [
        f"train-mix@{share}-0.1-{seed}" for share in ("0.5", "1.0") for seed in (1, 2)
    ]


def test_dvc_lock_holds_only_the_stages_of_dvc_yaml():
    dvc = Path(sys.executable).parent / "dvc"
    command = [dvc, "stage", "list", "--name-only"]
    done = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    locked = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    assert set(locked) <= set(done.stdout.split()), "dvc.lock has stages dvc.yaml no longer has"
