"""Ultralytics YOLO behind a small offline interface: train into a folder, load, predict.

Ultralytics has process-wide side effects that a DVC pipeline must not have: it writes
`labels.cache` next to the label folders (DVC-tracked outputs), keeps settings in the user's
config dir, and may go online (fonts, telemetry, update checks, hub/MLflow/DVC integrations).
`_ultralytics()` imports it with a private, temporary config dir and everything online or
integrated switched off; `train_detector` trains from a temporary view of the data.
"""

from __future__ import annotations

import atexit
import csv
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import yaml

from synthdet.data import Box, atomic_path, read_yolo_folder, verify_image
from synthdet.errors import ModelNotAvailableError, SynthdetError

# Files copied from the ultralytics run folder into a detector's output folder.
KEPT_RUN_FILES = ("weights/best.pt", "args.yaml")

# Ultralytics integrations that would log or sync on their own; we log to our stage run instead.
DISABLED_SETTINGS = {
    "sync": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
}


@functools.cache
def _ultralytics() -> ModuleType:
    """Import ultralytics configured for this process only (offline, no integrations)."""
    if "ultralytics" in sys.modules:
        raise RuntimeError(
            "ultralytics was imported before synthdet.detection configured it; its settings would "
            "be written to the user's config dir. Import ultralytics only via synthdet.detection."
        )
    config_dir = Path(tempfile.mkdtemp(prefix="synthdet-ultralytics-"))
    atexit.register(shutil.rmtree, config_dir, ignore_errors=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ["YOLO_OFFLINE"] = "1"  # skips the DNS probe, pip update checks and telemetry
    # Dataset checks look for Arial in the config dir before trying to download it; matplotlib
    # (an ultralytics dependency) ships DejaVuSans, which serves the same purpose offline.
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    (config_dir / "Ultralytics").mkdir()
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        (config_dir / "Ultralytics" / name).symlink_to(font)

    import ultralytics
    from ultralytics.utils import SETTINGS

    SETTINGS.update(DISABLED_SETTINGS)
    return ultralytics


def _require_model_available(model: str) -> None:
    """Weights must be a local file: ultralytics would try to download a missing one."""
    if model.endswith(".pt") and not Path(model).is_file():
        raise ModelNotAvailableError(
            f"detector weights {model!r} are not a local file and cannot be downloaded offline; "
            "use an ultralytics model .yaml (e.g. yolov8n.yaml, trained from scratch) or a path "
            "to a local .pt file (train_detector.model)"
        )


def load_detector(weights: str | Path, class_names: Sequence[str]) -> Any:
    """Load trained YOLO weights and check they predict the classes in shared.class_names."""
    if not Path(weights).is_file():
        raise ModelNotAvailableError(
            f"detector weights {weights} not found; train them first (dvc repro train-detector)"
        )
    yolo = _ultralytics().YOLO
    try:
        detector = yolo(str(weights))
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        raise ModelNotAvailableError(f"cannot load detector {weights}: {exc}") from exc
    names = [detector.names[i] for i in sorted(detector.names)]
    if names != list(class_names):
        raise ModelNotAvailableError(
            f"detector {weights} predicts classes {names}, but shared.class_names is "
            f"{list(class_names)}; retrain it or fix shared.class_names"
        )
    return detector


# ---------------------------------------------------------------- training


def _link_yolo_folder(source: Path, view: Path) -> None:
    """Mirror `source/{images,labels}` with one symlink per file.

    Ultralytics resolves directory symlinks and would write `labels.cache` into the source, so the
    folders are real (temporary) directories and only the files are links.
    """
    for sub in ("images", "labels"):
        (view / sub).mkdir(parents=True)
        for file in sorted((source / sub).iterdir()):
            (view / sub / file.name).symlink_to(file.resolve())


def dataset_view(
    root: Path, train_folders: Sequence[Path], val_folder: Path, class_names: Sequence[str]
) -> tuple[Path, int]:
    """Build a dataset yaml in `root` that trains on `train_folders` (deduplicated) and validates
    on `val_folder`, so that nothing is written into those folders.

    Returns the yaml's path and the number of training images.
    """
    unique_train = list(dict.fromkeys(Path(folder).resolve() for folder in train_folders))
    # Validating first turns bad data into errors naming the file, not ultralytics warnings.
    train_images = sum(len(read_yolo_folder(folder, len(class_names))) for folder in unique_train)
    read_yolo_folder(val_folder, len(class_names))
    train_views = []
    for index, folder in enumerate(unique_train):
        _link_yolo_folder(folder, root / f"train{index}")
        train_views.append(f"train{index}/images")
    _link_yolo_folder(Path(val_folder), root / "val")
    dataset = {
        "path": str(root),
        "train": train_views,
        "val": "val/images",
        "names": dict(enumerate(class_names)),
    }
    dataset_yaml = root / "dataset.yaml"
    dataset_yaml.write_text(yaml.safe_dump(dataset, sort_keys=False))
    return dataset_yaml, train_images


def _metric_name(name: str) -> str:
    # "metrics/mAP50(B)" -> "metrics/mAP50": MLflow rejects parentheses in metric names.
    return name.replace("(B)", "")


@dataclass(frozen=True)
class TrainingResult:
    train_images: int
    epochs: list[dict[str, float]]  # one row per epoch: epoch, losses, val metrics, lr
    best: dict[str, float]  # validation metrics of best.pt, as ultralytics reports them


def train_detector(
    model: str,
    train_folders: Sequence[Path],
    val_folder: Path,
    class_names: Sequence[str],
    seed: int,
    yolo_args: dict[str, Any],
    out_dir: Path,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainingResult:
    """Train a YOLO detector; write `out_dir/{best.pt,args.yaml}` atomically.

    `on_epoch` receives each epoch's row (losses, validation metrics, learning rates) as soon as
    the epoch ends, e.g. to log it to MLflow.
    """
    _require_model_available(model)
    ultralytics = _ultralytics()
    rows: list[dict[str, float]] = []
    in_training_epoch = False

    # Ultralytics also fires on_fit_epoch_end for the final validation of best.pt; only the
    # calls that follow a training epoch are epochs.
    def mark_training_epoch(trainer: Any) -> None:
        nonlocal in_training_epoch
        in_training_epoch = True

    def record_epoch(trainer: Any) -> None:
        nonlocal in_training_epoch
        if not in_training_epoch:
            return
        in_training_epoch = False
        values = {**trainer.label_loss_items(trainer.tloss), **trainer.metrics, **trainer.lr}
        row = {"epoch": trainer.epoch + 1}
        row.update({_metric_name(k): round(float(v), 6) for k, v in values.items()})
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)

    try:
        detector = ultralytics.YOLO(model)
    except FileNotFoundError as exc:
        raise ModelNotAvailableError(
            f"train_detector.model {model!r} is neither an ultralytics model yaml nor a "
            f"local .pt file: {exc}"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="synthdet-train-") as tmp:
        data_yaml, train_images = dataset_view(
            Path(tmp) / "data", train_folders, val_folder, class_names
        )
        detector.add_callback("on_train_epoch_end", mark_training_epoch)
        detector.add_callback("on_fit_epoch_end", record_epoch)
        metrics = detector.train(
            data=str(data_yaml),
            project=str(Path(tmp) / "runs"),
            name="train",
            exist_ok=True,
            seed=seed,
            **yolo_args,
        )
        run_dir = Path(detector.trainer.save_dir)
        with atomic_path(Path(out_dir)) as staging:
            staging.mkdir()
            for name in KEPT_RUN_FILES:
                shutil.copy2(run_dir / name, staging / Path(name).name)
    best = {_metric_name(k): float(v) for k, v in metrics.results_dict.items()}
    return TrainingResult(train_images=train_images, epochs=rows, best=best)


def write_epochs_csv(rows: Sequence[dict[str, float]], path: Path) -> None:
    """Per-epoch results as CSV (a DVC plot with x=epoch), written atomically."""
    if not rows:
        raise SynthdetError(f"no training epochs were recorded, nothing to write to {path}")
    with atomic_path(Path(path)) as tmp, tmp.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------- prediction


@dataclass(frozen=True)
class Detections:
    """The boxes a detector found in one image, in pixels of the original image."""

    image: Path
    width: int
    height: int
    xyxy: np.ndarray  # (N, 4) float
    scores: np.ndarray  # (N,) float
    class_ids: np.ndarray  # (N,) int

    def yolo_boxes(self) -> list[tuple[Box, float]]:
        """Normalised YOLO boxes with their confidence; boxes under a pixel wide or high
        (clipping artefacts at the border, and invalid as labels) are dropped."""
        boxes = []
        for (x1, y1, x2, y2), score, class_id in zip(
            self.xyxy, self.scores, self.class_ids, strict=True
        ):
            x1, x2 = np.clip([x1, x2], 0, self.width)
            y1, y2 = np.clip([y1, y2], 0, self.height)
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            box = Box(
                int(class_id),
                float((x1 + x2) / 2 / self.width),
                float((y1 + y2) / 2 / self.height),
                float((x2 - x1) / self.width),
                float((y2 - y1) / self.height),
            )
            boxes.append((box, float(score)))
        return boxes


def predict(
    detector: Any,
    images: Iterable[Path],
    imgsz: int,
    confidence: float,
    iou: float,
) -> list[Detections]:
    """Run `detector` on `images` one by one (memory stays flat for any number of images)."""
    detections = []
    for image in images:
        verify_image(image)  # a clear error naming the file instead of an ultralytics one
        (result,) = detector.predict(
            source=str(image), imgsz=imgsz, conf=confidence, iou=iou, verbose=False
        )
        boxes = result.boxes
        height, width = result.orig_shape
        detections.append(
            Detections(
                image=Path(image),
                width=int(width),
                height=int(height),
                xyxy=boxes.xyxy.cpu().numpy().astype(np.float64),
                scores=boxes.conf.cpu().numpy().astype(np.float64),
                class_ids=boxes.cls.cpu().numpy().astype(np.int64),
            )
        )
    return detections
