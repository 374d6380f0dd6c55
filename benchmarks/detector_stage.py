"""Where a detector stage's time goes: a phase breakdown of `synthdet.stages.train_detector`.

    SYNTHDET_TORCH_THREADS=1 python benchmarks/detector_stage.py --label before \
        --variant real --variant handful [--epochs 30] [--detector val_every=1] [--one-process]
    python benchmarks/detector_stage.py --summarise before:after   # ratios of measured labels

Runs the stage exactly as dvc.yaml does (`python -m synthdet.stages.train_detector ...`, one
process per detector, or with `--one-process` all of them in one process joined by `--then`), in
a scratch folder holding params.yaml with the overrides (`--detector` of `train_detector`, `--set`
of `train_detector.yolo`) and its
own MLflow store, on the prepared data (`--data`, default data/prepared). The child process is
this file with `--child`: it times the stage's phases by wrapping its functions and adding
ultralytics callbacks, without changing what it computes. CPU time (getrusage, user + sys, of the
child process) is the primary unit, as the machine may be shared; wall time second.

Each measurement is one entry of `--out` (default metrics/bench/detector_stage.json, a flat
JSON, `<label>.<field>`): CPU and wall seconds per phase, optimizer steps, steps per CPU-minute,
and the sha256 of every detector's weights and per-epoch CSV (the same-numbers check).
"""

from __future__ import annotations

import os
import resource
import sys
import time


def _cpu(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- child: the stage, timed
class Timeline:
    """CPU and wall time per phase: `switch` charges the time since the last switch to the
    current phase; `section` is a nested phase that hands back to the outer one."""

    def __init__(self, phase: str) -> None:
        self.totals: dict[str, list[float]] = {}
        self.current = phase
        self.cpu, self.wall = _cpu(), time.time()

    def switch(self, phase: str) -> None:
        cpu, wall = _cpu(), time.time()
        total = self.totals.setdefault(self.current, [0.0, 0.0])
        total[0] += cpu - self.cpu
        total[1] += wall - self.wall
        self.current, self.cpu, self.wall = phase, cpu, wall

    def section(self, phase: str, function):
        def timed(*args, **kwargs):
            outer = self.current
            self.switch(phase)
            try:
                return function(*args, **kwargs)
            finally:
                self.switch(outer)

        return timed


def child(out_json: str, stage_args: list[str]) -> None:
    import contextlib
    import json

    started_cpu, started_wall = _cpu(), time.time()
    timeline = Timeline("imports (synthdet, torch, mlflow)")
    timeline.totals["interpreter start"] = [
        started_cpu,
        started_wall - float(os.environ["BENCH_T0"]),
    ]
    from synthdet.core import cli
    from synthdet.detectors import detection, variants
    from synthdet.stages import train_detector

    timeline.switch("import ultralytics")
    detection._ultralytics()
    from ultralytics.engine.trainer import BaseTrainer

    timeline.switch("other")

    steps = [0]
    optimizer_step = BaseTrainer.optimizer_step

    def counted_step(trainer):
        steps[0] += 1
        return optimizer_step(trainer)

    BaseTrainer.optimizer_step = counted_step

    cli.load_params = timeline.section("params", cli.load_params)
    variants.training_folders = timeline.section("variant view", variants.training_folders)
    variants.label_boxes = timeline.section("variant view", variants.label_boxes)
    detection.dataset_view = timeline.section("dataset view", detection.dataset_view)
    detection.save_detector = timeline.section("save detector", detection.save_detector)
    detection.write_epochs_csv = timeline.section("save detector", detection.write_epochs_csv)
    detection._initial_detector = timeline.section("model build", detection._initial_detector)

    stage_run = train_detector.stage_run

    @contextlib.contextmanager
    def timed_stage_run(*args, **kwargs):
        context = stage_run(*args, **kwargs)
        run = timeline.section("mlflow start run", context.__enter__)()
        for name in ("log_metrics", "log_artifact"):
            setattr(run, name, timeline.section("mlflow logging", getattr(run, name)))
        try:
            yield run
        finally:
            timeline.section("mlflow end run", context.__exit__)(*sys.exc_info())

    train_detector.stage_run = timed_stage_run

    yolo = detection._yolo
    state = {"final": False}

    def phase(name):
        return lambda trainer: timeline.switch(name)

    def val_end(validator):
        timeline.switch("trainer other")
        state["validated"] = True

    def fit_epoch_end(trainer):
        if state["final"]:
            return
        timeline.switch("trainer other")
        if trainer.epoch + 1 >= trainer.epochs:
            state["final"] = True
            timeline.switch("final eval (strip checkpoints, validate)")

    def timed_yolo(source, **kwargs):
        detector = yolo(source, **kwargs)
        callbacks = {
            "on_pretrain_routine_start": phase("trainer setup (dataset scan, loaders)"),
            "on_pretrain_routine_end": phase("trainer other"),
            "on_train_epoch_start": phase("train epochs"),
            "on_train_epoch_end": phase("trainer other"),
            "on_val_start": lambda _: timeline.switch(
                "final eval (strip checkpoints, validate)" if state["final"] else "val per epoch"
            ),
            "on_val_end": lambda _: timeline.switch(
                "final eval (strip checkpoints, validate)" if state["final"] else "trainer other"
            ),
            "on_fit_epoch_end": fit_epoch_end,
            "on_train_end": phase("trainer other"),
        }
        for event, callback in callbacks.items():
            detector.callbacks[event].insert(0, callback)
        train = detector.train

        def timed_train(*args, **kwargs):
            state["final"] = False
            return timeline.section("trainer init (model rebuild)", train)(*args, **kwargs)

        detector.train = timed_train
        return detector

    detection._yolo = timed_yolo

    sys.argv = ["synthdet.stages.train_detector", *stage_args]
    train_detector.main()
    timeline.switch("end")
    result = {name: [round(c, 3), round(w, 3)] for name, (c, w) in timeline.totals.items()}
    result["optimizer steps"] = steps[0]
    result["cpu at end"] = _cpu()
    result["wall at end"] = time.time()
    with open(out_json, "w") as file:
        json.dump(result, file)


# ---------------------------------------------------------------- parent: run and record


def summarise(out, pairs: list[str]) -> None:
    """`BEFORE:AFTER` label pairs -> `summary.<after>_vs_<before>.*`: their steps per CPU-minute,
    the ratio, and the CPU seconds per detector outside the training epochs (the part the cuts
    remove; the training epochs' CPU time swings by 10 % with the machine's other load)."""
    import json

    data = json.loads(out.read_text())
    for pair in pairs:
        before, after = pair.split(":")
        key = f"summary.{after}_vs_{before}"
        for label in (before, after):
            units = len(data[f"{label}.units"].split())
            training = data[f"{label}.phase.train epochs.cpu_s"]
            data[f"{key}.{label}.steps_per_cpu_minute"] = data[f"{label}.steps_per_cpu_minute"]
            data[f"{key}.{label}.non_training_cpu_s_per_detector"] = round(
                (data[f"{label}.cpu_s"] - training) / units, 2
            )
        data[f"{key}.ratio"] = round(
            data[f"{after}.steps_per_cpu_minute"] / data[f"{before}.steps_per_cpu_minute"], 3
        )
    out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main() -> None:
    import argparse
    import hashlib
    import json
    import subprocess
    import tempfile
    from pathlib import Path

    import yaml

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", help="name of this measurement in --out")
    parser.add_argument("--variant", action="append", choices=["real", "handful"])
    parser.add_argument(
        "--summarise", nargs="+", metavar="BEFORE:AFTER", help="only compare measured labels"
    )
    parser.add_argument("--seed", type=int, action="append", help="default: 42")
    parser.add_argument("--epochs", type=int, default=None, help="train_detector.yolo.epochs")
    parser.add_argument(
        "--set", action="append", default=[], help="train_detector.yolo KEY=VALUE (yaml value)"
    )
    parser.add_argument(
        "--detector", action="append", default=[], help="train_detector KEY=VALUE (yaml value)"
    )
    parser.add_argument("--one-process", action="store_true", help="every unit in one process")
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--handful", type=Path, default=Path("data/handfuls/draw0"))
    parser.add_argument("--prepare-metrics", type=Path, default=Path("metrics/prepare.json"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("metrics/bench/detector_stage.json"))
    args = parser.parse_args()
    if args.summarise:
        summarise(args.out, args.summarise)
        return
    if not (args.label and args.variant):
        parser.error("--label and --variant are required to measure")

    params = yaml.safe_load(args.params.read_text())
    yolo = params["train_detector"]["yolo"]
    if args.epochs:
        yolo["epochs"] = args.epochs
    for item in args.set:
        key, _, value = item.partition("=")
        yolo[key] = yaml.safe_load(value)
    for item in args.detector:
        key, _, value = item.partition("=")
        params["train_detector"][key] = yaml.safe_load(value)
    data = args.data.resolve()
    handful, prepare_metrics = args.handful.resolve(), args.prepare_metrics.resolve()
    units = [(variant, seed) for variant in args.variant for seed in args.seed or [42]]
    with tempfile.TemporaryDirectory(prefix="synthdet-bench-") as scratch:
        scratch = Path(scratch)
        (scratch / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

        def unit_args(variant: str, seed: int) -> list[str]:
            where = ["--train", str(data / "train")] if variant == "real" else []
            where += ["--handful", str(handful), "--draw", "0"] if variant == "handful" else []
            real = "all" if variant == "real" else "handful"
            return [
                *("--stage", f"train-{variant}@{seed}", "--real", real, "--seed", str(seed)),
                *where,
                *("--val", str(data / "val")),
                *("--out", str(scratch / "models" / variant / f"seed{seed}")),
                *("--results", str(scratch / "metrics" / variant / f"seed{seed}.csv")),
                *("--prepare-metrics", str(prepare_metrics)),
            ]

        runs = (
            [[arg for unit in units for arg in ["--then", *unit_args(*unit)]][1:]]
            if args.one_process
            else [unit_args(*unit) for unit in units]
        )
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}"}
        # The pipeline's store exists after its first stage: create it (and the experiment)
        # outside the measurement.
        warm_up = (
            "from synthdet.core.tracking import stage_run\n"
            f"with stage_run('warm-up', {params['shared']['mlflow_experiment']!r}, {{}}): pass"
        )
        subprocess.run(
            [sys.executable, "-c", warm_up], cwd=scratch, env=env, check=True, capture_output=True
        )
        totals: dict[str, list[float]] = {}
        steps, whole_cpu, whole_wall = 0, 0.0, 0.0
        for number, stage_args in enumerate(runs):
            timings = scratch / f"timings{number}.json"
            cpu_before, wall_before = _cpu(resource.RUSAGE_CHILDREN), time.time()
            env["BENCH_T0"] = repr(wall_before)
            subprocess.run(
                [sys.executable, __file__, "--child", str(timings), *stage_args],
                cwd=scratch,
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            cpu, wall = _cpu(resource.RUSAGE_CHILDREN) - cpu_before, time.time() - wall_before
            phases = json.loads(timings.read_text())
            steps += phases.pop("optimizer steps")
            phases["interpreter exit"] = [
                cpu - phases.pop("cpu at end"),
                wall_before + wall - phases.pop("wall at end"),
            ]
            for name, (phase_cpu, phase_wall) in phases.items():
                total = totals.setdefault(name, [0.0, 0.0])
                total[0] += phase_cpu
                total[1] += phase_wall
            whole_cpu += cpu
            whole_wall += wall
        digests = {}
        for variant, seed in units:
            weights = scratch / "models" / variant / f"seed{seed}" / "weights.safetensors"
            epochs_csv = scratch / "metrics" / variant / f"seed{seed}.csv"
            for name, path in (("weights", weights), ("epochs_csv", epochs_csv)):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
                digests[f"sha256.{variant}.seed{seed}.{name}"] = digest
            digests[f"last_epoch.{variant}.seed{seed}"] = epochs_csv.read_text().splitlines()[-1]

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in subprocess.check_output(["lscpu"], text=True).splitlines()
            if line.startswith("Model name")
        ),
        "unknown",
    )
    entry = {
        "units": " ".join(f"{variant}@{seed}" for variant, seed in units),
        "processes": len(runs),
        "overrides": " ".join([*args.detector, *(f"yolo.{item}" for item in args.set)]) or "none",
        "epochs": yolo["epochs"],
        "optimizer_steps": steps,
        "cpu_s": round(whole_cpu, 2),
        "wall_s": round(whole_wall, 2),
        "steps_per_cpu_minute": round(steps / whole_cpu * 60, 2),
        "steps_per_wall_minute": round(steps / whole_wall * 60, 2),
        "torch_threads": os.environ.get("SYNTHDET_TORCH_THREADS") or "all cores",
        "machine": model,
        **{
            f"phase.{name}.{unit}": round(value, 2)
            for name, (phase_cpu, phase_wall) in totals.items()
            for unit, value in (("cpu_s", phase_cpu), ("wall_s", phase_wall))
        },
        **digests,
    }
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    existing = {k: v for k, v in existing.items() if not k.startswith(f"{args.label}.")}
    existing.update({f"{args.label}.{key}": value for key, value in entry.items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
    width = max(len(name) for name in totals)
    for name, (phase_cpu, phase_wall) in sorted(totals.items(), key=lambda item: -item[1][0]):
        print(f"{name:<{width}}  cpu {phase_cpu:7.2f} s  wall {phase_wall:7.2f} s")
    print(
        f"{args.label}: {steps} steps, cpu {whole_cpu:.1f} s, wall {whole_wall:.1f} s, "
        f"{entry['steps_per_cpu_minute']} steps per CPU-minute; {digests}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
    else:
        main()
