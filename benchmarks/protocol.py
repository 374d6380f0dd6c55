"""Detector-protocol experiment: headroom of the real-image curve and its noise components.

    python benchmarks/protocol.py --out metrics/protocol --protocol base:epochs=10 \
        --protocol long:epochs=30 --plan plan.txt

Trains YOLO detectors (`synthdet.detectors.detection.train_detector`, the pipeline's own code) on
nested subsets of the prepared real train split, under one or more detector protocols (the
`train_detector.yolo` block of params.yaml with overrides), and scores each on the real test
split with COCO mAP@[.5:.95] (torchmetrics, as `evaluate` does). Every subset is repeated to
`train_detector.min_images_per_epoch` images an epoch (null: the train split's count), the
pipeline's equal-steps rule.

A unit is (protocol, subset, draw, seed):
- subset `handful`: `shared.subjects.*.images` train images drawn as the `handful@<draw>` stages
  draw them (`data.subject_images`, seed `data.draw_seed`: shared.seed + draw; draw 0 is the
  pipeline's first handful);
- subset `n<k>`: the draw's handful, then other train images shuffled by the draw's seed, the
  first k (nested, as `variants.compose` builds real-n<k>);
- subset `real`: every train image.

Each unit appends one JSON line to `<out>/runs.jsonl` (resumable: finished units are skipped)
and its test predictions to `<out>/predictions/<unit>.pt`, so that `summarise()` can bootstrap
over the test split's photo groups. `--summarise` writes `<out>/noise.json` (variance
components: seeds, draws, test photos) and `<out>/curve.csv` (mean +- std per protocol and
subset). Runs in one process, so imports and dataset checks are paid once.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from synthdet.analysis import metrics
from synthdet.core.data import draw_seed, link_yolo_folder, read_yolo_folder, subject_images
from synthdet.detectors import detection, variants
from synthdet.params import load_params
from synthdet.stages.train_detector import images_per_epoch

BOOTSTRAP_RESAMPLES = 100


def parse_protocol(text: str) -> tuple[str, dict]:
    """'long:epochs=30,lr0=0.004' -> ('long', {'epochs': 30, 'lr0': 0.004})."""
    name, _, overrides = text.partition(":")
    values = {}
    for item in filter(None, overrides.split(",")):
        key, _, raw = item.partition("=")
        values[key] = json.loads(raw) if re.fullmatch(r"[-0-9.eE]+|true|false", raw) else raw
    return name, values


def subset_images(
    train: list, subject: str, stem_pattern: str, count: int, seed: int, size: str
) -> list[Path]:
    """The train images of `size` ('handful', 'n<k>', 'real') for draw seed `seed`."""
    handful = [s.image for s in subject_images(train, subject, stem_pattern, count, seed)]
    if size == "handful":
        return handful
    rest = sorted(s.image for s in train if s.image not in set(handful))
    random.Random(seed).shuffle(rest)
    ordered = handful + rest
    return ordered if size == "real" else ordered[: int(size[1:])]


def train_unit(params, protocol: dict, images: list[Path], seed: int, scratch: Path, out: Path):
    config = params.train_detector
    wanted = images_per_epoch(config, Path("metrics/prepare.json"))
    copies, top_up = variants.epoch_plan(len(images), wanted)
    once_more = sorted(images)
    random.Random(params.shared.seed).shuffle(once_more)
    parts = [images] * copies + ([once_more[:top_up]] if top_up else [])
    source = images[0].parent.parent
    folders = [
        link_yolo_folder(source, scratch / f"copy{index}", part) for index, part in enumerate(parts)
    ]
    args = {**config.train_args(), **protocol}
    return detection.train_detector(
        model=config.model_source,
        train_folders=folders,
        val_folder=Path("data/prepared/val"),
        class_names=params.shared.class_names,
        seed=seed,
        yolo_args=args,
        out_dir=out,
    )


def run(out: Path, protocols: dict[str, dict], plan: list[tuple[str, str, int, int]]) -> None:
    params = load_params()
    subject, settings = next(iter(params.shared.subjects.items()))
    train = read_yolo_folder(Path("data/prepared/train"), len(params.shared.class_names))
    test = read_yolo_folder(Path("data/prepared/test"), len(params.shared.class_names))
    targets = [metrics.target_boxes(sample) for sample in test]
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions").mkdir(exist_ok=True)
    settings = out / "protocols.json"
    known = json.loads(settings.read_text()) if settings.exists() else {}
    for name, overrides in protocols.items():
        if known.get(name, overrides) != overrides:
            raise SystemExit(f"{settings}: protocol {name} was {known[name]}, now {overrides}")
        known[name] = overrides
    settings.write_text(json.dumps(known, indent=2, sort_keys=True) + "\n")
    log = out / "runs.jsonl"
    done = (
        {json.loads(line)["unit"] for line in log.read_text().splitlines()}
        if log.exists()
        else set()
    )
    for protocol, size, draw, seed in plan:
        unit = f"{protocol}-{size}-d{draw}-s{seed}"
        if unit in done:
            continue
        images = subset_images(
            train,
            subject,
            settings.stem_pattern,
            settings.images,
            draw_seed(params.shared.seed, draw),
            size,
        )
        started = time.time()
        with tempfile.TemporaryDirectory(prefix="synthdet-protocol-") as scratch:
            result = train_unit(
                params, protocols[protocol], images, seed, Path(scratch), Path(scratch) / "det"
            )
            trained = time.time() - started
            found = detection.predict(
                detection.load_detector(Path(scratch) / "det", params.shared.class_names),
                [s.image for s in test],
                imgsz=protocols[protocol].get("imgsz", params.train_detector.imgsz),
                confidence=params.evaluate.confidence,
                iou=params.evaluate.iou,
            )
        predictions = [metrics.predicted_boxes(d) for d in found]
        torch.save(predictions, out / "predictions" / f"{unit}.pt")
        score = metrics.detection_metrics(predictions, targets)
        row = {
            "unit": unit,
            "protocol": protocol,
            "size": size,
            "images": len(images),
            "draw": draw,
            "seed": seed,
            "test_map50_95": round(score.map50_95, 6),
            "test_map50": round(score.map50, 6),
            "val_map50_95": round(result.best.get("metrics/mAP50-95", float("nan")), 6),
            "epochs": len(result.epochs),
            "train_seconds": round(trained, 1),
            "torch_threads": torch.get_num_threads(),
        }
        with log.open("a") as file:
            file.write(json.dumps(row, sort_keys=True) + "\n")
        print(json.dumps(row), flush=True)


def summarise(out: Path, group_pattern: str) -> None:
    """Variance components and the curve from `out/runs.jsonl` (see the module docstring)."""
    params = load_params()
    test = read_yolo_folder(Path("data/prepared/test"), len(params.shared.class_names))
    targets = [metrics.target_boxes(sample) for sample in test]
    groups: dict[str, list[int]] = {}
    for index, sample in enumerate(test):
        match = re.fullmatch(group_pattern, sample.image.stem)
        groups.setdefault(match.group(1) if match else sample.image.stem, []).append(index)
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    protocols = json.loads((out / "protocols.json").read_text())
    by_cell: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        by_cell.setdefault((row["protocol"], row["size"]), []).append(row)

    def sd(values: list[float]) -> float | None:
        return round(statistics.stdev(values), 6) if len(values) > 1 else None

    rng = np.random.default_rng(0)
    names = sorted(groups)
    resamples = [rng.choice(len(names), len(names)) for _ in range(BOOTSTRAP_RESAMPLES)]
    curve, noise = [], {}
    for (protocol, size), cell in sorted(by_cell.items()):
        scores = [r["test_map50_95"] for r in cell]
        draw0 = [r["test_map50_95"] for r in cell if r["draw"] == 0]
        by_seed: dict[int, list[float]] = {}
        for r in cell:
            by_seed.setdefault(r["seed"], []).append(r["test_map50_95"])
        draw_sd = [sd(v) for v in by_seed.values() if len(v) > 1]
        # Test-photo bootstrap of the first unit: how much the score moves with which photos
        # happen to be the test split, the detector held fixed.
        first = cell[0]
        predictions = torch.load(out / "predictions" / f"{first['unit']}.pt")
        boot = []
        for pick in resamples:
            chosen = [i for g in pick for i in groups[names[g]]]
            boot.append(
                metrics.detection_metrics(
                    [predictions[i] for i in chosen], [targets[i] for i in chosen]
                ).map50_95
            )
        key = f"{protocol}.{size}"
        noise[key] = {
            "settings": ", ".join(f"{k}={v}" for k, v in sorted(protocols[protocol].items()))
            or "params.yaml",
            "units": len(cell),
            "mean": round(statistics.mean(scores), 6),
            "mean_draw0": round(statistics.mean(draw0), 6) if draw0 else None,
            "std_all_units": sd(scores),
            "std_over_seeds_draw0": sd(draw0),
            "std_over_draws_same_seed": round(statistics.mean(draw_sd), 6) if draw_sd else None,
            "std_test_photo_bootstrap": round(statistics.stdev(boot), 6),
            "test_photos": len(names),
            "train_seconds_mean": round(statistics.mean(r["train_seconds"] for r in cell), 1),
        }
        curve.append(
            [protocol, size, cell[0]["images"], len(cell), noise[key]["mean"], sd(scores) or ""]
        )
    (out / "noise.json").write_text(json.dumps(noise, indent=2, sort_keys=True) + "\n")
    with (out / "curve.csv").open("w") as file:
        file.write("protocol,subset,images,units,mean_map50_95,std_map50_95\n")
        for row in curve:
            file.write(",".join(str(c) for c in row) + "\n")
    print(json.dumps(noise, indent=2))
    for protocol in sorted({protocol for protocol, _ in by_cell}):
        real, handful = noise.get(f"{protocol}.real"), noise.get(f"{protocol}.handful")
        if real and handful and real["std_over_seeds_draw0"] and handful["std_over_seeds_draw0"]:
            pooled = math.sqrt(
                (real["std_over_seeds_draw0"] ** 2 + handful["std_over_seeds_draw0"] ** 2) / 2
            )
            gap = real["mean_draw0"] - handful["mean_draw0"]
            print(f"{protocol}: real - handful (draw 0) {gap:+.3f}, pooled seed std {pooled:.3f}")
    plot_curve(curve, out / "curve.png")


def plot_curve(curve: list[list], path: Path) -> None:
    """Mean test mAP@[.5:.95] +- std over units against the labelled images, a line per
    protocol (matplotlib), next to curve.csv."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4))
    for protocol in sorted({row[0] for row in curve}):
        points = sorted((row[2], row[4], row[5] or 0.0) for row in curve if row[0] == protocol)
        images, means, stds = zip(*points, strict=True)
        axes.errorbar(images, means, yerr=stds, marker="o", capsize=3, label=protocol)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("labelled real training images (handful = 8)")
    axes.set_ylabel("test mAP@[.5:.95]")
    axes.set_title("Real-image curve per detector protocol (mean +- std)")
    axes.legend(title="protocol", loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("metrics/protocol"))
    parser.add_argument("--protocol", action="append", default=[], help="name:key=value,...")
    parser.add_argument("--plan", type=Path, help="lines: protocol size draw seed")
    parser.add_argument("--summarise", action="store_true")
    parser.add_argument("--group-pattern", default=r"(.+)_\d+")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.out, args.group_pattern)
        return
    protocols = dict(parse_protocol(text) for text in args.protocol)
    plan = [
        (p, s, int(d), int(seed))
        for p, s, d, seed in (line.split() for line in args.plan.read_text().splitlines() if line)
    ]
    run(args.out, protocols, plan)


if __name__ == "__main__":
    main()
