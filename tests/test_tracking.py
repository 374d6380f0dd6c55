import mlflow
import pytest

from synthdet import tracking


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
