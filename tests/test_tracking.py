import multiprocessing
import os
import time
from pathlib import Path

import mlflow
import pytest

from synthdet.core import tracking
from synthdet.core.errors import SynthdetError


def runs_of(experiment: str):
    mlflow.set_tracking_uri(tracking.tracking_uri())
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_stage_run_logs_params_metrics_and_tags(monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-test1")
    artifact = tmp_path / "curve.tsv"
    artifact.write_text("step\tloss\n0\t1.0\n")
    with tracking.stage_run("caption", "tracking-test", {"caption": {"template": "x"}}) as run:
        run.log_metrics({"loss": 0.5, "split": {"images": 3}, "name": "ignored", "flag": True})
        run.log_metrics({"loss": 0.25}, step=1)
        run.log_artifact(artifact)
    (logged,) = runs_of("tracking-test")
    assert logged.info.run_name == "exp-test1/caption"
    assert logged.info.status == "FINISHED"
    assert logged.data.tags["dvc_experiment"] == "exp-test1"
    assert logged.data.tags["stage"] == "caption"
    assert logged.data.tags["git_revision"]
    assert {f"env.{key}" for key in tracking.BIT_KEYS} <= set(logged.data.tags)
    assert logged.data.params == {"caption.template": "x"}
    assert logged.data.metrics == {"loss": 0.25, "split.images": 3.0}
    client = mlflow.MlflowClient()
    assert [a.path for a in client.list_artifacts(logged.info.run_id)] == ["curve.tsv"]


def test_failed_stage_marks_run_failed(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    with pytest.raises(RuntimeError), tracking.stage_run("prepare", "tracking-fail", {}):
        raise RuntimeError("boom")
    (logged,) = runs_of("tracking-fail")
    assert logged.info.status == "FAILED"
    assert logged.info.run_name == "workspace/prepare"


def test_flatten():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {
        "a.b": 1,
        "a.c.d": 2,
        "e": 3,
    }


# --- params whose keys MLflow rejects -------------------------------------------------------


def test_pass_through_block_with_regex_keys_is_logged_as_json():
    params = {
        "personalize": {
            "lora": {"rank": 4, "rank_pattern": {"^up_blocks.*": 4}, "targets": ["to_q"]},
            "paths": {"a//b": 1, "ok": 2},
        }
    }
    with tracking.stage_run("personalize", "tracking-params", params):
        pass
    (logged,) = runs_of("tracking-params")
    assert logged.data.params == {
        "personalize.lora.rank": "4",
        "personalize.lora.rank_pattern": '{"^up_blocks.*": 4}',
        "personalize.lora.targets": "['to_q']",
        "personalize.paths": '{"a//b": 1, "ok": 2}',
    }


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("personalize.lora.rank", True),
        ("a/b c:d-e_f", True),
        ("personalize.lora.rank_pattern.^up_blocks.*", False),
        ("a//b", False),
        ("a/../b", False),
        ("/a", False),
        ("a/", False),
        ("", False),
        ("x" * 251, False),
    ],
)
def test_valid_param_name_follows_mlflow(name, valid):
    assert tracking.valid_param_name(name) is valid


def test_invalid_top_level_param_key_is_refused():
    with pytest.raises(ValueError, match=r"'\^x' is not a valid MLflow param name"):
        tracking.mlflow_params({"^x": 1})


# --- where the store is -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "resolved"),
    [
        ("sqlite:///mlflow.db", "sqlite:////root/dvc/mlflow.db"),
        ("sqlite:///sub/m.db?timeout=20", "sqlite:////root/dvc/sub/m.db?timeout=20"),
        ("./mlruns", "/root/dvc/mlruns"),
        ("mlruns", "/root/dvc/mlruns"),
        ("file:mlruns", "file:///root/dvc/mlruns"),
        ("file:./mlruns", "file:///root/dvc/mlruns"),
        ("sqlite:////abs/m.db", "sqlite:////abs/m.db"),
        ("file:///abs/mlruns", "file:///abs/mlruns"),
        ("/abs/mlruns", "/abs/mlruns"),
        ("sqlite://", "sqlite://"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("https://mlflow.example.com", "https://mlflow.example.com"),
        ("databricks", "databricks"),
        ("databricks://profile", "databricks://profile"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_relative_uris_resolve_under_the_project_root(uri, resolved):
    assert tracking.resolve_tracking_uri(uri, Path("/root/dvc")) == resolved


def test_relative_sqlite_uri_lands_in_dvc_root_not_cwd(monkeypatch, tmp_path):
    project, temporary_copy = tmp_path / "project", tmp_path / "dvc-tmp-copy"
    project.mkdir()
    temporary_copy.mkdir()
    monkeypatch.setenv("DVC_ROOT", str(project))
    monkeypatch.chdir(temporary_copy)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///relative.db")
    with tracking.stage_run("prepare", "tracking-relative", {}):
        pass
    assert (project / "relative.db").is_file()
    assert list(temporary_copy.iterdir()) == []
    (logged,) = runs_of("tracking-relative")
    assert logged.info.status == "FINISHED"


# --- stores that cannot be opened ---------------------------------------------------------


def test_unreachable_server_is_one_line_error_soon(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    for name in tracking.PROBE_HTTP_ENV:
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    with pytest.raises(SynthdetError) as error, tracking.stage_run("prepare", "tracking-down", {}):
        pass
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert "\n" not in message
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:9" in message
    assert "start the tracking server" in message
    # The bounded retries were set for the probe only.
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


@pytest.mark.parametrize(
    "uri",
    ["sqlite:////proc/no-such-folder/mlflow.db", "sqlite:/one-slash.db", "nosuchscheme://x"],
)
def test_unopenable_store_is_one_line_error(monkeypatch, uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(SynthdetError) as error, tracking.stage_run("prepare", "tracking-bad", {}):
        pass
    message = str(error.value)
    assert "\n" not in message
    assert f"MLFLOW_TRACKING_URI={uri}" in message


@pytest.mark.parametrize("uri", ["./mlruns", "file:mlruns"])
def test_refused_file_store_names_mlflows_switch(monkeypatch, tmp_path, uri):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(SynthdetError) as error, tracking.stage_run("prepare", "tracking-fs", {}):
        pass
    message = str(error.value)
    assert "\n" not in message
    assert "MLFLOW_ALLOW_FILE_STORE=true" in message
    assert "sqlite:///mlflow.db" in message
    assert "start the tracking server" not in message


# --- parallel stages on a fresh store -------------------------------------------------------

# Every round is a head-on collision (the barrier); without the lock the first one already fails.
ROUNDS, PROCESSES = 3, 2


def _open_runs_in_step(stores: list[str], barrier) -> None:
    """Child process: for each fresh store, wait for the others, then open a stage run."""
    for store in stores:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
        barrier.wait(timeout=120)
        with tracking.stage_run("prepare", "tracking-race", {"prepare": {"k": 1}}) as run:
            run.log_metrics({"m": 1.0})


def test_parallel_stages_create_a_fresh_store_together(tmp_path):
    stores = [str(tmp_path / f"round{i}" / "mlflow.db") for i in range(ROUNDS)]
    for store in stores:
        Path(store).parent.mkdir()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    workers = [
        context.Process(target=_open_runs_in_step, args=(stores, barrier)) for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0] * PROCESSES
    for store in stores:
        mlflow.set_tracking_uri(f"sqlite:///{store}")
        runs = mlflow.search_runs(experiment_names=["tracking-race"], output_format="list")
        assert [run.info.status for run in runs] == ["FINISHED"] * PROCESSES


# --- the environment record -----------------------------------------------------------------


def test_environment_records_kernel_choices(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    env = tracking.environment()
    assert set(env) == set(tracking.BIT_KEYS)
    assert all(isinstance(value, str | int) for value in env.values())
    assert env["MKL_CBWR"] == "COMPATIBLE"
    assert env["ONEDNN_MAX_CPU_ISA"] == "unset"
    assert env["cpu_model"] and env["cpu_model"] != "unknown"
    flags = env["cpu_flags"].split(",")
    assert flags == sorted(flags) and set(flags) <= set(tracking.CPU_FLAGS)
    assert env["torch_cpu_capability"] in {"DEFAULT", "AVX2", "AVX512", "NO AVX", "ZVECTOR"}
    for key in ("torch_blas", "torch_lapack", "torch_mkl", "torch_onednn", "numpy_simd_found"):
        assert env[key] and env[key] != "unknown", key


def test_environment_differences_over_bit_keys():
    committed = dict.fromkeys(tracking.BIT_KEYS, "x") | {"torch_threads": 2}
    current = dict(committed)
    assert tracking.environment_differences(committed, current) == []
    assert tracking.environment_differences(committed, current | {"torch_threads": "2"}) == []
    assert tracking.environment_differences(committed, current | {"not_a_bit_key": "y"}) == []
    assert tracking.environment_differences(committed, current | {"MKL_CBWR": "AVX2"}) == [
        ("MKL_CBWR", "x", "AVX2")
    ]
    old_record = {key: value for key, value in committed.items() if key != "cpu_flags"}
    assert tracking.environment_differences(old_record, current) == [("cpu_flags", None, "x")]
