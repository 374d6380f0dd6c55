"""copy-paste: the handful's objects pasted onto the handful's images (synthdet.extra.copy_paste).

Writes `few_shot.extra_images` composites as a YOLO folder (`images/*.png`, `labels/*.txt`,
boxes by construction) and `metrics/draws/draw<d>/copy_paste.json` (images, boxes, pasted,
dropped). Reads only the handful: one draw's subject folders (synthdet.stages.handful).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from synthdet import formats
from synthdet.core import data
from synthdet.core.cli import run_stage
from synthdet.core.tracking import stage_run
from synthdet.extra import copy_paste
from synthdet.params import Params


def run(params: Params, handful_dir: Path, out_dir: Path, metrics_path: Path) -> dict:
    """Compose the copy-paste set of the handful in `handful_dir/<subject>/` (YOLO) into
    `out_dir` (YOLO); return its metrics. Raises DataError when the handful has no usable box."""
    config = params.few_shot.copy_paste
    count = params.few_shot.extra_images
    samples = [
        sample
        for name in params.shared.subjects
        for sample in data.read_yolo_folder(handful_dir / name, len(params.shared.class_names))
    ]
    logged = {"copy_paste": vars(config), "images": count, "handful": len(samples)}
    with stage_run("copy-paste", params.shared.mlflow_experiment, logged) as mlflow_run:
        made = copy_paste.composites(
            samples,
            count,
            params.shared.seed,
            config.objects_per_image,
            config.scale,
            config.max_occlusion,
        )
        with formats.new_yolo_folder(out_dir) as folder:
            for index, (stem, result) in enumerate(tqdm(made, desc="copy-paste", unit="image")):
                folder.add(
                    f"cp{index:04d}_{stem}.png", Image.fromarray(result.pixels), result.boxes
                )
        metrics = {
            "images": len(made),
            "handful_images": len(samples),
            "boxes": sum(len(result.boxes) for _, result in made),
            "pasted": sum(result.pasted for _, result in made),
            "dropped_hidden": sum(result.dropped for _, result in made),
        }
        data.write_json(metrics_path, metrics)
        mlflow_run.log_metrics(metrics)
    print(
        f"copy-paste: {metrics['images']} composites of {len(samples)} handful images, "
        f"{metrics['boxes']} boxes ({metrics['dropped_hidden']} hidden ones dropped)"
    )
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handful", type=Path, required=True, help="the draw's handful folder")
    parser.add_argument("--out", type=Path, required=True, help="output YOLO folder")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    args = parser.parse_args()
    run_stage(lambda params: run(params, args.handful, args.out, args.metrics))


if __name__ == "__main__":
    main()
