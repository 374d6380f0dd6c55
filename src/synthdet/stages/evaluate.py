"""evaluate: every detector on the real test split, compared with statistics.

Each variant x seed in params (`synthdet.detectors.variants`) is read from the detectors folder and
scored with COCO mAP (torchmetrics) on the real test split; `synthdet.analysis.evaluation`
summarises them: mean and std over seeds, paired differences with 95 % t intervals and Holm-adjusted
p-values, the minimum detectable difference, the margin over the chance baseline (one whole-image
box per image), the real-image equivalent (the nested real curve inverted, where it rises beyond its
noise), whether each comparison is evidence (`evaluate.target_difference`), the headroom check (a
warning when `real` barely beats `handful` or chance) and sanity flags.

Writes `metrics/evaluate.json` (the headline numbers: `dvc exp show`), `metrics/evaluation.json`
(every number), the CSV tables of `evaluation.tables`, `test_grid.png` (test images: ground
truth, then each variant's boxes at `evaluate.grid_confidence`) and `synthetic_grid.png`
(generated images with their labels).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from synthdet.analysis import evaluation, metrics, plots
from synthdet.artifacts.detector import VARIANT_INFO, DetectorVariant
from synthdet.artifacts.evaluation import EVALUATION, HEADLINE_METRICS, Evaluation
from synthdet.artifacts.metrics import read_metrics_json
from synthdet.core.cli import run_stage
from synthdet.core.data import DataError, atomic_path, list_images, read_yolo_folder, write_json
from synthdet.core.errors import warn
from synthdet.core.tracking import stage_run
from synthdet.detectors import detection, variants
from synthdet.params import Params

GRID_TEST_IMAGES = 4


def find_detectors(detectors_dir: Path, params: Params) -> dict[variants.Variant, dict[int, Path]]:
    """{variant: {seed: folder}} for every variant and seed params ask for, the baseline first,
    found by the `variant.json` each train stage writes next to its weights (folder names are
    not read: DVC spells a share 1.0 as `1`). Folders of other variants are ignored. Raises
    DataError naming the missing detectors, and two folders holding the same one."""
    by_key: dict[tuple[variants.Variant, int], Path] = {}
    unrecorded = []
    for folder in sorted(Path(detectors_dir).glob("*/seed*")):
        if not (folder / VARIANT_INFO).is_file():
            unrecorded.append(str(folder.relative_to(detectors_dir)))
            continue
        info = DetectorVariant.read(folder)
        key = (info.variant, info.seed)
        if key in by_key:
            raise DataError(
                f"{by_key[key]} and {folder} both hold {info.variant.name} seed {info.seed}; "
                "remove the stale one (a variant whose stage no longer exists)"
            )
        by_key[key] = folder
    found: dict[variants.Variant, dict[int, Path]] = {}
    missing = []
    for variant in variants.configured(params):
        for seed in params.train_detector.seeds:
            if (variant, seed) in by_key:
                found.setdefault(variant, {})[seed] = by_key[variant, seed]
            else:
                missing.append(f"{variant.name} seed {seed}")
    if missing:
        hint = (
            f" ({', '.join(unrecorded)} hold no {VARIANT_INFO}: trained by an older synthdet)"
            if unrecorded
            else ""
        )
        raise DataError(
            f"{detectors_dir}: no detector for {', '.join(missing)}{hint}; train them "
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
        for variant, by_seed in detectors.items():
            name = variant.name
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
        trained = list(detectors)
        compositions = variants.compositions(
            trained,
            list_images(Path(folders["real"]) / "images"),
            variants.handful_images(folders["handful"]),
            {p.name: list_images(p / "images") for p in extra_root.iterdir() if p.is_dir()},
            params.shared.seed,
        )
        curve = sorted(
            ((v.name, len(compositions[v.name].real)) for v in trained if v.on_real_image_curve),
            key=lambda item: item[1],
        )
        summary = evaluation.summarise(
            runs,
            evaluation.chance_baseline(test),
            curve,
            variants.comparisons(trained),
            params.annotate_with_baseline.confidence,
            compositions,
            test,
            target_difference=config.target_difference,
        )
        tables = evaluation.tables(summary, runs, trained, compositions)
        for file, (header, rows) in tables.items():
            _write_csv(out_dir / file, header, rows)
        synthetic = read_yolo_folder(extra_root / variants.SYNTHETIC, len(class_names))
        plots.box_grid(synthetic[: config.grid_images], out_dir / "synthetic_grid.png")
        plots.comparison_grid(
            [sample.image for sample in test[:GRID_TEST_IMAGES]], grid, out_dir / "test_grid.png"
        )
        headline = evaluation.headline(summary, trained, read_metrics_json(images_metrics))
        summary.write(out_dir / EVALUATION)
        write_json(out_dir / HEADLINE_METRICS, headline)
        mlflow_run.log_metrics(summary.to_flat())
    print("evaluate: " + ", ".join(f"{k} {v}" for k, v in headline.items()))
    if summary.headroom is not None and not summary.headroom.ok:
        warn(f"no headroom: {summary.headroom.reason}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, what in (
        ("test", "real test YOLO folder"),
        ("detectors", "folder of <variant>/seed<seed> detectors, each with its variant.json"),
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
