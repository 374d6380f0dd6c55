"""MLflow tracking for every stage, in one place.

Each stage process opens one MLflow run named `<experiment>/<stage>` and tagged with the DVC
experiment name (`DVC_EXP_NAME`, set by `dvc exp run`; `workspace` for `dvc repro`) and the git
revision, so the stage runs of one pipeline run can be filtered together in `mlflow ui`
(`tags.dvc_experiment = 'exp-abc12'`). The default store is `mlflow.db` (SQLite) at the DVC root;
`MLFLOW_TRACKING_URI` overrides it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow

EXPERIMENT_ENV = "DVC_EXP_NAME"


def _project_root() -> Path:
    # `dvc exp run --queue` runs stages in a temporary copy; DVC_ROOT points at the real project,
    # so all runs land in one store.
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{_project_root() / 'mlflow.db'}"


def git_revision() -> str:
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        return os.environ["DVC_EXP_BASELINE_REV"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


ENVIRONMENT_PACKAGES = ("torch", "diffusers", "transformers", "peft", "ultralytics", "accelerate")


def environment() -> dict[str, str | int]:
    """What a number depends on besides code, data and params: package versions, Python, torch's
    CPU thread count and the device (float summation order, hence the last bits, depend on them).
    """
    import platform
    from importlib.metadata import version

    import torch

    return {
        **{package: version(package) for package in ENVIRONMENT_PACKAGES},
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "machine": platform.machine(),
    }


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, the shape of MLflow params and DVC metrics."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class StageRun:
    """What a stage logs: params, numeric metrics (optionally per step) and artifact files."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        # MLflow caps a param value at 6000 characters; long lists are informative enough cut.
        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(params).items()})

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        numeric = {
            k: float(v)
            for k, v in flatten(metrics).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if numeric:
            mlflow.log_metrics(numeric, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
        elif path.exists():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)


@contextlib.contextmanager
def stage_run(stage: str, experiment: str, params: Mapping[str, Any]) -> Iterator[StageRun]:
    """Open the MLflow run of one stage execution; it is marked FAILED if the stage raises."""
    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(experiment) is None:
        artifacts = (_project_root() / "mlartifacts").as_uri()
        uri = tracking_uri()
        mlflow.create_experiment(
            experiment, artifact_location=artifacts if uri.startswith("sqlite:") else None
        )
    mlflow.set_experiment(experiment)
    dvc_experiment = os.environ.get(EXPERIMENT_ENV, "workspace")
    tags = {"dvc_experiment": dvc_experiment, "git_revision": git_revision(), "stage": stage}
    tags |= {f"env.{key}": str(value) for key, value in environment().items()}
    with mlflow.start_run(run_name=f"{dvc_experiment}/{stage}", tags=tags):
        run = StageRun()
        run.log_params(params)
        yield run
