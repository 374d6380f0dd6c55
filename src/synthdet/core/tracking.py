"""MLflow tracking for every stage, in one place.

Each stage process opens one MLflow run named `<experiment>/<stage>` and tagged with the DVC
experiment name (`DVC_EXP_NAME`, set by `dvc exp run`; `workspace` for `dvc repro`), the git
revision and the environment that decides float bits (`env.*`, see `environment`), so the stage
runs of one pipeline run can be filtered together in `mlflow ui`
(`tags.dvc_experiment = 'exp-abc12'`).

The store: `MLFLOW_TRACKING_URI` when set, else `mlflow.db` (SQLite) at the project root. The
project root is `DVC_ROOT` when set (`dvc exp run --queue` runs stages in a temporary copy that
DVC deletes afterwards; `DVC_ROOT` points at the real project), else the working directory. A
relative local store (`sqlite:///mlflow.db`, `file:mlruns`, `file:./mlruns`, `./mlruns`,
`mlruns`) is resolved against the project root, so no run is written into DVC's temporary copy;
absolute paths and server URIs (`http(s)://`, `databricks`, `postgresql://`, ...) are used as
given.

Parallel stage processes (`dvc queue start -j 2`) share the store: creating or upgrading a local
store and creating the experiment happen under an inter-process file lock next to the store
(`<store>.lock`, an empty file left in place), since MLflow's schema migration is not safe to run
twice at once (mlflow/mlflow#4123). A store that cannot be opened (unreachable server,
unwritable path, malformed URI) stops the stage with a one-line `SynthdetError` instead of a
traceback; a tracking server gets one try of at most 5 s (`PROBE_HTTP_ENV`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import posixpath
import re
import subprocess
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from synthdet.core.errors import SynthdetError

EXPERIMENT_ENV = "DVC_EXP_NAME"
URI_ENV = "MLFLOW_TRACKING_URI"
FILE_STORE_SWITCH = "MLFLOW_ALLOW_FILE_STORE"  # MLflow's opt-in to file stores

# How long a stage waits for another process that is creating or upgrading the store (seconds);
# creating MLflow's SQLite schema takes about 2 s.
STORE_LOCK_TIMEOUT_S = 300
# The reachability probe of a tracking server: one try, a short timeout, instead of MLflow's
# default of several retries with exponential backoff (minutes before a stage fails).
PROBE_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
# Tracking URIs without a scheme that name a server, not a folder.
SERVER_NAMES = ("databricks", "databricks-uc", "uc")


def _project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def resolve_tracking_uri(uri: str, root: Path) -> str:
    """`uri` with a relative local store path made absolute under `root`.

    `sqlite:///mlflow.db` -> `sqlite:////<root>/mlflow.db` (a query string is kept);
    `file:mlruns`, `file:./mlruns` -> `file:///<root>/mlruns`; `mlruns`, `./mlruns` ->
    `<root>/mlruns`. Absolute paths, in-memory SQLite, `SERVER_NAMES` and every other scheme are
    returned as given.
    """
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme == "sqlite":
        prefix = "sqlite:///"
        if not uri.startswith(prefix):
            return uri  # `sqlite://` is in-memory; anything else MLflow rejects with its reason
        path, separator, query = uri[len(prefix) :].partition("?")
        if not path or path == ":memory:" or path.startswith("/"):
            return uri
        return f"{prefix}{(root / path).resolve()}{separator}{query}"
    if scheme == "file":
        parsed = urllib.parse.urlsplit(uri)
        if parsed.netloc or parsed.path.startswith("/"):
            return uri
        return (root / urllib.parse.unquote(parsed.path)).resolve().as_uri()
    if scheme == "" and uri not in SERVER_NAMES and not Path(uri).is_absolute():
        return str((root / uri).resolve())
    return uri


def tracking_uri() -> str:
    """The MLflow store of this process: `MLFLOW_TRACKING_URI` resolved against the project root
    (`resolve_tracking_uri`), or `sqlite:///<project root>/mlflow.db` when it is unset."""
    root = _project_root()
    uri = os.environ.get(URI_ENV)
    return resolve_tracking_uri(uri, root) if uri else f"sqlite:///{root / 'mlflow.db'}"


def _local_store_path(uri: str) -> Path | None:
    """The file or folder of a local store (SQLite file, MLflow file store), else None."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "sqlite" and uri.startswith("sqlite:////"):
        return Path(uri[len("sqlite:///") :].partition("?")[0])
    if parsed.scheme == "file" and not parsed.netloc:
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "" and uri not in SERVER_NAMES:
        return Path(uri)
    return None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Hold `<store>.lock` for a local store; servers serialise their own writes."""
    store = _local_store_path(uri)
    if store is None:
        yield
        return
    with FileLock(f"{store}.lock", timeout=STORE_LOCK_TIMEOUT_S):
        yield


@contextlib.contextmanager
def _bounded_http_retries() -> Iterator[None]:
    """Set `PROBE_HTTP_ENV` for the duration, unless the user set those variables; MLflow reads
    them at each request."""
    added = {key: value for key, value in PROBE_HTTP_ENV.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _reason(exc: BaseException) -> str:
    """The first line of what went wrong, at most 200 characters: the innermost OS error of the
    chain when there is one (`Connection refused`, `No such file or directory`), since MLflow's
    message for a failed request is a long nest of retry wrappers."""
    innermost: BaseException = exc
    link: BaseException | None = exc
    while link is not None:
        if isinstance(link, OSError):
            innermost = link
        link = link.__cause__ or link.__context__
    lines = str(innermost).strip().splitlines() or [type(exc).__name__]
    return lines[0][:200]


def _store_error(uri: str, exc: Exception) -> SynthdetError:
    reason = _reason(exc)
    given = os.environ.get(URI_ENV)
    setting = f"{URI_ENV}={given}" if given else f"{URI_ENV} unset"
    if FILE_STORE_SWITCH in str(exc):
        # the pinned MLflow refuses file stores unless opted in; its fix is past _reason's cut
        return SynthdetError(
            f"the MLflow store {uri} ({setting}) is a file store, which MLflow "
            f"{mlflow.__version__} refuses (maintenance mode): set {FILE_STORE_SWITCH}=true to "
            f"use it, or set {URI_ENV} to a database store such as sqlite:///mlflow.db (unset, it "
            f"is sqlite:///{_project_root() / 'mlflow.db'}); `mlflow migrate-filestore` moves "
            "existing runs"
        )
    return SynthdetError(
        f"the MLflow store {uri} ({setting}) cannot be opened: {reason}; start the tracking "
        f"server or make the store's folder exist and be writable, or set {URI_ENV} to a working "
        f"store (unset, it is sqlite:///{_project_root() / 'mlflow.db'})"
    )


def _open_experiment(uri: str, experiment: str) -> None:
    """Point MLflow at `uri`, creating the store and `experiment` if needed.

    Raises SynthdetError when the store cannot be opened.
    """
    try:
        if urllib.parse.urlsplit(uri).scheme in ("http", "https"):
            with _bounded_http_retries():
                mlflow.MlflowClient(uri).search_experiments(max_results=1)
        with _store_lock(uri):
            mlflow.set_tracking_uri(uri)
            if mlflow.get_experiment_by_name(experiment) is None:
                artifacts = (_project_root() / "mlartifacts").as_uri()
                try:
                    mlflow.create_experiment(
                        experiment,
                        artifact_location=artifacts if uri.startswith("sqlite:") else None,
                    )
                except MlflowException as exc:
                    # A server store is not under the lock: another process may have won.
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
            mlflow.set_experiment(experiment)
    except (MlflowException, SQLAlchemyError, OSError) as exc:
        raise _store_error(uri, exc) from exc


def git_revision() -> str:
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        return os.environ["DVC_EXP_BASELINE_REV"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


ENVIRONMENT_PACKAGES = (
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "ultralytics",
    "accelerate",
    "numpy",
)
# CPU flags (as /proc/cpuinfo names them) that select math kernels in MKL, oneDNN and ATen.
CPU_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
# Environment variables that change which kernels run (or with how many threads) when set.
KERNEL_SWITCHES = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DEBUG_CPU_TYPE",
    "OPENBLAS_CORETYPE",
    "NPY_DISABLE_CPU_FEATURES",
    "OMP_NUM_THREADS",
    "SYNTHDET_TORCH_THREADS",
)
# The keys of `environment` on which the last bits of a float result depend: two runs that
# differ in one of them may differ in the last bits of every trained number.
BIT_KEYS = (
    *ENVIRONMENT_PACKAGES,
    "python",
    "torch_threads",
    "device",
    "machine",
    "cpu_model",
    "cpu_flags",
    "torch_cpu_capability",
    "torch_blas",
    "torch_lapack",
    "torch_mkl",
    "torch_onednn",
    "numpy_simd_baseline",
    "numpy_simd_found",
    *KERNEL_SWITCHES,
)


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _torch_kernels() -> dict[str, str]:
    """torch's CPU capability and its BLAS, LAPACK, MKL and oneDNN builds ("none" when absent),
    from `torch.__config__.show()`."""
    import torch

    config = torch.__config__.show()

    def found(pattern: str) -> str:
        match = re.search(pattern, config)
        return match.group(1).strip() if match else "unknown"

    return {
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_blas": found(r"BLAS_INFO=([^,\s]+)"),
        "torch_lapack": found(r"LAPACK_INFO=([^,\s]+)"),
        # e.g. "2024.2-Product Build 20240605"
        "torch_mkl": found(r"Math Kernel Library Version (.+?) for ")
        if torch.backends.mkl.is_available()
        else "none",
        # e.g. "v3.12.0 (Git Hash 80afa71049cd69a3df32adcccb623b12cd7baa22)"
        "torch_onednn": found(r"(?:MKL-DNN|oneDNN) (v\S+)")
        if torch.backends.mkldnn.is_available()
        else "none",
    }


def _numpy_simd() -> dict[str, str]:
    """numpy's compiled SIMD baseline and the dispatch targets this CPU runs, as `np.show_runtime`
    reports them ("unknown" for a numpy without that introspection)."""
    try:
        from numpy._core import _multiarray_umath as umath  # numpy >= 2
    except ImportError:
        try:
            from numpy.core import _multiarray_umath as umath  # numpy 1.x
        except ImportError:
            return {"numpy_simd_baseline": "unknown", "numpy_simd_found": "unknown"}
    features = getattr(umath, "__cpu_features__", {})
    return {
        "numpy_simd_baseline": ",".join(getattr(umath, "__cpu_baseline__", [])) or "none",
        "numpy_simd_found": ",".join(
            target for target in getattr(umath, "__cpu_dispatch__", []) if features.get(target)
        )
        or "none",
    }


def environment() -> dict[str, str | int]:
    """What a number depends on besides code, data and params: a flat dict of str/int.

    Package versions (`ENVIRONMENT_PACKAGES`), Python, torch's CPU thread count, the device, the
    machine architecture, the CPU model (/proc/cpuinfo `model name`, else
    `platform.processor()`), its kernel-relevant vector extensions (`cpu_flags`: the `CPU_FLAGS`
    present, sorted, comma-joined; "unknown" without /proc/cpuinfo), torch's CPU capability and
    BLAS/LAPACK/MKL/oneDNN builds, numpy's SIMD baseline and dispatch targets, and the value of
    each `KERNEL_SWITCHES` variable ("unset" when not set). Float summation order and kernel
    choice, hence the last bits of a result, depend on all of these (`BIT_KEYS`).
    """
    from importlib.metadata import version

    import torch

    cpuinfo = _cpuinfo()
    present = set(cpuinfo.get("flags", "").split())
    return {
        **{package: version(package) for package in ENVIRONMENT_PACKAGES},
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "machine": platform.machine(),
        "cpu_model": cpuinfo.get("model name") or platform.processor() or "unknown",
        "cpu_flags": ",".join(sorted(present.intersection(CPU_FLAGS))) if cpuinfo else "unknown",
        **_torch_kernels(),
        **_numpy_simd(),
        **{name: os.environ.get(name, "unset") for name in KERNEL_SWITCHES},
    }


def environment_differences(
    committed: Mapping[str, Any], current: Mapping[str, Any]
) -> list[tuple[str, object, object]]:
    """The `BIT_KEYS` on which two `environment` records differ, as (key, committed, current).

    Values are compared as strings (MLflow tags are strings, environment.json keeps ints). A key
    missing from either record (an old record written before the key existed) counts as a
    difference, with None on its side.
    """
    differences = []
    for key in BIT_KEYS:
        old, new = committed.get(key), current.get(key)
        if old is None or new is None or str(old) != str(new):
            differences.append((key, old, new))
    return differences


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


# MLflow's rule for param names (mlflow.utils.validation): these characters, at most 250 of
# them, and a normalised relative path (no '//', no '..', no leading or trailing '/').
_PARAM_NAME = re.compile(r"[/\w.\- :]{1,250}")


def valid_param_name(name: str) -> bool:
    """Whether MLflow accepts `name` as a param name."""
    return (
        _PARAM_NAME.fullmatch(name) is not None
        and posixpath.normpath(name) == name
        and name != "."
        and not name.startswith(("/", ".."))
    )


# MLflow caps a param value at 6000 characters; long lists are informative enough cut.
MAX_PARAM_VALUE = 6000


def mlflow_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`params` flattened like `flatten`, as MLflow param names and values.

    A nested mapping with a key that would not make a valid param name (a regex such as
    `'^up_blocks.*'`) is logged whole, as one JSON value under its parent's name. Values are
    strings cut at `MAX_PARAM_VALUE` characters. Raises ValueError for an invalid top-level key,
    which has no parent to log it under.
    """
    logged: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if not prefix and not valid_param_name(name):
            raise ValueError(f"param {name!r} is not a valid MLflow param name; rename it")
        if isinstance(value, Mapping) and all(valid_param_name(f"{name}.{k}") for k in value):
            logged.update(mlflow_params(value, f"{name}."))
        elif isinstance(value, Mapping):
            logged[name] = json.dumps(value, default=str)[:MAX_PARAM_VALUE]
        else:
            logged[name] = str(value)[:MAX_PARAM_VALUE]
    return logged


class StageRun:
    """What a stage logs: params, numeric metrics (optionally per step) and artifact files."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow.log_params(mlflow_params(params))

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
    """Open the MLflow run of one stage execution; it is marked FAILED if the stage raises.

    Raises SynthdetError when the store (`tracking_uri`) cannot be opened.
    """
    _open_experiment(tracking_uri(), experiment)
    dvc_experiment = os.environ.get(EXPERIMENT_ENV, "workspace")
    tags = {"dvc_experiment": dvc_experiment, "git_revision": git_revision(), "stage": stage}
    tags |= {f"env.{key}": str(value) for key, value in environment().items()}
    with mlflow.start_run(run_name=f"{dvc_experiment}/{stage}", tags=tags):
        run = StageRun()
        run.log_params(params)
        yield run
