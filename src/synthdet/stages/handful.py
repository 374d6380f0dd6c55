"""handful@<draw>: one handful draw (few_shot.draws) of the subjects' images from the train split.

Each subject of `shared.subjects` gets `<out>/<subject>/` (YOLO): `images` of its train images
whose stem matches its `stem_pattern`, drawn with seed `core.data.draw_seed(shared.seed, draw)`,
so draw 0 is the pipeline's first handful and another draw is another handful. Only train
images can be drawn (the leakage guard at the source: personalisation, copy-paste and the
few-shot detectors see train images only). Writes the folder whole or not at all, and
`--metrics` (images and boxes per subject and in all).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from synthdet.core import data
from synthdet.core.cli import run_stage
from synthdet.core.tracking import stage_run
from synthdet.params import Params


def run(
    params: Params, draw: int, train_dir: Path, out_dir: Path, metrics_path: Path
) -> dict[str, int]:
    """Draw handful `draw` from the train YOLO folder `train_dir` into `out_dir/<subject>/`;
    write and return its metrics (`images`, `boxes`, `<subject>.images`, `<subject>.boxes`).
    Raises DataError for an unreadable train folder or a subject with too few train images."""
    shared = params.shared
    train = data.read_yolo_folder(train_dir, len(shared.class_names))
    seed = data.draw_seed(shared.seed, draw)
    chosen = {
        name: data.subject_images(train, name, subject.stem_pattern, subject.images, seed)
        for name, subject in shared.subjects.items()
    }
    logged = {"draw": draw, "seed": seed, "subjects": list(chosen)}
    with stage_run(f"handful@{draw}", shared.mlflow_experiment, logged) as mlflow_run:
        with data.atomic_path(out_dir) as tmp:
            for name, samples in chosen.items():
                # prepare normalised the train images: image and label files copied byte for byte
                for folder in ("images", "labels"):
                    (tmp / name / folder).mkdir(parents=True)
                for sample in samples:
                    label = data.label_file(train_dir, sample.image)
                    (tmp / name / "images" / sample.image.name).write_bytes(
                        sample.image.read_bytes()
                    )
                    (tmp / name / "labels" / label.name).write_bytes(label.read_bytes())
        metrics = {
            "images": sum(len(samples) for samples in chosen.values()),
            "boxes": sum(len(s.boxes) for samples in chosen.values() for s in samples),
        }
        for name, samples in chosen.items():
            metrics[f"{name}.images"] = len(samples)
            metrics[f"{name}.boxes"] = sum(len(s.boxes) for s in samples)
        data.write_json(metrics_path, metrics)
        mlflow_run.log_metrics(metrics)
    print(f"handful@{draw} (seed {seed}): {metrics['images']} images, {metrics['boxes']} boxes")
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draw", type=int, required=True, help="the draw (few_shot.draws)")
    parser.add_argument("--train", type=Path, required=True, help="prepared train YOLO folder")
    parser.add_argument("--out", type=Path, required=True, help="folder of one YOLO per subject")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    args = parser.parse_args()
    run_stage(lambda params: run(params, args.draw, args.train, args.out, args.metrics))


if __name__ == "__main__":
    main()
