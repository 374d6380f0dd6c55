"""The pinned environment and the metrics comparison that CI runs after `make repro`."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from synthdet import reproduce, tracking

ROOT = Path(__file__).resolve().parents[1]


def _locked_versions() -> dict[str, str]:
    pins = re.findall(
        r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", (ROOT / "requirements.lock").read_text(), re.M
    )
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def test_lock_satisfies_every_pyproject_requirement():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = _locked_versions()
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    for line in requirements:
        requirement = Requirement(line)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in locked, f"{name} is in pyproject.toml but not in requirements.lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"requirements.lock pins {name}=={locked[name]}, pyproject.toml asks {line}: make lock"
        )


def test_every_lock_pin_has_hashes():
    text = (ROOT / "requirements.lock").read_text()
    for block in re.split(r"\n(?=[A-Za-z0-9_.-]+==)", text.split("\n", 2)[-1]):
        if "==" in block.split("\n", 1)[0]:
            assert "--hash=sha256:" in block, block.split("\n", 1)[0]


def test_compare_flags_a_planted_difference_and_skips_wall_clock():
    committed = {"real.map": 0.237, "seconds": 81.0, "kept": 13, "method": "lora"}
    same = dict(committed, seconds=95.0)
    assert reproduce.compare("metrics/evaluate.json", committed, same, 0.0) == []
    planted = dict(same, **{"real.map": 0.238})
    (difference,) = reproduce.compare("metrics/evaluate.json", committed, planted, 0.0)
    assert (difference.key, difference.committed, difference.reproduced) == (
        "real.map",
        0.237,
        0.238,
    )
    assert reproduce.compare("metrics/evaluate.json", committed, planted, 0.002) == []
    (missing,) = reproduce.compare(
        "m.json", committed, {k: v for k, v in same.items() if k != "kept"}, 1.0
    )
    assert (missing.key, missing.reproduced) == ("kept", "(missing)")


def test_tables_are_compared_cell_by_cell_with_the_file_tolerance():
    committed = reproduce.read_table("step\tloss\n1\t0.5\n2\t0.25\n", ".tsv")
    assert committed == {"0.step": 1.0, "0.loss": 0.5, "1.step": 2.0, "1.loss": 0.25}
    tolerances = {"default": 0, "files": {"metrics/train/*": 0.01}}
    assert reproduce.tolerance_for("metrics/train/real/seed42.csv", tolerances) == 0.01
    assert reproduce.tolerance_for("metrics/evaluate.json", tolerances) == 0.0


def test_run_state_keys_are_not_compared():
    tolerances = {"run_state": {"metrics/generate.json": ["generated", "reused"]}}
    skipped = reproduce.run_state_keys("metrics/generate.json", tolerances)
    assert reproduce.run_state_keys("metrics/evaluate.json", tolerances) == ()
    committed = {"generated": 52, "reused": 64, "kept": 116}
    fresh = {"generated": 116, "reused": 0, "kept": 116}
    assert reproduce.compare("metrics/generate.json", committed, fresh, 0.0, skipped) == []
    differences = reproduce.compare("metrics/generate.json", committed, fresh, 0.0)
    assert [d.key for d in differences] == ["generated", "reused"]
    (kept,) = reproduce.compare(
        "metrics/generate.json", committed, dict(fresh, kept=115), 0.0, skipped
    )
    assert kept.key == "kept"


def test_run_compares_the_working_tree_with_a_git_revision(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "metrics" / "bench").mkdir(parents=True)
    (tmp_path / "metrics" / "evaluate.json").write_text('{"map": 0.2, "seconds": 3}')
    (tmp_path / "metrics" / "bench" / "generate.json").write_text('{"images_per_second": 1}')
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m")
    monkeypatch.chdir(tmp_path)
    assert reproduce.run("HEAD", tmp_path / "none.yaml") == []
    (tmp_path / "metrics" / "evaluate.json").write_text('{"map": 0.3, "seconds": 4}')
    (tmp_path / "metrics" / "bench" / "generate.json").write_text('{"images_per_second": 2}')
    (difference,) = reproduce.run("HEAD", tmp_path / "none.yaml")
    assert (difference.file, difference.key) == ("metrics/evaluate.json", "map")


def test_environment_names_versions_threads_and_device():
    env = tracking.environment()
    assert set(tracking.ENVIRONMENT_PACKAGES) <= set(env)
    assert env["device"] == "cpu" and env["torch_threads"] >= 1
    assert re.fullmatch(r"3\.\d+\.\d+", env["python"])
