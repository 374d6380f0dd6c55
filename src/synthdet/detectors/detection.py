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
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from synthdet.core.data import (
    Box,
    atomic_path,
    link_yolo_folder,
    read_yolo_folder,
    verify_image,
    write_dataset_yaml,
)
from synthdet.core.errors import ModelNotAvailableError, SynthdetError
from synthdet.core.threads import cpu_threads

# A trained detector is a folder: the weights as safetensors (no pickle, so loading one cannot run
# code) and the model's architecture as an ultralytics model yaml named after the model, so that
# ultralytics infers the same scale (n/s/m/l/x) from the file name when it rebuilds it.
WEIGHTS_NAME = "weights.safetensors"
TRAIN_ARGS_NAME = "args.yaml"  # the ultralytics train arguments, for the record

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
            "ultralytics was imported before synthdet.detectors.detection configured it; its "
            "settings would be written to the user's config dir. Import ultralytics only via "
            "synthdet.detectors.detection."
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
    from PIL import Image
    from ultralytics.utils import SETTINGS, patches

    SETTINGS.update(DISABLED_SETTINGS)
    # ultralytics replaces PIL's Image.open with one that pip-installs pi-heif when an image is
    # unreadable (offline: "No module named 'pi_heif'" instead of our message). prepare already
    # re-encoded every image as JPEG or PNG, so the process keeps Pillow's own.
    Image.open = patches._image_open
    return ultralytics


def _yolo(source: str, **kwargs: Any) -> Any:
    """`ultralytics.YOLO(source)` that trains, validates and predicts with `cpu_threads()` threads.

    Ultralytics' `select_device` caps torch at cpu_count - 1 threads on a CPU, keeping a core for
    dataloader workers: on 2 cores, one thread (a detector trained 20 % slower, measured). synthdet
    loads data in the main process (`yolo.workers: 0`), so the cap is set back once the trainer,
    validator or predictor has chosen its device.
    """
    detector = _ultralytics().YOLO(source, **kwargs)
    for event in ("on_pretrain_routine_start", "on_val_start", "on_predict_start"):
        detector.add_callback(event, lambda _: torch.set_num_threads(cpu_threads()))
    return detector


def _check_model_source(model: str) -> None:
    """Refuse pickled checkpoints from user paths; weights must be a local synthdet detector.

    Ultralytics `.pt` files are pickles that it loads with `weights_only=False`, so one from an
    arbitrary path can run code. The only `.pt` files accepted are ultralytics' release assets by
    bare name (e.g. `yolov8n.pt`), which ultralytics resolves and downloads from its own releases.
    """
    _ultralytics()  # configure it before anything from ultralytics is imported
    path = Path(model)
    if model.endswith(".pt"):
        from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES

        if path.name != model or model not in GITHUB_ASSETS_NAMES:
            raise ModelNotAvailableError(
                f"train_detector.model {model!r}: pickled .pt checkpoints are only loaded by the "
                "name of an ultralytics release asset (e.g. yolov8n.pt), never from a path, as "
                "unpickling can run arbitrary code. Use a model .yaml (from scratch), a synthdet "
                f"detector folder ({WEIGHTS_NAME} + model yaml, e.g. models/detectors/real), or "
                "convert a checkpoint you trust with `python -m synthdet.export FILE.pt --format "
                "detector --out FOLDER`"
            )
    elif not model.endswith(".yaml") and not (path / WEIGHTS_NAME).is_file():
        raise ModelNotAvailableError(
            f"train_detector.model {model!r} is neither an ultralytics model .yaml, a release "
            f"asset name (e.g. yolov8n.pt) nor a detector folder with {WEIGHTS_NAME}"
        )


def _architecture_file(folder: Path) -> Path:
    found = sorted(p for p in Path(folder).glob("*.yaml") if p.name != TRAIN_ARGS_NAME)
    if len(found) != 1:
        raise ModelNotAvailableError(
            f"detector folder {folder} must hold exactly one model .yaml next to {WEIGHTS_NAME}, "
            f"found {[p.name for p in found]}; train it with the train-detector stage"
        )
    return found[0]


def save_detector(model: Any, folder: Path) -> None:
    """Write a trained `ultralytics.nn.tasks.DetectionModel` as `WEIGHTS_NAME` + model yaml."""
    architecture = {k: v for k, v in model.yaml.items() if k != "yaml_file"}
    architecture["names"] = [model.names[i] for i in sorted(model.names)]
    stem = Path(model.yaml.get("yaml_file") or "model.yaml").stem
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(Path(folder) / WEIGHTS_NAME))
    (Path(folder) / f"{stem}.yaml").write_text(yaml.safe_dump(architecture, sort_keys=False))


def _load_yolo(folder: Path) -> Any:
    if not (folder / WEIGHTS_NAME).is_file():
        raise ModelNotAvailableError(
            f"detector {folder}: no {WEIGHTS_NAME}; train it first (dvc repro train-detector)"
        )
    architecture_file = _architecture_file(folder)
    names = yaml.safe_load(architecture_file.read_text()).get("names")
    detector = _yolo(str(architecture_file), task="detect")
    try:
        detector.model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
    except (RuntimeError, SafetensorError) as exc:
        raise ModelNotAvailableError(
            f"detector {folder}: {WEIGHTS_NAME} does not fit {architecture_file.name}: {exc}"
        ) from exc
    detector.model.names = dict(enumerate(names))
    detector.model.eval()
    return detector


def load_detector(folder: str | Path, class_names: Sequence[str]) -> Any:
    """Load a detector folder (safetensors + yaml) and check it predicts shared.class_names."""
    detector = _load_yolo(Path(folder))
    names = [detector.model.names[i] for i in sorted(detector.model.names)]
    if names != list(class_names):
        raise ModelNotAvailableError(
            f"detector {folder} predicts classes {names}, but shared.class_names is "
            f"{list(class_names)}; retrain it or fix shared.class_names"
        )
    return detector


def convert_checkpoint(checkpoint: Path, out: Path) -> list[str]:
    """Rewrite an ultralytics `.pt` the user trusts as a detector folder; returns its classes.

    This unpickles `checkpoint` (it may run code): only for files from a source you trust.
    """
    if not Path(checkpoint).is_file():
        raise ModelNotAvailableError(f"{checkpoint}: no such checkpoint file")
    detector = _yolo(str(checkpoint))
    with atomic_path(Path(out)) as staging:
        staging.mkdir()
        save_detector(detector.model, staging)
    return [detector.names[i] for i in sorted(detector.names)]


def _initial_detector(model: str) -> Any:
    """The YOLO to train: from a yaml, a release asset, or a synthdet detector folder's weights."""
    _check_model_source(model)
    if model.endswith((".yaml", ".pt")):
        try:
            return _yolo(model)
        except FileNotFoundError as exc:
            raise ModelNotAvailableError(
                f"train_detector.model {model!r} is not an ultralytics model yaml: {exc}"
            ) from exc
        except ConnectionError as exc:
            raise ModelNotAvailableError(
                f"detector weights {model!r} cannot be downloaded here ({exc}); use an "
                "ultralytics model .yaml (e.g. yolov8n.yaml, trained from scratch) or a synthdet "
                "detector folder (train_detector.model)"
            ) from exc
    # Model.load(module) seeds training from the module's weights, as a loaded .pt would; the
    # detection head is re-made when the classes differ (fine-tuning a COCO model, say).
    detector = _load_yolo(Path(model))
    return detector.load(detector.model)


# ---------------------------------------------------------------- training


def dataset_view(
    root: Path, train_folders: Sequence[Path], val_folder: Path, class_names: Sequence[str]
) -> tuple[Path, int]:
    """Build a dataset yaml in `root` that trains on `train_folders` (deduplicated) and validates
    on `val_folder`, through symlink views (`data.link_yolo_folder`), so that nothing is written
    into those folders.

    Returns the yaml's path and the number of training images.
    """
    unique_train = list(dict.fromkeys(Path(folder).resolve() for folder in train_folders))
    # Validating first turns bad data into errors naming the file, not ultralytics warnings.
    train_images = sum(len(read_yolo_folder(folder, len(class_names))) for folder in unique_train)
    read_yolo_folder(val_folder, len(class_names))
    train_views = []
    for index, folder in enumerate(unique_train):
        link_yolo_folder(folder, root / f"train{index}")
        train_views.append(f"train{index}/images")
    link_yolo_folder(Path(val_folder), root / "val")
    dataset_yaml = write_dataset_yaml(root, class_names, train_views, "val/images", root=root)
    return dataset_yaml, train_images


def _metric_name(name: str) -> str:
    # "metrics/mAP50(B)" -> "metrics/mAP50": MLflow rejects parentheses in metric names.
    return name.replace("(B)", "")


def _validation_schedule(val_every: int) -> Callable[[Any], None]:
    """An on_train_epoch_end callback: validate every `val_every`-th epoch (0: none but the
    last, which ultralytics always validates), and let a skipped pass draw what it would have.

    A validation pass draws Python's `random.uniform` once per image (ultralytics' `Format`
    transform decides its `bgr` augmentation even while validating, where it is off), and
    training's augmentations (mosaic, perspective, flips) draw from the same generator after
    it. A skipped pass makes the same draws, so training sees the same random numbers and
    trains the same weights as validating every epoch (tests/test_detection.py checks it).
    """

    def schedule(trainer: Any) -> None:
        epoch = trainer.epoch + 1
        trainer.args.val = val_every > 0 and epoch % val_every == 0
        # ultralytics' own condition, read right after this callback (BaseTrainer._do_train)
        final = epoch >= trainer.epochs
        if not (trainer.args.val or final or trainer.stopper.possible_stop or trainer.stop):
            for _ in range(len(trainer.test_loader.dataset)):
                random.uniform(0, 1)

    return schedule


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
    val_every: int | None = None,
) -> TrainingResult:
    """Train a YOLO detector; write its best weights to `out_dir` (see `save_detector`) and the
    ultralytics train arguments to `out_dir/args.yaml` (the temporary training folder written
    as TMPDIR, so identical trainings give identical folders), atomically.

    `on_epoch` receives each epoch's row (losses, validation metrics, learning rates) as soon as
    the epoch ends, e.g. to log it to MLflow. `val_every` (train_detector.val_every): 0 validates
    the last epoch only, k every k-th epoch and the last; None leaves `yolo_args`' `val` to say.
    Validation does not change training: the weights are the same bits whichever it is.
    """
    detector = _initial_detector(model)
    if val_every is not None:
        yolo_args = {**yolo_args, "val": val_every == 1}
        if val_every != 1:
            detector.add_callback("on_train_epoch_end", _validation_schedule(val_every))
    rows: list[dict[str, float]] = []
    in_training_epoch = validated = False

    # Ultralytics also fires on_fit_epoch_end for the final validation of best.pt; only the
    # calls that follow a training epoch are epochs.
    def mark_training_epoch(trainer: Any) -> None:
        nonlocal in_training_epoch, validated
        in_training_epoch, validated = True, False

    def mark_validated(validator: Any) -> None:
        nonlocal validated
        validated = True

    def record_epoch(trainer: Any) -> None:
        nonlocal in_training_epoch
        if not in_training_epoch:
            return
        in_training_epoch = False
        # With val false only the last epoch validates; trainer.metrics of the others
        # still hold an earlier epoch's (or zeros), which are not this epoch's numbers.
        val_metrics = trainer.metrics if validated else {}
        values = {**trainer.label_loss_items(trainer.tloss), **val_metrics, **trainer.lr}
        row = {"epoch": trainer.epoch + 1}
        row.update({_metric_name(k): round(float(v), 6) for k, v in values.items()})
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)

    with tempfile.TemporaryDirectory(prefix="synthdet-train-") as tmp:
        data_yaml, train_images = dataset_view(
            Path(tmp) / "data", train_folders, val_folder, class_names
        )
        detector.add_callback("on_train_epoch_end", mark_training_epoch)
        detector.add_callback("on_val_end", mark_validated)
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
            # After training, ultralytics has reloaded its best checkpoint into detector.model.
            save_detector(detector.model, staging)
            # The temporary folder's name would make two identical trainings' folders differ
            # (and DVC rerun what depends on them), so the record names it TMPDIR.
            train_args = (run_dir / TRAIN_ARGS_NAME).read_text().replace(tmp, "TMPDIR")
            (staging / TRAIN_ARGS_NAME).write_text(train_args)
    best = {_metric_name(k): float(v) for k, v in metrics.results_dict.items()}
    return TrainingResult(train_images=train_images, epochs=rows, best=best)


def write_epochs_csv(rows: Sequence[dict[str, float]], path: Path) -> None:
    """Per-epoch results as CSV (a DVC plot with x=epoch), written atomically; an epoch without
    validation (train_detector.val_every) leaves the validation columns empty."""
    if not rows:
        raise SynthdetError(f"no training epochs were recorded, nothing to write to {path}")
    columns = list(dict.fromkeys(key for row in (rows[-1], *rows) for key in row))
    with atomic_path(Path(path)) as tmp, tmp.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
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


# The warnings of a training set without boxes (train_detector says them before training).
EMPTY_LABELS_FIX = (
    "For auto-labelled images lower annotate_with_baseline.confidence, or label by "
    "construction with generate.mode=img2img and annotate_with_baseline.source_boxes=true."
)


def empty_variant_warning(variant: str, seed: int, images: int) -> str:
    return (
        f"detector variant {variant} (seed {seed}) trains on {images} images whose labels hold "
        "no box: it can only learn that there is nothing to find (its metrics say "
        f"empty_label_set: 1). {EMPTY_LABELS_FIX}"
    )


# pseudo-labels come from the annotator on real images: no construction labels exist
PSEUDO_LABELS_FIX = (
    "Lower annotate_with_baseline.confidence (pseudo-label's annotator), or drop pseudo from "
    "few_shot.sources."
)


def empty_extra_labels_warning(variant: str, seed: int, extra: str, images: int) -> str:
    fix = PSEUDO_LABELS_FIX if extra == "pseudo" else EMPTY_LABELS_FIX
    return (
        f"detector variant {variant} (seed {seed}): its {images} extra images ({extra}) hold no "
        "box, so it learns their objects as background (its metrics say empty_extra_labels: 1; "
        f"the report flags it). {fix}"
    )
