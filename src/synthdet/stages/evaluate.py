"""evaluate: every detector on the real test split, compared with statistics.

Each variant x handful draw x seed in params (`synthdet.detectors.variants`; `real` once per seed:
no draw changes it) is read from the detectors folder by its variant.json and scored with COCO mAP
(torchmetrics) on the real test split; `synthdet.analysis.evaluation` summarises them: mean and std
over seeds, paired differences with 95 % t intervals and Holm-adjusted p-values, the minimum
detectable difference, the margin over the chance baseline (one whole-image box per image), the
real-image equivalent (the nested real curve inverted, where it rises beyond its noise), whether
each comparison is evidence (`evaluate.target_difference`), the headroom check (a warning when
`real` barely beats `handful` or chance) and sanity flags.

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
from synthdet.artifacts.metrics import IMAGES_METRICS, read_metrics_json
from synthdet.core.cli import run_stage
from synthdet.core.data import (
    DataError,
    atomic_path,
    draw_folder,
    draw_seed,
    list_images,
    read_yolo_folder,
    write_json,
)
from synthdet.core.errors import warn
from synthdet.core.tracking import stage_run
from synthdet.detectors import detection, variants
from synthdet.params import Params

GRID_TEST_IMAGES = 4


def _unit_name(variant: variants.Variant, draw: int | None, seed: int) -> str:
    return f"{variant.name}{'' if draw is None else f' draw {draw}'} seed {seed}"


def find_detectors(
    detectors_dir: Path, params: Params
) -> dict[variants.Variant, dict[evaluation.Unit, Path]]:
    """{variant: {(draw, seed): folder}} for every variant, handful draw (few_shot.draws; None
    for `real`, which no draw changes) and seed params ask for, the baseline first, found by the
    `variant.json` each train stage writes next to its weights (folder names are not read: DVC
    spells a share 1.0 as `1`). Folders of other variants and draws are ignored, and so are
    folders whose variant.json is missing or unreadable (e.g. left by a stage of an older layout)
    unless a detector is missing: then the DataError naming the missing detectors names them
    too. Raises DataError for two folders holding the same detector."""
    by_key: dict[tuple[variants.Variant, int | None, int], Path] = {}
    unrecorded = []
    for folder in sorted(Path(detectors_dir).glob("**/seed*")):
        if not folder.is_dir():
            continue
        try:
            info = DetectorVariant.read(folder)
        except DataError:
            unrecorded.append(str(folder.relative_to(detectors_dir)))
            continue
        key = (info.variant, info.draw, info.seed)
        if key in by_key:
            raise DataError(
                f"{by_key[key]} and {folder} both hold {_unit_name(*key)}; remove the stale one "
                "(a variant whose stage no longer exists)"
            )
        by_key[key] = folder
    found: dict[variants.Variant, dict[evaluation.Unit, Path]] = {}
    missing = []
    for variant in variants.configured(params):
        draws = params.few_shot.draws if variant.drawn else (None,)
        for draw in draws:
            for seed in params.train_detector.seeds:
                if (variant, draw, seed) in by_key:
                    found.setdefault(variant, {})[draw, seed] = by_key[variant, draw, seed]
                else:
                    missing.append(_unit_name(variant, draw, seed))
    if missing:
        hint = (
            f" ({', '.join(unrecorded)} hold no readable {VARIANT_INFO}: trained by an older "
            "synthdet)"
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
    `real` (train), `handful` (the handfuls' folder: draw<d>/) and `extra` (draw<d>/: one YOLO
    folder per extra source) for the variants' compositions, of the first draw of
    few_shot.draws, which also gives the test grid, the synthetic grid and the image metrics
    (`images_metrics`: check-images' folders, draw<d>/images.json). Writes into `out_dir`;
    returns every number (the typed evaluation.json). Raises DataError for a missing detector or
    an unreadable test split."""
    config, class_names = params.evaluate, params.shared.class_names
    first = params.few_shot.draws[0]
    detectors = find_detectors(folders["detectors"], params)
    test = read_yolo_folder(folders["test"], len(class_names))
    logged = {"evaluate": vars(config), "detectors": sum(len(d) for d in detectors.values())}
    with stage_run("evaluate", params.shared.mlflow_experiment, logged) as mlflow_run:
        targets = [metrics.target_boxes(sample) for sample in test]
        grid = {"ground truth": [sample.boxes for sample in test[:GRID_TEST_IMAGES]]}
        runs: dict[str, dict[evaluation.Unit, evaluation.Run]] = {}
        for variant, units in detectors.items():
            name = variant.name
            for (draw, seed), folder in units.items():
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
                runs.setdefault(name, {})[draw, seed] = evaluation.Run(scores, top)
                if seed == params.shared.seed and draw in (None, first):
                    grid[name] = [
                        tuple(b for b, s in image.yolo_boxes() if s >= config.grid_confidence)
                        for image in found[:GRID_TEST_IMAGES]
                    ]
        extra_root = draw_folder(folders["extra"], first)
        trained = list(detectors)
        compositions = variants.compositions(
            trained,
            list_images(Path(folders["real"]) / "images"),
            variants.handful_images(draw_folder(folders["handful"], first)),
            {p.name: list_images(p / "images") for p in extra_root.iterdir() if p.is_dir()},
            draw_seed(params.shared.seed, first),
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
        images = read_metrics_json(draw_folder(images_metrics, first) / IMAGES_METRICS)
        headline = evaluation.headline(summary, trained, images)
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
        ("detectors", "folder of detector folders, each with its variant.json"),
        ("real", "real train YOLO folder"),
        ("handful", "the handfuls' folder: draw<d>/<subject>/"),
        ("extra", "folder of draw<d>/ extra-image YOLO folders (synthetic, copy-paste, pseudo)"),
    ):
        parser.add_argument(f"--{name}", type=Path, required=True, help=what)
    parser.add_argument(
        "--images-metrics", type=Path, required=True, help="the draws' metrics folder (draw<d>/)"
    )
    parser.add_argument("--out", type=Path, required=True, help="metrics folder to write into")
    args = parser.parse_args()
    folders = {k: getattr(args, k) for k in ("test", "detectors", "real", "handful", "extra")}
    run_stage(lambda params: run(params, folders, args.images_metrics, args.out))


if __name__ == "__main__":
    main()
