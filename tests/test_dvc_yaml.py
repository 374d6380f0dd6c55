"""dvc.yaml lists exactly the code each stage runs, so only what changed reruns."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from dvc.repo import Repo

from tests.conftest import REPO

SRC = REPO / "src"


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _runtime_nodes(node: ast.AST):
    """The nodes under `node` that run: the body of `if TYPE_CHECKING:` only feeds type checkers."""
    for child in ast.iter_child_nodes(node):
        if _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _runtime_nodes(other)
            continue
        yield child
        yield from _runtime_nodes(child)


def synthdet_imports(module_file: Path) -> set[str]:
    """synthdet module names a file imports when it runs (including `from synthdet import x` and
    `from synthdet.package import module`; not what `if TYPE_CHECKING:` imports)."""
    found = set()
    for node in _runtime_nodes(ast.parse(module_file.read_text())):
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


def runs_code(path: Path) -> bool:
    """Whether a file holds more than a docstring (a package's `__init__.py` often does not)."""
    body = ast.parse(path.read_text()).body
    return any(
        not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body
    )


def code_closure(stage_module: str) -> set[str]:
    """Source files a stage module runs: itself, every synthdet module it reaches and the
    `__init__.py` of their packages (`synthdet` and `synthdet.stages` aside: every stage runs
    them; one holding only a docstring runs nothing), and what `synthdet/__init__.py` imports (the
    kernel pins, which decide float bits)."""
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
    files = {module_file(name) for name in seen}
    return {str(f.relative_to(REPO)) for f in files if f.name != "__init__.py" or runs_code(f)}


def folder_files(folder: str) -> set[str]:
    """The files DVC hashes for a folder dep (`__pycache__` is in .dvcignore), a docstring-only
    `__init__.py` aside (see `code_closure`)."""
    return {
        str(path.relative_to(REPO))
        for path in (REPO / folder).rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and (path.name != "__init__.py" or runs_code(path))
    }


def as_deps(closure: set[str]) -> list[str]:
    """The closure as dvc.yaml lists it: a folder whose every file is in it as the folder, the
    other files one by one (so a whole concern reads as one line)."""
    folders = sorted(
        {str(Path(f).parent) for f in closure} - {"src/synthdet", "src/synthdet/stages"}
    )
    whole = [folder for folder in folders if folder_files(folder) <= closure]
    rest = {f for f in closure if not any(f.startswith(f"{folder}/") for folder in whole)}
    return sorted(whole) + sorted(rest)


def listed_code(deps: list[str]) -> set[str]:
    """The source files a stage's deps cover, folders expanded."""
    listed = set()
    for dep in deps:
        if dep.startswith("src/"):
            listed |= folder_files(dep) if (REPO / dep).is_dir() else {dep}
    return listed


def stage_code() -> dict[str, tuple[list[str], set[str]]]:
    """Each stage (a foreach or matrix family once): its `src/` deps and its code closure."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    code = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        module = body["cmd"].split("python -m ")[1].split()[0]
        deps = [dep for dep in body["deps"] if dep.startswith("src/")]
        code[name] = (deps, code_closure(module))
    return code


def test_stage_code_deps_are_exact():
    for name, (deps, closure) in stage_code().items():
        assert listed_code(deps) == closure, f"stage {name}: dvc.yaml deps vs imports"
        assert sorted(deps) == sorted(as_deps(closure)), (
            f"stage {name}: list the code as {as_deps(closure)}"
        )


def test_editing_a_module_reruns_only_the_stages_that_import_it():
    """A module's stages by dvc.yaml (a file or folder dep covering it) are the stages whose code
    imports it; a stage-specific module (an edit reruns few stages) names its stages here."""
    code = stage_code()
    modules = {str(path.relative_to(REPO)) for path in (SRC / "synthdet").rglob("*.py")}
    rerun, importers = {}, {}
    for module in modules:
        rerun[module] = {name for name, (deps, _) in code.items() if module in listed_code(deps)}
        importers[module] = {name for name, (_, closure) in code.items() if module in closure}
        assert rerun[module] == importers[module], module
    train = {name for name in code if name.startswith("train-")}
    assert rerun["src/synthdet/image_checks/fidelity.py"] == {"check-images"}
    assert rerun["src/synthdet/personalization/captioning.py"] == {"caption"}
    assert rerun["src/synthdet/stages/handful.py"] == {"handful"}
    assert rerun["src/synthdet/analysis/report.py"] == {"report"}
    assert rerun["src/synthdet/analysis/stats.py"] == {"evaluate"}
    assert rerun["src/synthdet/extra/copy_paste.py"] == {"copy-paste"}
    assert rerun["src/synthdet/image_checks/metrics.py"] == {"generate", "check-images"}
    assert rerun["src/synthdet/detectors/detection.py"] == train | {
        "annotate-with-baseline",
        "pseudo-label",
        "evaluate",
    }
    # the base every stage runs: an edit here reruns everything, by design
    assert rerun["src/synthdet/core/errors.py"] == set(code)
    assert rerun["src/synthdet/params/checks.py"] == set(code)


def dvc_project(root: Path) -> None:
    """dvc.yaml, params.yaml, .dvcignore and src/ as a DVC project (no data: code is hashed)."""
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(SRC, root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=root, check=True)


def code_hashes(root: Path) -> dict[str, dict[str, str]]:
    """DVC's own hash of each code dep (file or folder), by stage (a matrix family by its name)."""
    hashes: dict[str, dict[str, str]] = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            for dep in stage.deps:
                if dep.def_path.startswith("src/"):
                    family = stage.name.split("@")[0]
                    hashes.setdefault(family, {})[dep.def_path] = dep.get_hash().value
    return hashes


def test_dvc_sees_an_edit_only_in_the_stages_that_import_the_module(tmp_path):
    dvc_project(tmp_path)
    package = tmp_path / "src/synthdet"
    before = code_hashes(tmp_path)
    # bytecode beside the sources (every import writes it) changes no folder dep (.dvcignore)
    for folder in [package, *(path for path in package.iterdir() if path.is_dir())]:
        (folder / "__pycache__").mkdir()
        (folder / "__pycache__/module.cpython-311.pyc").write_bytes(b"bytecode")
    assert code_hashes(tmp_path) == before

    def edit(module: str) -> set[str]:
        nonlocal before
        path = package / module
        path.write_text(path.read_text() + "\n# an edit\n")
        after = code_hashes(tmp_path)
        changed = {stage for stage in after if after[stage] != before[stage]}
        before = after
        return changed

    assert edit("image_checks/fidelity.py") == {"check-images"}  # a file dep
    train = {stage for stage in before if stage.startswith("train-")}
    # a folder dep (detectors/ of train-* and evaluate) and a file dep (the report's)
    assert edit("detectors/variants.py") == train | {"evaluate", "report"}


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
        f"train-mix@0-{share}-0.1-{seed}" for share in ("0.5", "1.0") for seed in (1, 2)
    ]


def expanded_stages(root: Path, draws: list[int]) -> dict[str, tuple]:
    """Each stage of dvc.yaml with few_shot.draws=`draws`, as a DVC project at `root` (made):
    {name: (cmd, deps and params, outs)}."""
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["few_shot"]["draws"] = draws
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=root, check=True)
    stages = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            deps = sorted(
                f"{dep.def_path}:{sorted(dep.params)}" if hasattr(dep, "params") else dep.def_path
                for dep in stage.deps
            )
            stages[stage.name] = (stage.cmd, deps, sorted(out.def_path for out in stage.outs))
    return stages


def test_adding_a_draw_adds_only_its_own_stages(tmp_path):
    """few_shot.draws [0] -> [0, 1]: every stage of draw 0 (and real, base, class images) keeps
    its name, command, deps, params and outs, so `dvc repro` trains only draw 1's stages (and
    evaluates and reports again); draw 1 writes only into its own draw1 folders."""
    one = expanded_stages(tmp_path / "one", [0])
    two = expanded_stages(tmp_path / "two", [0, 1])
    shared = {"evaluate", "report"}  # read every draw: they run again
    assert set(one) <= set(two)
    for name in set(one) - shared:
        assert one[name] == two[name], name
    added = set(two) - set(one)
    drawn = {name.split("@")[0] for name in one if "@0" in name}
    assert {
        "handful",
        "caption",
        "personalize",
        "generate",
        "check-images",
        "train-handful",
        "train-real-curve",
        "annotate-with-baseline",
        "copy-paste",
        "pseudo-label",
        "train-few-shot",
        "train-synthetic",
    } == drawn
    assert added == {name.replace("@0", "@1", 1) for name in one if "@0" in name}
    outs_one = {out for _, _, outs in one.values() for out in outs}
    for name in added:
        outs = two[name][2]
        assert outs and all("draw1" in out for out in outs), name
        assert not set(outs) & outs_one, name
        # few_shot.draws is no param of a draw's stage: adding a draw changes none of them
        assert not any("draws" in dep for dep in two[name][1]), name
    assert two["train-few-shot@1-synthetic-42"][1][:3] == [
        "data/extra/draw1/synthetic",
        "data/handfuls/draw1",
        "data/prepared/val",
    ]


def test_dvc_lock_holds_only_the_stages_of_dvc_yaml():
    dvc = Path(sys.executable).parent / "dvc"
    command = [dvc, "stage", "list", "--name-only"]
    done = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    locked = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    assert set(locked) <= set(done.stdout.split()), "dvc.lock has stages dvc.yaml no longer has"
