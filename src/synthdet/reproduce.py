"""Compare the metrics a pipeline run just wrote with the committed ones.

    python -m synthdet.reproduce                 # working tree vs HEAD, tolerances.yaml
    python -m synthdet.reproduce --against v1.0  # vs another git revision

Every JSON, CSV and TSV file under `metrics/` that git tracks at the revision (benchmarks in
`metrics/bench/` excepted: they measure the machine, not the pipeline) is read in both versions;
numbers are compared with the absolute tolerance `reproducibility.yaml` gives the file (0 =
exact), other values exactly. Wall-clock keys (`seconds`, `*_seconds`, ...) are skipped: no
run can reproduce them; so are the run-state keys `reproducibility.yaml` lists under `run_state`
(counts of work a run reused or redid, e.g. incremental generation: a fresh clone generates
every image that the committed run may have reused). Prints a table of the differences and
exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from synthdet.tracking import flatten

METRICS_DIR = "metrics"
SKIPPED_DIRS = ("metrics/bench/",)
SUFFIXES = (".json", ".csv", ".tsv")
TIME_KEYS = ("seconds", "minutes", "per_second", "duration")


@dataclass(frozen=True)
class Difference:
    file: str
    key: str
    committed: object
    reproduced: object
    tolerance: float

    def row(self) -> str:
        cells = (self.file, self.key, self.committed, self.reproduced, self.tolerance)
        return "| " + " | ".join(str(cell) for cell in cells) + " |"


def read_table(text: str, suffix: str) -> dict[str, object]:
    """A JSON file flattened ('a.b'), or a CSV/TSV table as '<row>.<column>' cells."""
    if suffix == ".json":
        return flatten(json.loads(text))
    rows = list(csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ","))
    return {
        f"{i}.{column}": _number(value)
        for i, row in enumerate(rows)
        for column, value in row.items()
    }


def _number(value: object) -> object:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return value


def is_time_key(key: str) -> bool:
    return any(part in key.rsplit(".", 1)[-1] for part in TIME_KEYS)


def compare(
    file: str,
    committed: dict,
    reproduced: dict,
    tolerance: float,
    skipped: tuple[str, ...] = (),
) -> list[Difference]:
    """The keys whose values differ by more than `tolerance` (numbers) or at all (the rest);
    wall-clock keys and the `skipped` keys (run state) are not compared."""
    differences = []
    for key in sorted(set(committed) | set(reproduced)):
        if is_time_key(key) or key in skipped:
            continue
        old, new = committed.get(key, "(missing)"), reproduced.get(key, "(missing)")
        if _close(old, new, tolerance):
            continue
        differences.append(Difference(file, key, old, new, tolerance))
    return differences


def _close(old: object, new: object, tolerance: float) -> bool:
    numeric = (int, float)
    if isinstance(old, numeric) and isinstance(new, numeric) and not isinstance(old, bool):
        if math.isnan(old) and math.isnan(new):
            return True
        return abs(old - new) <= tolerance
    return old == new


def tolerance_for(file: str, tolerances: dict) -> float:
    """The first glob of `tolerances['files']` that matches, else `tolerances['default']`."""
    for pattern, value in (tolerances.get("files") or {}).items():
        if fnmatch.fnmatch(file, pattern):
            return float(value)
    return float(tolerances.get("default", 0.0))


def run_state_keys(file: str, tolerances: dict) -> tuple[str, ...]:
    """The keys of `file` that `tolerances['run_state']` (glob -> keys) says describe how a run
    went rather than what it produced."""
    keys: list[str] = []
    for pattern, names in (tolerances.get("run_state") or {}).items():
        if fnmatch.fnmatch(file, pattern):
            keys += names
    return tuple(keys)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def tracked_metrics(revision: str) -> list[str]:
    files = _git("ls-tree", "-r", "--name-only", revision, METRICS_DIR).split()
    return [f for f in files if f.endswith(SUFFIXES) and not f.startswith(SKIPPED_DIRS)]


def run(revision: str, tolerances_file: Path) -> list[Difference]:
    tolerances = yaml.safe_load(tolerances_file.read_text()) if tolerances_file.is_file() else {}
    differences: list[Difference] = []
    for file in tracked_metrics(revision):
        suffix = Path(file).suffix
        committed = read_table(_git("show", f"{revision}:{file}"), suffix)
        path = Path(file)
        reproduced = read_table(path.read_text(), suffix) if path.is_file() else {}
        differences += compare(
            file,
            committed,
            reproduced,
            tolerance_for(file, tolerances),
            run_state_keys(file, tolerances),
        )
    return differences


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--against", default="HEAD", help="git revision of the committed metrics")
    parser.add_argument("--tolerances", type=Path, default=Path("reproducibility.yaml"))
    args = parser.parse_args()
    differences = run(args.against, args.tolerances)
    files = len(tracked_metrics(args.against))
    if differences:
        print("| file | key | committed | reproduced | tolerance |\n|---|---|---|---|---|")
        print("\n".join(d.row() for d in differences))
        print(f"reproduce: {len(differences)} differences in {files} metrics files")
        sys.exit(1)
    print(f"reproduce: all {files} metrics files match {args.against}")


if __name__ == "__main__":
    main()
