"""The evidence profile spread over CPU cores with DVC's queue, collected into metrics/evidence/.

    python benchmarks/evidence.py run --jobs 2          # queue, run, combine, collect
    python benchmarks/evidence.py combine --parts evidence-part0 evidence-part1 --out DIR
    python benchmarks/evidence.py collect --parts ...   # the last two steps alone
    python benchmarks/evidence.py recipes --runs metrics/evidence metrics/evidence-vae-residual/*/

`run` does what docs/evidence.md describes, with DVC's own machinery:

1. **queue**: the handful draws (`--draws`) are split into `--jobs` groups and one experiment per
   group is queued (`dvc exp run --queue -n <name>-part<i>`), each with the evidence profile's
   overrides (`PROFILE`) and its draws;
2. **run**: `dvc queue start -j <jobs>` runs them side by side, each stage process on one torch
   thread (`SYNTHDET_TORCH_THREADS=1` unless set: two 2-thread trainings on 2 cores spin against
   each other, `metrics/bench/detector_stage.json`); waits until none is queued or running;
3. **combine**: the parts' results are joined without running them again: the workspace takes
   the first part's files, every other part adds the git-tracked outputs of its own stages
   (per-draw metrics, per-detector CSVs), the parts' `dvc.lock` entries are merged (a stage two
   parts ran, e.g. `train-real@42`, must have identical entries: same bits), params.yaml gets the
   profile with every draw, `dvc checkout` restores every output from the cache, `dvc status`
   must then list nothing but `evaluate` and `report`, and `dvc repro` runs those two, pairing
   all units. (DVC's run-cache does not restore stages with `cache: false` outputs, measured:
   a combining `dvc exp run` trained the draws' stages again);
4. **collect**: copies that run's metrics and report into `--out` (default metrics/evidence/) and
   writes `provenance.json`: the commit, overrides, threads, CPU, and each detector stage's wall
   time and optimizer steps from the MLflow store (the stages' own runs).

`recipes` tables every collected run's paired differences in `RECIPES_NAME` .csv and .md (the
README's generation table; runs of one recipe, e.g. parts collected one by one, are joined):
each extra-data variant against `handful` and against each other, and `handful-synthetic` of two
recipes against each other over the units both ran, when their `handful` detectors scored the
same on every common unit (same handfuls, seeds and bits; otherwise they are not paired).
Holm's correction runs over every row.

The `real` detectors carry no draw, so each part trains them (a part cannot use another's before
it finishes); with 2 parts that is 2 extra detectors of the 18.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROFILE = [
    "train_detector.yolo.epochs=60",
    "train_detector.seeds=[42,43]",
    "few_shot.sources=[synthetic]",
    "few_shot.real_image_counts=[]",
    "train_detector.variants=[]",
]
DRAWS = [0, 1, 2, 3]
# evaluate's and report's outputs (dvc.yaml), copied as they are; the report links the PNGs
COLLECTED = [
    "evaluate.json",
    "evaluation.json",
    "report.md",
    "environment.json",
    "detection_table.csv",
    "detection_runs.csv",
    "real_image_curve.csv",
    "pr_curve.csv",
    "ratio_curve.csv",
    "test_grid.png",
    "synthetic_grid.png",
]
POLL_S = 30
RECIPES_NAME = "recipes"  # <out>/recipes.csv and recipes.md
# overrides that choose the units and variants, not the recipe
# and generate.num_images: how many are made so that few_shot.extra_images pass the filters
NOT_RECIPE = {"few_shot.draws", "train_detector.seeds", "few_shot.sources", "generate.num_images"}
# `handful` of two runs is the same detector when its scores agree this closely (CSV's 6 places)
SAME_SCORE = 1e-6
# stages a join must never rerun: they train or generate (minutes each)
COSTLY = {
    "base",
    "personalize",
    "generate",
    "train-real",
    "train-handful",
    "train-real-curve",
    "train-few-shot",
    "train-synthetic",
    "train-mix",
}


def dvc(*args: str, capture: bool = False) -> str:
    """Run `dvc <args>` (the dvc next to this Python); raise with its output when it fails."""
    command = [str(Path(sys.executable).with_name("dvc")), *args]
    done = subprocess.run(command, capture_output=capture, text=True)
    if done.returncode:
        detail = (done.stderr or done.stdout or "").strip() if capture else "see above"
        raise SystemExit(f"`{' '.join(command[1:])}` failed ({detail})")
    return done.stdout if capture else ""


def override_key(override: str) -> str:
    """The params key of a `key=value` override."""
    return override.split("=", 1)[0]


def overrides(draws: list[int], extra: list[str]) -> list[str]:
    """`-S` arguments of the profile with these draws and the user's extra overrides (an extra
    override of a profile key replaces it: DVC refuses a key given twice)."""
    keys = {override_key(value) for value in extra}
    profile = [value for value in PROFILE if override_key(value) not in keys]
    values = [*profile, *extra, f"few_shot.draws=[{','.join(map(str, draws))}]"]
    return [arg for value in values for arg in ("-S", value)]


def groups(draws: list[int], jobs: int) -> list[list[int]]:
    """The draws in `jobs` contiguous groups of near-equal size (fewer when fewer draws)."""
    size = math.ceil(len(draws) / jobs)
    return [draws[start : start + size] for start in range(0, len(draws), size)]


def wait_for_queue() -> None:
    """Poll `dvc queue status` until nothing is queued or running; fail if a task failed."""
    while True:
        status = dvc("queue", "status", capture=True)
        rows = [line.split() for line in status.splitlines()[1:] if line.strip()]
        states = [row[-1] for row in rows if len(row) >= 4 and row[0] != "Worker"]
        if "Failed" in states:
            raise SystemExit(f"a queued part failed:\n{status}\nsee `dvc queue logs <name>`")
        if not {"Queued", "Running"} & set(states):
            return
        time.sleep(POLL_S)


def mlflow_stage_times(names: list[str]) -> list[dict]:
    """Wall time and optimizer steps of every detector stage the experiments `names` ran, from
    the MLflow store the stages logged to (`synthdet.core.tracking`)."""
    import mlflow

    from synthdet.core import tracking

    mlflow.set_tracking_uri(tracking.tracking_uri())
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    rows = []
    for run in runs:
        name = run.info.run_name or ""
        part, _, stage = name.partition("/")
        finished = run.info.status == "FINISHED"  # a failed stage trained nothing
        if part not in names or not stage.startswith("train-") or not finished:
            continue
        params = run.data.params
        steps = int(params["yolo.epochs"]) * math.ceil(
            int(params["images_per_epoch"]) / int(params["yolo.batch"])
        )
        wall = (run.info.end_time - run.info.start_time) / 1000
        rows.append({"experiment": part, "stage": stage, "wall_s": round(wall, 1), "steps": steps})
    return sorted(rows, key=lambda row: (row["experiment"], row["stage"]))


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def exp_ref(name: str) -> str:
    """The git ref of the DVC experiment `name` (refs/exps/.../<name>)."""
    refs = [r for r in git("for-each-ref", "--format=%(refname)", "refs/exps").split() if r]
    found = [ref for ref in refs if ref.rsplit("/", 1)[-1] == name]
    if len(found) != 1:
        raise SystemExit(f"{len(found)} experiments named {name!r}: `dvc exp show` lists them")
    return found[0]


def combine(parts: list[str], draws: list[int], extra: list[str]) -> None:
    """Join the finished parts into one workspace and run `evaluate` and `report` over all units
    (step 3 of the module docstring). Fails, changing nothing more, when two parts disagree on a
    stage or when `dvc status` finds any other stage out of date."""
    import yaml
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    refs = [exp_ref(part) for part in parts]
    git("checkout", refs[0], "--", ".")
    merged = yaml.safe_load(git("show", f"{refs[0]}:dvc.lock"))
    for part, ref in zip(parts[1:], refs[1:], strict=True):
        stages = yaml.safe_load(git("show", f"{ref}:dvc.lock"))["stages"]
        for name, entry in stages.items():
            if name in ("evaluate", "report"):
                continue
            if name in merged["stages"]:
                if merged["stages"][name] != entry:  # same bits give the same entry
                    print(f"{part}: stage {name}'s entry differs from {parts[0]}'s; kept the first")
                continue
            merged["stages"][name] = entry
            for out in entry.get("outs", []):
                if git("ls-tree", "-r", "--name-only", ref, "--", out["path"]).strip():
                    git("checkout", ref, "--", out["path"])
    Path("dvc.lock").write_text(yaml.safe_dump(merged, sort_keys=False))
    changes = to_path_overrides(overrides(draws, extra)[1::2])
    apply_overrides("params.yaml", changes["params.yaml"])
    dvc("checkout", "--quiet")
    # A stage whose dep is a shared stage's differing output (the second part's annotate on
    # its own copy of train-real@42) reruns alone first; anything costly out of date stops here,
    # and so does any stage still out of date after that (its output came out different).
    stale = sorted(set(out_of_date()) - {"evaluate", "report"})
    costly = [name for name in stale if name.split("@")[0] in COSTLY]
    if costly:
        raise SystemExit(f"after joining the parts these stages are out of date: {costly}")
    for name in stale:
        dvc("repro", "--single-item", name)
    stale = sorted(set(out_of_date()) - {"evaluate", "report"})
    if stale:
        raise SystemExit(f"rerun stages changed their outputs, so these are out of date: {stale}")
    dvc("repro")


def out_of_date() -> list[str]:
    """The stages `dvc status` finds out of date."""
    return list(json.loads(dvc("status", "--json", capture=True) or "{}"))


def collect(
    metrics: Path, out: Path, parts: list[str], args: list[str], joined: bool, note: str | None
) -> None:
    """Copy the combined run's metrics to `out` and write `out/provenance.json` (`joined`: this
    process joined the parts; `note`: what else a reader must know, recorded as given)."""
    out.mkdir(parents=True, exist_ok=True)
    missing = [file for file in COLLECTED if not (metrics / file).is_file()]
    if missing:
        raise SystemExit(f"{metrics}: no {', '.join(missing)}: run `combine` first")
    for file in COLLECTED:
        shutil.copy2(metrics / file, out / file)
    # what reproduces it: the joined params and lock (`dvc checkout` with them restores it all)
    shutil.copy2("params.yaml", out / "params.yaml")
    shutil.copy2("dvc.lock", out / "dvc.lock.yaml")
    environment = json.loads((metrics / "environment.json").read_text())
    stages = mlflow_stage_times(parts)
    trained = [row for row in stages if row["experiment"] in parts]
    commit = git("rev-parse", "HEAD").strip()
    provenance = {
        "commit": commit,
        "overrides": args,
        "parts": parts,
        "combined": "the parts' dvc.lock entries joined, then `dvc repro` (evaluate, report)"
        if joined
        else "the workspace's run as it was (collect alone)",
        "note": note,
        "torch_threads": os.environ.get("SYNTHDET_TORCH_THREADS", "all cores"),
        "cpu_model": environment.get("cpu_model"),
        "cpu_count": os.cpu_count(),
        "detector_stages": stages,
        "detector_stage_wall_s_total": round(sum(row["wall_s"] for row in trained), 1),
        "optimizer_steps_total": sum(row["steps"] for row in trained),
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"collected {len(COLLECTED)} files and provenance.json into {out}")


def recipe(provenance: dict) -> str:
    """A collected run's recipe: its overrides beyond the profile's, less those choosing units;
    none: params.yaml as its commit had it."""
    extra = [
        o for o in provenance["overrides"] if o not in PROFILE and override_key(o) not in NOT_RECIPE
    ]
    return ", ".join(extra) or f"params.yaml at {provenance['commit'][:7]}"


def unit_scores(runs: list[Path]) -> dict[str, dict[tuple[int, int], float]]:
    """{variant: {(draw, seed): test mAP@[.5:.95]}} of the handful variants in collected runs
    (parts of one recipe's run). Raises SystemExit when two give one unit different scores."""
    scores: dict[str, dict[tuple[int, int], float]] = {}
    for run in runs:
        with (run / "detection_runs.csv").open() as file:
            for row in csv.DictReader(file):
                if not row["draw"]:
                    continue
                unit, score = (int(row["draw"]), int(row["seed"])), float(row["map50_95"])
                known = scores.setdefault(row["variant"], {}).setdefault(unit, score)
                if abs(known - score) >= SAME_SCORE:
                    raise SystemExit(f"{run}: {row['variant']} {unit} scored {score}, not {known}")
    return scores


def recipes(runs: list[Path], out: Path) -> list[dict]:
    """Write `out/recipes.csv` and `.md`: the paired comparisons of the collected `runs` (module
    docstring; runs of one recipe are its parts, their units joined), Holm-adjusted over all
    rows; returns the rows."""
    from synthdet.analysis import stats

    parts: dict[str, list[Path]] = {}
    for run in runs:
        parts.setdefault(recipe(json.loads((run / "provenance.json").read_text())), []).append(run)
    found = {label: unit_scores(folders) for label, folders in parts.items()}
    names = {label: "+".join(run.name for run in folders) for label, folders in parts.items()}
    pairs = []  # (runs, recipe, variant label, reference label, variant units, reference units)
    for label, scores in found.items():
        extra = sorted(v for v in scores if v.startswith("handful-"))
        for index, variant in enumerate(extra):
            pairs.append(
                (names[label], label, variant, "handful", scores[variant], scores["handful"])
            )
            for other in extra[index + 1 :]:
                pairs.append((names[label], label, variant, other, scores[variant], scores[other]))
    labels = list(found)
    for index, first in enumerate(labels):
        for second in labels[index + 1 :]:
            a, b = found[first], found[second]
            common = set(a["handful"]) & set(b["handful"])
            same = common and all(
                abs(a["handful"][u] - b["handful"][u]) < SAME_SCORE for u in common
            )
            if same and "handful-synthetic" in a and "handful-synthetic" in b:
                pairs.append(
                    (
                        f"{names[second]} vs {names[first]}",
                        f"{second} vs {first}",
                        f"handful-synthetic ({second})",
                        f"handful-synthetic ({first})",
                        {u: b["handful-synthetic"][u] for u in common},
                        {u: a["handful-synthetic"][u] for u in common},
                    )
                )
    rows = []
    for run, label, variant, reference, ours, theirs in pairs:
        # stats pairs by key: a unit (draw, seed) becomes one key
        keyed = {i: u for i, u in enumerate(sorted(set(ours) & set(theirs)))}
        diff = stats.paired_difference(
            {i: ours[u] for i, u in keyed.items()}, {i: theirs[u] for i, u in keyed.items()}
        )
        rows.append(
            {
                "run": run,
                "recipe": label,
                "comparison": f"{variant} - {reference}",
                "units": diff.seeds,
                "diff": diff.mean,
                "low": diff.low,
                "high": diff.high,
                "p_value": diff.p_value,
                "mdd": stats.minimum_detectable_difference(diff.std, diff.seeds),
            }
        )
    adjusted = stats.holm({str(i): row["p_value"] for i, row in enumerate(rows)})
    for i, row in enumerate(rows):
        row["p_holm"] = adjusted[str(i)]
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{RECIPES_NAME}.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})

    def cell(value: object) -> str:
        return (
            "n/a" if value is None else f"{value:+.3f}" if isinstance(value, float) else str(value)
        )

    lines = [
        "| recipe | comparison | units | difference [95 % interval] | p (Holm) | MDD |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        interval = f"{cell(row['diff'])} [{cell(row['low'])}, {cell(row['high'])}]"
        p = "n/a" if row["p_value"] is None else f"{row['p_value']:.3f} ({row['p_holm']:.3f})"
        mdd = "n/a" if row["mdd"] is None else f"{row['mdd']:.3f}"
        lines.append(
            f"| {row['recipe']} | {row['comparison']} | {row['units']} | {interval} | {p} | {mdd} |"
        )
    (out / f"{RECIPES_NAME}.md").write_text("\n".join(lines) + "\n")
    print(
        f"{len(rows)} comparisons of {len(runs)} runs written to {out}/{RECIPES_NAME}.csv and .md"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["run", "combine", "collect", "recipes"])
    parser.add_argument("--jobs", type=int, default=2, help="parts run side by side")
    parser.add_argument("--draws", type=int, nargs="+", default=DRAWS)
    parser.add_argument("--set", action="append", default=[], help="extra key=value overrides")
    parser.add_argument("--name", default="evidence", help="experiment name (parts: -part<i>)")
    parser.add_argument("--parts", nargs="+", help="combine/collect: the parts' names")
    parser.add_argument("--metrics", type=Path, default=Path("metrics"))
    parser.add_argument("--out", type=Path, default=Path("metrics/evidence"))
    parser.add_argument("--runs", type=Path, nargs="+", help="recipes: collected runs' folders")
    parser.add_argument("--note", help="collect: recorded in provenance.json as given")
    args = parser.parse_args()
    if args.step == "recipes":
        recipes(args.runs or [args.out], args.out)
        return
    os.environ.setdefault("SYNTHDET_TORCH_THREADS", "1")
    split = groups(args.draws, args.jobs)
    parts = args.parts or [f"{args.name}-part{i}" for i in range(len(split))]
    if args.step == "run":
        for part, draws in zip(parts, split, strict=True):
            dvc("exp", "run", "--queue", "-n", part, *overrides(draws, args.set))
        dvc("queue", "start", "-j", str(args.jobs))
        wait_for_queue()
    joined = args.step in ("run", "combine")
    if joined:
        combine(parts, args.draws, args.set)
    collect(args.metrics, args.out, parts, overrides(args.draws, args.set)[1::2], joined, args.note)


if __name__ == "__main__":
    main()
