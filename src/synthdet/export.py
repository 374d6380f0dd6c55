"""Export a split (data/prepared/<split>) or a draw's auto-labelled synthetic set
(data/extra/draw<d>/synthetic).

    python -m synthdet.export data/extra/draw0/synthetic --format coco --out exports/synthetic
    python -m synthdet.export data/prepared/test --format yolo --out exports/test

`coco` writes images/ and annotations.json (for CVAT, Label Studio, pycocotools); `yolo` writes
images/, labels/ and dataset.yaml.

`detector` converts an ultralytics checkpoint you trust (a pickle: loading it may run code) into
a pickle-free detector folder that `train_detector.model` accepts:

    python -m synthdet.export yolov8n.pt --format detector --out models/pretrained/yolov8n
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections import Counter
from pathlib import Path

from synthdet import formats
from synthdet.core import data
from synthdet.core.errors import SynthdetError
from synthdet.detectors import detection
from synthdet.params import load_params


def export(source: Path, fmt: str, out: Path, class_names: tuple[str, ...]) -> int:
    """Write `source` (a YOLO folder) to `out` in `fmt`; returns the number of images."""
    samples = data.read_yolo_folder(source, len(class_names))
    with data.atomic_path(out) as tmp:
        formats.write_yolo_folder(samples, tmp, Counter())
        if fmt == "coco":
            exported = data.read_yolo_folder(tmp, len(class_names))
            coco = formats.coco_dict(exported, class_names, tmp / "images")
            data.write_json(tmp / "annotations.json", coco)
            shutil.rmtree(tmp / "labels")
        else:
            data.write_dataset_yaml(tmp, class_names, train="images", val="images")
    return len(samples)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("source", type=Path, help="a YOLO folder, or a .pt for --format detector")
    parser.add_argument("--format", choices=("yolo", "coco", "detector"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", default="params.yaml", help="for shared.class_names")
    args = parser.parse_args()
    try:
        if args.format == "detector":
            names = detection.convert_checkpoint(args.source, args.out)
            print(f"wrote {args.out}/{detection.WEIGHTS_NAME} (classes: {', '.join(names)})")
            return
        class_names = load_params(args.params).shared.class_names
        count = export(args.source, args.format, args.out, class_names)
    except SynthdetError as exc:
        sys.exit(f"error: {exc}")
    print(f"exported {count} images to {args.out} ({args.format})")


if __name__ == "__main__":
    main()
