"""Stage evaluate: every detector on the real test split; the generated images' quality.

Detection (COCO mAP with torchmetrics, on the real test split): every variant x seed in params
(`synthdet.variants`) is read from the detectors folder and scored. Flat metrics per variant:
`<variant>.map50_95` (mean over seeds), `.map50_95_std` (sample std over seeds, null for one
seed), the same for `map50`, `map75` and the COCO size ranges `map_small`, `map_medium`,
`map_large`; `.gap_map50_95` = mean over seeds of (variant - `real` with the same seed) and its
std, likewise for `map50` / `map75`; the variant's training images (`real_images`,
`synthetic_images`, `synthetic_share`).

Files: `detection_runs.csv` (one row per detector), `detection_table.csv` (one row per variant:
mean, std, mean - std, mean + std; the mAP bars), `ratio_curve.csv` (mAP against the synthetic
share and count), `pr_curve.csv` (variant, recall, precision at IoU .5, mean over seeds),
`test_grid.png` (test images: ground truth, then each variant's boxes at
`evaluate.grid_confidence`), `synthetic_grid.png` (generated images with their labels) and
`report.md` (`synthdet.report`).

Generated images: FID and KID from one Inception pass per image (`metrics.image_realism`); the
leakage guard; CLIP score of each image with its prompt when `evaluate.clip_model` is set
(otherwise `clip_score: null` and `clip_score_reason`); the real-vs-generated classifier test and
the subject check (`synthdet.classifiers`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from synthdet import classifiers, detection, metrics, plots, report, tracking, variants
from synthdet.artifacts.manifest import MANIFEST
from synthdet.cli import run_stage
from synthdet.data import (
    DataError,
    atomic_path,
    list_images,
    read_jsonl,
    read_yolo_folder,
    write_json,
    write_text,
)
from synthdet.params import Params, ParamsError

BASELINE = variants.BASELINE  # the variant the others are compared with
MAP_KEYS = ("map50_95", "map50", "map75")
SIZE_KEYS = ("map_small", "map_medium", "map_large")
GRID_TEST_IMAGES = 4


def find_detectors(detectors_dir: Path, params: Params) -> dict[str, dict[int, Path]]:
    """{variant: {seed: folder}} for every variant and seed params ask for, the baseline first.

    Folder names are matched by meaning (`variants.parse`), so `mix-r1-f0.1` (as DVC writes an
    integer share) is the variant `mix-r1.0-f0.1`; folders of variants or seeds not in params
    (left over from an earlier experiment) are ignored.
    """
    present: dict[tuple[float, float | None], Path] = {}
    for folder in sorted(Path(detectors_dir).glob("*")) if Path(detectors_dir).is_dir() else []:
        try:
            variant = variants.parse(folder.name)
        except ParamsError:  # not a variant folder
            continue
        present[(variant.real_share, variant.synthetic_fraction)] = folder
    found: dict[str, dict[int, Path]] = {}
    missing = []
    for variant in variants.configured(params):
        folder = present.get((variant.real_share, variant.synthetic_fraction))
        for seed in params.train_detector.seeds:
            path = None if folder is None else folder / variants.seed_folder(seed)
            if path is None or not path.is_dir():
                missing.append(f"{variant.name}/{variants.seed_folder(seed)}")
            else:
                found.setdefault(variant.name, {})[seed] = path
    if missing:
        raise DataError(
            f"{detectors_dir}: no detector for {', '.join(missing)}; train them first "
            "(dvc repro; the train-* stages)"
        )
    return found


def check_test_leakage(
    generated: list[Path], test: list[Path], threshold: float, inception: torch.nn.Module
) -> float:
    """Fail when a generated image is a near-copy of a test image; return the top similarity.

    A test image can only come out of the generator if it leaked into personalisation; a
    detector evaluated on it would be scored on its own training data.
    """
    with Image.open(generated[0]) as first:
        size = max(first.size)
    matches = metrics.nearest_matches(generated, test, size, inception)
    leaks = sorted((m for m in matches if m.similarity > threshold), key=lambda m: -m.similarity)
    if leaks:
        pairs = "; ".join(f"{m.image} ~ {m.match} ({m.similarity:.3f})" for m in leaks[:5])
        raise DataError(
            f"{len(leaks)} generated images are near-copies of test images (similarity above "
            f"evaluate.leak_threshold={threshold}): {pairs}. Check that no val/test photo "
            "reached the personalize split."
        )
    return max(m.similarity for m in matches)


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def summarise(
    runs: Mapping[str, Mapping[int, metrics.DetectionMetrics]],
) -> dict[str, float | int | None]:
    """Flat per-variant mean, std and gap to the baseline (paired by seed)."""
    summary: dict[str, float | int | None] = {}
    for variant, by_seed in runs.items():
        summary[f"{variant}.seeds"] = len(by_seed)
        for key in MAP_KEYS + SIZE_KEYS:
            values = [getattr(m, key) for m in by_seed.values() if getattr(m, key) is not None]
            if not values:
                summary[f"{variant}.{key}"] = summary[f"{variant}.{key}_std"] = None
                continue
            spread = metrics.spread(values)
            summary[f"{variant}.{key}"] = _round(spread.mean)
            summary[f"{variant}.{key}_std"] = _round(spread.std)
        if variant == BASELINE:
            continue
        for key in MAP_KEYS:
            gaps = [
                getattr(result, key) - getattr(runs[BASELINE][seed], key)
                for seed, result in by_seed.items()
            ]
            spread = metrics.spread(gaps)
            summary[f"{variant}.gap_{key}"] = _round(spread.mean)
            summary[f"{variant}.gap_{key}_std"] = _round(spread.std)
    return summary


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with atomic_path(Path(path)) as tmp, tmp.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(["" if cell is None else cell for cell in row] for row in rows)


def _bounds(mean: float | None, std: float | None) -> tuple[float | None, float | None]:
    if mean is None:
        return None, None
    return round(mean - (std or 0.0), 6), round(mean + (std or 0.0), 6)


def write_tables(
    summary: Mapping[str, Any],
    runs: Mapping[str, Mapping[int, metrics.DetectionMetrics]],
    compositions: Mapping[str, variants.Composition],
    out: Path,
) -> None:
    """detection_runs.csv, detection_table.csv, ratio_curve.csv and pr_curve.csv in `out`."""
    _write_csv(
        out / "detection_runs.csv",
        ["variant", "seed", *MAP_KEYS, *SIZE_KEYS],
        [
            [variant, seed, *(_round(getattr(m, key)) for key in MAP_KEYS + SIZE_KEYS)]
            for variant, by_seed in runs.items()
            for seed, m in by_seed.items()
        ],
    )
    table = []
    for variant in runs:
        mean, std = summary[f"{variant}.map50_95"], summary[f"{variant}.map50_95_std"]
        lower, upper = _bounds(mean, std)
        composition = compositions[variant]
        table.append(
            {
                "variant": variant,
                "seeds": summary[f"{variant}.seeds"],
                "map50_95": mean,
                "std": std,
                "lower": lower,
                "upper": upper,
                "map50": summary[f"{variant}.map50"],
                "map50_std": summary[f"{variant}.map50_std"],
                "map75": summary[f"{variant}.map75"],
                "map75_std": summary[f"{variant}.map75_std"],
                "gap_map50_95": summary.get(
                    f"{variant}.gap_map50_95", 0.0 if variant == BASELINE else None
                ),
                "gap_std": summary.get(f"{variant}.gap_map50_95_std"),
                "real_images": len(composition.real),
                "synthetic_images": len(composition.synthetic),
                "synthetic_share": round(composition.synthetic_share, 6),
            }
        )
    _write_csv(out / "detection_table.csv", list(table[0]), [list(r.values()) for r in table])
    ratio_keys = ["variant", "real_images", "synthetic_images", "synthetic_share"]
    ratio_keys += ["map50_95", "std", "lower", "upper"]
    ratio = sorted(table, key=lambda row: (row["real_images"], row["synthetic_share"]))
    _write_csv(out / "ratio_curve.csv", ratio_keys, [[r[k] for k in ratio_keys] for r in ratio])
    rows = []
    for variant, by_seed in runs.items():
        curves = list(by_seed.values())
        for index, recall in enumerate(curves[0].recall):
            precision = sum(c.precision[index] for c in curves) / len(curves)
            rows.append([variant, recall, round(precision, 6)])
    _write_csv(out / "pr_curve.csv", ["variant", "recall", "precision"], rows)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the metrics JSON ({exc})") from exc


def clip_metrics(
    generated_dir: Path, images: Sequence[Path], model: str | None
) -> dict[str, float | str | None]:
    if model is None:
        return {
            "clip_score": None,
            "clip_score_reason": "evaluate.clip_model is null: no CLIP model configured (the "
            "offline default has none); set it to a hub id or a local CLIP folder",
        }
    manifest = Path(generated_dir) / MANIFEST
    if not manifest.is_file():
        return {"clip_score": None, "clip_score_reason": f"{manifest} is missing (no prompts)"}
    prompts = {row.get("file"): row.get("prompt") for row in read_jsonl(manifest)}
    missing = [image.name for image in images if not prompts.get(image.name)]
    if missing:
        raise DataError(f"{manifest}: no prompt for {', '.join(missing[:5])}")
    score = metrics.clip_score(images, [prompts[image.name] for image in images], model)
    return {"clip_score": round(score, 4), "clip_score_reason": None}


def classifier_metrics(
    params: Params,
    real_images: Sequence[Path],
    generated_images: Sequence[Path],
    train_dir: Path,
    val_dir: Path,
) -> dict[str, float | int | None]:
    config, seed = params.evaluate, params.shared.seed
    num_classes = len(params.shared.class_names)
    two_sample = classifiers.two_sample_test(
        real_images,
        generated_images,
        config.classifier_model,
        config.classifier_size,
        config.classifier_epochs,
        config.classifier_folds,
        seed,
    )
    subject = classifiers.subject_check(
        read_yolo_folder(train_dir, num_classes),
        read_yolo_folder(val_dir, num_classes),
        generated_images,
        config.classifier_model,
        config.classifier_size,
        config.classifier_epochs,
        seed,
    )
    return {
        "real_vs_generated.accuracy": round(two_sample.accuracy, 6),
        "real_vs_generated.correct": two_sample.correct,
        "real_vs_generated.tested": two_sample.tested,
        "real_vs_generated.p_value": float(f"{two_sample.p_value:.3g}"),
        "real_vs_generated.train_accuracy": round(two_sample.train_accuracy, 6),
        "real_vs_generated.folds": two_sample.folds,
        "subject.generated_share": round(subject.generated_share, 6),
        "subject.generated_images": subject.generated_images,
        "subject.reference_share": round(subject.reference_share, 6),
        "subject.reference_images": subject.reference_images,
        "subject.crop_accuracy": _round(subject.crop_accuracy),
        "subject.crop_tested": subject.crop_tested,
        "subject.background_false_positive_rate": _round(subject.background_false_positive_rate),
        "subject.window": round(subject.window, 6),
    }


def run(
    params: Params,
    test_dir: Path,
    detectors_dir: Path,
    generated_dir: Path,
    annotated_dir: Path,
    train_dir: Path,
    val_dir: Path,
    real_images_dir: Path,
    prepare_metrics: Path,
    annotate_metrics: Path,
    metrics_path: Path,
    out_dir: Path,
) -> dict:
    config = params.evaluate
    class_names = params.shared.class_names
    out_dir = Path(out_dir)
    detectors = find_detectors(detectors_dir, params)
    test_samples = read_yolo_folder(test_dir, len(class_names))
    logged_params = {
        "evaluate": dataclasses.asdict(config),
        "detectors": {v: {s: str(p) for s, p in by.items()} for v, by in detectors.items()},
        "test": str(test_dir),
        "real_images": str(real_images_dir),
    }
    with tracking.stage_run("evaluate", params.shared.mlflow_experiment, logged_params) as run_log:
        generated_images = list_images(Path(generated_dir) / "images")
        inception = metrics.FidInceptionFeatures()
        leak_similarity = check_test_leakage(
            generated_images, [s.image for s in test_samples], config.leak_threshold, inception
        )
        targets = [metrics.target_boxes(sample) for sample in test_samples]
        grid_samples = test_samples[:GRID_TEST_IMAGES]
        grid_columns = {"ground truth": [sample.boxes for sample in grid_samples]}
        seeds = params.train_detector.seeds
        grid_seed = params.shared.seed if params.shared.seed in seeds else seeds[0]
        runs: dict[str, dict[int, metrics.DetectionMetrics]] = {}
        for variant, by_seed in detectors.items():
            for seed, folder in by_seed.items():
                detector = detection.load_detector(folder, class_names)
                found = detection.predict(
                    detector,
                    [sample.image for sample in test_samples],
                    imgsz=config.imgsz,
                    confidence=config.confidence,
                    iou=config.iou,
                )
                predictions = [metrics.predicted_boxes(image) for image in found]
                runs.setdefault(variant, {})[seed] = metrics.detection_metrics(predictions, targets)
                if seed == grid_seed:
                    grid_columns[variant] = [
                        tuple(b for b, s in image.yolo_boxes() if s >= config.grid_confidence)
                        for image in found[:GRID_TEST_IMAGES]
                    ]

        real_train = list_images(Path(train_dir) / "images")
        annotated_images = list_images(Path(annotated_dir) / "images")
        compositions = {
            variant: variants.compose(
                variants.parse(variant),
                real_train,
                annotated_images if variants.parse(variant).uses_synthetic else [],
                params.shared.seed,
            )
            for variant in runs
        }
        summary: dict[str, Any] = summarise(runs)
        for variant, composition in compositions.items():
            summary[f"{variant}.real_images"] = len(composition.real)
            summary[f"{variant}.synthetic_images"] = len(composition.synthetic)
            summary[f"{variant}.synthetic_share"] = round(composition.synthetic_share, 6)
        summary["leak_max_similarity"] = round(leak_similarity, 6)
        real_images = list_images(real_images_dir)
        realism = metrics.image_realism(
            real_images, generated_images, inception, seed=params.shared.seed
        )
        summary["fid"] = round(realism.fid, 4)
        summary["kid_mean"] = round(realism.kid_mean, 6)
        summary["kid_std"] = round(realism.kid_std, 6)
        summary["kid_subset_size"] = realism.kid_subset_size
        summary["fid_real_images"] = len(real_images)
        summary["fid_generated_images"] = len(generated_images)
        summary.update(clip_metrics(generated_dir, generated_images, config.clip_model))
        summary.update(
            classifier_metrics(params, real_images, generated_images, train_dir, val_dir)
        )
        summary["test_images"] = len(test_samples)
        summary["test_boxes"] = sum(len(sample.boxes) for sample in test_samples)

        write_tables(summary, runs, compositions, out_dir)
        annotated = read_yolo_folder(annotated_dir, len(class_names))
        plots.box_grid(annotated[: config.grid_images], out_dir / "synthetic_grid.png")
        plots.comparison_grid(
            [sample.image for sample in grid_samples], grid_columns, out_dir / "test_grid.png"
        )
        write_json(metrics_path, summary)
        # The environment the numbers came from; reproduce compares it too.
        write_json(out_dir / "environment.json", tracking.environment())
        report_path = out_dir / "report.md"
        page = report.render(
            params,
            summary,
            _read_json(prepare_metrics),
            _read_json(annotate_metrics),
            list(runs),
            report_path,
        )
        write_text(report_path, page)
        run_log.log_metrics(summary)
        for name in (
            "detection_table.csv",
            "detection_runs.csv",
            "ratio_curve.csv",
            "pr_curve.csv",
            "synthetic_grid.png",
            "test_grid.png",
            "report.md",
        ):
            run_log.log_artifact(out_dir / name)
        run_log.log_artifact(metrics_path)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", type=Path, required=True, help="real test YOLO folder")
    parser.add_argument(
        "--detectors",
        type=Path,
        required=True,
        help="folder with one <variant>/seed<seed> detector folder per variant and seed",
    )
    parser.add_argument(
        "--generated", type=Path, required=True, help="generate's folder: images/, manifest.jsonl"
    )
    parser.add_argument(
        "--annotated",
        type=Path,
        required=True,
        help="YOLO folder of the auto-labelled generated images",
    )
    parser.add_argument(
        "--real", type=Path, required=True, help="real train YOLO folder (subject crops)"
    )
    parser.add_argument(
        "--val", type=Path, required=True, help="real val YOLO folder (subject reference)"
    )
    parser.add_argument(
        "--real-images",
        type=Path,
        required=True,
        help="real images the generated ones are compared with (FID, KID, classifier)",
    )
    parser.add_argument(
        "--prepare-metrics", type=Path, required=True, help="metrics JSON of prepare"
    )
    parser.add_argument(
        "--annotate-metrics", type=Path, required=True, help="metrics JSON of annotate"
    )
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for the tables, grids and report.md"
    )
    args = parser.parse_args()
    run_stage(
        lambda params: run(
            params,
            args.test,
            args.detectors,
            args.generated,
            args.annotated,
            args.real,
            args.val,
            args.real_images,
            args.prepare_metrics,
            args.annotate_metrics,
            args.metrics,
            args.out,
        )
    )


if __name__ == "__main__":
    main()
