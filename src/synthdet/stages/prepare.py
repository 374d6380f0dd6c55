"""prepare: validate the raw dataset and split it by photo into train/val/test.

Each subject of `shared.subjects` gets `personalize/<subject>/` (YOLO): its handful of images,
drawn from the train split only.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from synthdet import data, formats, tracking
from synthdet.cli import run_stage
from synthdet.params import Params


def split_statistics(split: dict[str, list[data.Sample]]) -> dict[str, float]:
    stats: dict[str, float] = {}
    for name, samples in split.items():
        boxes = sum(len(s.boxes) for s in samples)
        stats[f"{name}.images"] = len(samples)
        stats[f"{name}.boxes"] = boxes
        stats[f"{name}.boxes_per_image"] = round(boxes / len(samples), 3) if samples else 0.0
    return stats


def run(params: Params, raw_dir: Path, out_dir: Path, metrics_path: Path) -> dict[str, float]:
    p = params.prepare
    with tracking.stage_run("prepare", params.shared.mlflow_experiment, {"prepare": vars(p)}) as t:
        samples, repairs = formats.read_dataset(raw_dir, p.format, params.shared.class_names)
        split = data.split_by_group(
            samples, p.group_pattern, p.val_groups, p.test_groups, 0, params.shared.seed
        )
        del split["personalize"]
        subjects = {
            name: data.subject_images(
                split["train"], name, subject.stem_pattern, subject.images, params.shared.seed
            )
            for name, subject in params.shared.subjects.items()
        }
        train_images = {s.image for s in split["train"]}
        held_out = {s.image for name in ("val", "test") for s in split[name]}
        for name, chosen in subjects.items():
            # The leakage guard at the source: personalisation sees train images only.
            if not {s.image for s in chosen} <= train_images - held_out:
                raise data.DataError(f"subject {name}: a val/test image reached personalisation")
        # Each split is its own DVC output, written whole or not at all.
        for name in ("train", "val", "test"):
            with data.atomic_path(out_dir / name) as tmp:
                formats.write_yolo_folder(split[name], tmp, repairs)
        with data.atomic_path(out_dir / "personalize") as tmp:
            for name, chosen in subjects.items():
                # personalize images are train images too: count their repairs once.
                formats.write_yolo_folder(chosen, tmp / name, Counter())
        data.write_text(out_dir / "dataset.yaml", data.dataset_yaml(params.shared.class_names))
        split["personalize"] = [s for chosen in subjects.values() for s in chosen]
        split.update({f"personalize.{name}": chosen for name, chosen in subjects.items()})
        stats = split_statistics(split) | {
            f"repairs.{key}": repairs.get(key, 0)
            for key in (
                "background_images",
                "clipped_boxes",
                "reencoded_images",
                "voc_size_from_image",
            )
        }
        data.write_json(metrics_path, stats)
        t.log_metrics(stats)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="dataset folder (prepare.raw_dir)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    run_stage(lambda params: run(params, args.raw, args.out, args.metrics))


if __name__ == "__main__":
    main()
