"""evaluate: every detector on the real test split, compared with statistics.

Each variant x seed in params (`synthdet.variants`) is read from the detectors folder and scored
with COCO mAP (torchmetrics) on the real test split; `synthdet.evaluation` summarises them: mean
and std over seeds, paired differences with 95 % t intervals and Holm-adjusted p-values, the
minimum detectable difference, the margin over the chance baseline (one whole-image box per
image), the real-image equivalent (the nested real curve inverted) and sanity flags.

Writes `metrics/evaluate.json` (the headline numbers: `dvc exp show`), `metrics/evaluation.json`
(every number), the CSV tables of `evaluation.tables`, `test_grid.png` (test images: ground
truth, then each variant's boxes at `evaluate.grid_confidence`) and `synthetic_grid.png`
(generated images with their labels).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from synthdet import detection, evaluation, metrics, plots, variants
from synthdet.artifacts.evaluation import EVALUATION, HEADLINE_METRICS, Evaluation
from synthdet.artifacts.metrics import read_metrics_json
from synthdet.cli import run_stage
from synthdet.data import DataError, atomic_path, list_images, read_yolo_folder, write_json
from synthdet.params import Params
from synthdet.tracking import stage_run

GRID_TEST_IMAGES = 4


def find_detectors(detectors_dir: Path, params: Params) -> dict[str, dict[int, Path]]:
    """{variant: {seed: folder}} for every variant and seed params ask for, the baseline first;
    raises DataError naming the missing ones. Folders of other variants are ignored."""
    found: dict[str, dict[int, Path]] = {}
    missing = []
    for variant in variants.configured(params):
        for seed in params.train_detector.seeds:
            path = Path(detectors_dir) / variant.name / variants.seed_folder(seed)
            if variant.name.startswith("mix-"):  # DVC writes mix-r1-f0.1 for the share 1.0
                matches = [
                    p / variants.seed_folder(seed)
                    for p in Path(detectors_dir).glob("mix-*")
                    if variants.parse(p.name) == variant
                ]
                path = matches[0] if matches else path
            if path.is_dir():
                found.setdefault(variant.name, {})[seed] = path
            else:
                missing.append(f"{variant.name}/{variants.seed_folder(seed)}")
    if missing:
        raise DataError(
            f"{detectors_dir}: no detector for {', '.join(missing)}; train them first "
            "(dvc repro; the train-* stages)"
        )
    return found


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(["" if cell is None else cell for cell in row] for row in rows)


def run(
    params: Params, folders: dict[str, Path], images_metrics: Path, out_dir: Path
) -> Evaluation:
    """Score the detectors of `folders['detectors']` on `folders['test']`; `folders` also names
    `real` (train), `handful` (personalize) and `extra` (one YOLO folder per extra source) for
    the variants' compositions. Writes into `out_dir`; returns every number (the typed
    evaluation.json). Raises DataError for a missing detector or an unreadable test split."""
    config, class_names = params.evaluate, params.shared.class_names
    detectors = find_detectors(folders["detectors"], params)
    test = read_yolo_folder(folders["test"], len(class_names))
    logged = {"evaluate": vars(config), "detectors": sum(len(d) for d in detectors.values())}
    with stage_run("evaluate", params.shared.mlflow_experiment, logged) as mlflow_run:
        targets = [metrics.target_boxes(sample) for sample in test]
        grid = {"ground truth": [sample.boxes for sample in test[:GRID_TEST_IMAGES]]}
        runs: dict[str, dict[int, evaluation.Run]] = {}
        for name, by_seed in detectors.items():
            for seed, folder in by_seed.items():
                found = detection.predict(
                    detection.load_detector(folder, class_names),
                    [sample.image for sample in test],
                    imgsz=params.train_detector.imgsz,
                    confidence=config.confidence,
                    iou=config.iou,
                )
                scores = metrics.detection_metrics(
                    [metrics.predicted_boxes(image) for image in found], targets
                )
                top = max((float(d.scores.max()) for d in found if len(d.scores)), default=0.0)
                runs.setdefault(name, {})[seed] = evaluation.Run(scores, top)
                if seed == params.shared.seed:
                    grid[name] = [
                        tuple(b for b, s in image.yolo_boxes() if s >= config.grid_confidence)
                        for image in found[:GRID_TEST_IMAGES]
                    ]
        extra_root = Path(folders["extra"])
        compositions = variants.compositions(
            params,
            list_images(Path(folders["real"]) / "images"),
            variants.handful_images(folders["handful"]),
            {p.name: list_images(p / "images") for p in extra_root.iterdir() if p.is_dir()},
            list(runs),
        )
        curve = sorted(
            ((name, len(c.real)) for name, c in compositions.items() if not c.extra),
            key=lambda item: item[1],
        )
        curve = [(n, c) for n, c in curve if n == variants.HANDFUL or n.startswith("real")]
        summary = evaluation.summarise(
            runs,
            evaluation.chance_baseline(test),
            curve,
            params.annotate_with_baseline.confidence,
            compositions,
            test,
        )
        for file, (header, rows) in evaluation.tables(summary, runs, compositions).items():
            _write_csv(out_dir / file, header, rows)
        synthetic = read_yolo_folder(extra_root / variants.SYNTHETIC, len(class_names))
        plots.box_grid(synthetic[: config.grid_images], out_dir / "synthetic_grid.png")
        plots.comparison_grid(
            [sample.image for sample in test[:GRID_TEST_IMAGES]], grid, out_dir / "test_grid.png"
        )
        headline = evaluation.headline(summary, read_metrics_json(images_metrics))
        summary.write(out_dir / EVALUATION)
        write_json(out_dir / HEADLINE_METRICS, headline)
        mlflow_run.log_metrics(summary.to_flat())
    print("evaluate: " + ", ".join(f"{k} {v}" for k, v in headline.items()))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, what in (
        ("test", "real test YOLO folder"),
        ("detectors", "folder of <variant>/seed<seed> detectors"),
        ("real", "real train YOLO folder"),
        ("handful", "prepare's personalize folder"),
        ("extra", "folder of extra-image YOLO folders (synthetic, copy-paste, pseudo)"),
    ):
        parser.add_argument(f"--{name}", type=Path, required=True, help=what)
    parser.add_argument("--images-metrics", type=Path, required=True, help="check-images JSON")
    parser.add_argument("--out", type=Path, required=True, help="metrics folder to write into")
    args = parser.parse_args()
    folders = {k: getattr(args, k) for k in ("test", "detectors", "real", "handful", "extra")}
    run_stage(lambda params: run(params, folders, args.images_metrics, args.out))


if __name__ == "__main__":
    main()
