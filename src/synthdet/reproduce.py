"""Compare the metrics a pipeline run just wrote with the committed ones.

    python -m synthdet.reproduce                 # working tree vs HEAD, reproducibility.yaml
    python -m synthdet.reproduce --against v1.0  # vs another git revision

Every JSON, CSV and TSV file under `metrics/` that git tracks at the revision (benchmarks in
`metrics/bench/` and the environment record excepted: they describe the machine, not the
pipeline's results) is read in both versions. Wall-clock keys (`seconds`, `*_seconds`, ...)
are skipped: no run can reproduce them; so are the run-state keys `reproducibility.yaml` lists
under `run_state` (counts of work a run reused or redid).

Two modes, chosen by the environment records (`metrics/environment.json`, `tracking.BIT_KEYS`:
CPU model and vector extensions, torch's CPU capability, BLAS/oneDNN builds, kernel switches,
threads, package versions):
- **exact**: the run's environment equals the committed one. Numbers are compared with the
  absolute tolerance `reproducibility.yaml` gives the file (`default`, `files`; 0 = exact).
- **cross-machine**: they differ (printed side by side). Float kernels then round differently
  and a trained model drifts like one trained with another seed, so the `cross_machine` rules
  of `reproducibility.yaml` apply, each measured and stated with its reason: a numeric
  tolerance (absolute `abs`, relative `rel`) for a file glob and optional key globs, or `skip`
  for what another machine cannot reproduce (the reason is printed). A key no rule matches is
  compared exactly.
Prints the mode and why, a table of the differences, and exits 1 if there is any.
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

from synthdet.core.tracking import flatten

METRICS_DIR = "metrics"
SKIPPED_DIRS = ("metrics/bench/",)
ENVIRONMENT_FILE = "metrics/environment.json"
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
    return [
        f
        for f in files
        if f.endswith(SUFFIXES) and not f.startswith(SKIPPED_DIRS) and f != ENVIRONMENT_FILE
    ]


@dataclass(frozen=True)
class Rule:
    """A cross-machine comparison rule of `reproducibility.yaml` (see the module docstring)."""

    files: str
    keys: tuple[str, ...]
    abs: float
    rel: float
    skip: str | None
    why: str

    def matches(self, file: str, key: str) -> bool:
        return fnmatch.fnmatch(file, self.files) and (
            not self.keys or any(fnmatch.fnmatch(key, pattern) for pattern in self.keys)
        )


RULE_KEYS = {"files", "keys", "abs", "rel", "skip", "why"}


def cross_machine_rules(tolerances: dict) -> list[Rule]:
    """The `cross_machine` rules, checked: every rule names `files` and a `why`, and either
    `skip` (its reason) or a tolerance; raises ValueError naming the rule otherwise."""
    rules, problems = [], []
    for index, raw in enumerate(tolerances.get("cross_machine") or []):
        unknown = set(raw) - RULE_KEYS
        if unknown or "files" not in raw or not raw.get("why"):
            problems.append(
                f"cross_machine[{index}]: needs `files` and `why` (keys: {sorted(RULE_KEYS)}), "
                f"got {sorted(raw)}"
            )
            continue
        keys = raw.get("keys") or ()
        rules.append(
            Rule(
                files=raw["files"],
                keys=(keys,) if isinstance(keys, str) else tuple(keys),
                abs=float(raw.get("abs", 0.0)),
                rel=float(raw.get("rel", 0.0)),
                skip=raw.get("skip"),
                why=raw["why"],
            )
        )
    if problems:
        raise ValueError("reproducibility.yaml: " + "; ".join(problems))
    return rules


def compare_across_machines(
    file: str, committed: dict, reproduced: dict, rules: list[Rule], skipped: tuple[str, ...] = ()
) -> tuple[list[Difference], dict[str, int]]:
    """Cross-machine comparison of one file: (differences, {skip reason: keys skipped})."""
    differences, skips = [], {}
    for key in sorted(set(committed) | set(reproduced)):
        if is_time_key(key) or key in skipped:
            continue
        rule = next((r for r in rules if r.matches(file, key)), None)
        if rule is not None and rule.skip:
            skips[rule.skip] = skips.get(rule.skip, 0) + 1
            continue
        old, new = committed.get(key, "(missing)"), reproduced.get(key, "(missing)")
        tolerance = 0.0
        if rule is not None and isinstance(old, int | float) and not isinstance(old, bool):
            tolerance = rule.abs + rule.rel * abs(old)
        if not _close(old, new, tolerance):
            differences.append(Difference(file, key, old, new, round(tolerance, 9)))
    return differences, skips


@dataclass(frozen=True)
class Outcome:
    mode: str  # "exact" | "cross-machine"
    environment: list[tuple[str, object, object]]  # BIT_KEYS that differ
    differences: list[Difference]
    skipped: dict[str, int]  # cross-machine skip reason -> keys skipped
    files: int


def _environment(text: str | None) -> dict:
    return json.loads(text) if text else {}


def run(revision: str, tolerances_file: Path) -> Outcome:
    """Compare the working tree's metrics with `revision`'s (see the module docstring)."""
    from synthdet.core.tracking import environment_differences

    tolerances = yaml.safe_load(tolerances_file.read_text()) if tolerances_file.is_file() else {}
    try:
        committed_env = _environment(_git("show", f"{revision}:{ENVIRONMENT_FILE}"))
    except subprocess.CalledProcessError:
        committed_env = {}
    path = Path(ENVIRONMENT_FILE)
    current_env = _environment(path.read_text() if path.is_file() else None)
    environment = environment_differences(committed_env, current_env)
    rules = cross_machine_rules(tolerances) if environment else []
    differences: list[Difference] = []
    skipped: dict[str, int] = {}
    files = tracked_metrics(revision)
    for file in files:
        suffix = Path(file).suffix
        committed = read_table(_git("show", f"{revision}:{file}"), suffix)
        path = Path(file)
        reproduced = read_table(path.read_text(), suffix) if path.is_file() else {}
        state = run_state_keys(file, tolerances)
        if environment:
            found, skips = compare_across_machines(file, committed, reproduced, rules, state)
            for reason, count in skips.items():
                skipped[reason] = skipped.get(reason, 0) + count
        else:
            found = compare(file, committed, reproduced, tolerance_for(file, tolerances), state)
        differences += found
    mode = "cross-machine" if environment else "exact"
    return Outcome(mode, environment, differences, skipped, len(files))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--against", default="HEAD", help="git revision of the committed metrics")
    parser.add_argument("--tolerances", type=Path, default=Path("reproducibility.yaml"))
    args = parser.parse_args()
    outcome = run(args.against, args.tolerances)
    if outcome.environment:
        print(
            f"reproduce: cross-machine mode: this run's environment differs from the one that "
            f"wrote {args.against}'s metrics in {len(outcome.environment)} keys, so float kernels "
            "may round differently; tolerances: reproducibility.yaml `cross_machine`"
        )
        print("| environment key | committed | this run |\n|---|---|---|")
        print("\n".join(f"| {k} | {old} | {new} |" for k, old, new in outcome.environment))
        for reason, count in outcome.skipped.items():
            print(f"reproduce: not compared across machines ({count} values): {reason}")
    else:
        print(
            f"reproduce: exact mode: the environment equals {args.against}'s ({ENVIRONMENT_FILE})"
        )
    if outcome.differences:
        print("| file | key | committed | reproduced | tolerance |\n|---|---|---|---|---|")
        print("\n".join(d.row() for d in outcome.differences))
        print(
            f"reproduce: {len(outcome.differences)} differences in {outcome.files} metrics files "
            f"({outcome.mode} mode)"
        )
        sys.exit(1)
    print(
        f"reproduce: all {outcome.files} metrics files match {args.against} ({outcome.mode} mode)"
    )


if __name__ == "__main__":
    main()
