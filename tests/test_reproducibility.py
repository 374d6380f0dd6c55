"""The pinned environment and the metrics comparison that CI runs after `make repro`."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from synthdet import reproduce
from synthdet.core import tracking

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


def _repo_with_metrics(tmp_path, environment: dict) -> None:
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "metrics" / "bench").mkdir(parents=True)
    (tmp_path / "metrics" / "evaluate.json").write_text('{"real.map50_95": 0.2, "seconds": 3}')
    (tmp_path / "metrics" / "bench" / "generate.json").write_text('{"images_per_second": 1}')
    (tmp_path / "metrics" / "environment.json").write_text(json.dumps(environment))
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m")


def test_run_compares_the_working_tree_with_a_git_revision(tmp_path, monkeypatch):
    environment = {key: "same" for key in tracking.BIT_KEYS}
    _repo_with_metrics(tmp_path, environment)
    monkeypatch.chdir(tmp_path)
    outcome = reproduce.run("HEAD", tmp_path / "none.yaml")
    assert (outcome.mode, outcome.differences, outcome.files) == ("exact", [], 1)
    (tmp_path / "metrics" / "evaluate.json").write_text('{"real.map50_95": 0.3, "seconds": 4}')
    (tmp_path / "metrics" / "bench" / "generate.json").write_text('{"images_per_second": 2}')
    (difference,) = reproduce.run("HEAD", tmp_path / "none.yaml").differences
    assert (difference.file, difference.key) == ("metrics/evaluate.json", "real.map50_95")


def test_another_cpu_switches_to_the_measured_cross_machine_tolerances(tmp_path, monkeypatch):
    """With another CPU in environment.json the committed reproducibility.yaml applies its
    cross-machine rules: seed-like drift passes, a planted regression beyond it fails, and what
    cannot be reproduced there is skipped with its reason."""
    environment = {key: "same" for key in tracking.BIT_KEYS}
    _repo_with_metrics(tmp_path, environment)
    monkeypatch.chdir(tmp_path)
    rules = ROOT / "reproducibility.yaml"
    moved = dict(environment, cpu_model="Another CPU", cpu_flags="avx,avx2,fma")
    (tmp_path / "metrics" / "environment.json").write_text(json.dumps(moved))
    drift = '{"real.map50_95": 0.226, "real.p_value": 0.4, "seconds": 4}'
    (tmp_path / "metrics" / "evaluate.json").write_text(drift)
    outcome = reproduce.run("HEAD", rules)
    assert outcome.mode == "cross-machine"
    assert [key for key, _, _ in outcome.environment] == ["cpu_model", "cpu_flags"]
    assert outcome.differences == []
    assert sum(outcome.skipped.values()) == 1  # the p-value: skipped, with its reason
    regression = '{"real.map50_95": 0.05, "seconds": 4}'
    (tmp_path / "metrics" / "evaluate.json").write_text(regression)
    (difference,) = reproduce.run("HEAD", rules).differences
    assert (difference.key, difference.committed, difference.reproduced) == (
        "real.map50_95",
        0.2,
        0.05,
    )
    # The same drift on the same machine is a difference: exact mode.
    (tmp_path / "metrics" / "environment.json").write_text(json.dumps(environment))
    (tmp_path / "metrics" / "evaluate.json").write_text(drift)
    exact = reproduce.run("HEAD", rules)
    assert exact.mode == "exact"
    assert {d.key for d in exact.differences} == {"real.map50_95", "real.p_value"}


def test_cross_machine_rules_need_a_reason():
    with pytest.raises(ValueError, match=r"cross_machine\[0\].*why"):
        reproduce.cross_machine_rules({"cross_machine": [{"files": "metrics/*", "abs": 1}]})
    (rule,) = reproduce.cross_machine_rules(
        {"cross_machine": [{"files": "metrics/*.json", "keys": "fid", "rel": 0.01, "why": "x"}]}
    )
    committed, close, far = {"fid": 100.0}, {"fid": 100.9}, {"fid": 101.1}
    assert reproduce.compare_across_machines("metrics/a.json", committed, close, [rule]) == ([], {})
    (difference,), _ = reproduce.compare_across_machines("metrics/a.json", committed, far, [rule])
    assert difference.tolerance == 1.0


def test_environment_names_versions_threads_and_device():
    env = tracking.environment()
    assert set(tracking.ENVIRONMENT_PACKAGES) <= set(env)
    assert env["device"] == "cpu" and env["torch_threads"] >= 1
    assert re.fullmatch(r"3\.\d+\.\d+", env["python"])
