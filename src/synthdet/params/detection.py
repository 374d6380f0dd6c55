"""The detector sections: annotate_with_baseline, train_detector, evaluate and few_shot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from synthdet.params.parsing import (
    ParamsError,
    _check_matrix_values,
    _require,
    device_problem,
    yolo_problems,
)


@dataclass(frozen=True)
class AnnotateParams:
    """Labelling of the generated images; at the detector's input size
    (`Params.train_detector.imgsz`, one value for training, labelling and evaluation)."""

    confidence: float
    iou: float
    # img2img / ControlNet: also propose the real boxes of the train image a generated image was
    # made from (manifest `source`), merged with the baseline's boxes by class-wise NMS
    source_boxes: bool
    # the detector that labels generated images and the pseudo-labelled real images: handful
    # (trained on the subjects' handful only: strict few-shot) or real (every labelled train
    # image, Genfusion's protocol: the annotator has seen labels the few-shot variants have not)
    annotator: Literal["handful", "real"] = "handful"
    source_box_confidence: float = 0.5  # score given to a source box in the merge
    merge_iou: float = 0.5  # boxes overlapping more than this are one object; the higher score wins

    def __post_init__(self) -> None:
        _require(
            0 <= self.confidence <= 1, "annotate_with_baseline.confidence", "must be in [0, 1]"
        )
        # A box is kept when its score is above the confidence, and no score is above 1.
        _require(
            self.confidence < 1 or self.source_boxes,
            "annotate_with_baseline.confidence",
            "is 1: no detector score is above 1, so the baseline would label no box at all; "
            "lower it (e.g. 0.25), or label by construction only with "
            "annotate_with_baseline.source_boxes=true (img2img / controlnet)",
        )
        _require(0 < self.iou <= 1, "annotate_with_baseline.iou", "must be in (0, 1]")
        _require(
            0 < self.source_box_confidence <= 1,
            "annotate_with_baseline.source_box_confidence",
            "must be in (0, 1]",
        )
        _require(0 < self.merge_iou <= 1, "annotate_with_baseline.merge_iou", "must be in (0, 1]")

    def annotator_folder(self, real: Path, handful: Path) -> Path:
        """The annotator's detector folder: `real` (every labelled image, one for all draws) or
        `handful` (the draw's handful detector), both of shared.seed; the stages get both, as
        dvc.yaml spells each draw's paths without a case for the annotator."""
        return {"real": Path(real), "handful": Path(handful)}[self.annotator]


# Genfusion's fair comparison: no ultralytics augmentation, SGD with YOLO's classic settings.
# A preset's values win over the same keys in `train_detector.yolo`.
DETECTOR_PRESETS: dict[str, dict[str, Any]] = {
    "genfusion": {
        "optimizer": "SGD",
        "lr0": 0.01,
        "momentum": 0.937,
        "weight_decay": 0.0005,
        "batch": 8,
        "hsv_h": 0.0,
        "hsv_s": 0.0,
        "hsv_v": 0.0,
        "degrees": 0.0,
        "translate": 0.0,
        "scale": 0.0,
        "shear": 0.0,
        "perspective": 0.0,
        "flipud": 0.0,
        "fliplr": 0.0,
        "bgr": 0.0,
        "mosaic": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
        "copy_paste": 0.0,
        "close_mosaic": 0,
    }
}


ULTRALYTICS_IMGSZ = 640  # ultralytics' input size when train_detector.yolo sets none
ULTRALYTICS_EPOCHS = 100  # and its epochs
# train_detector.yolo keys whose values synthdet checks itself, with the reason, instead of
# ultralytics' type and range check (TrainDetectorParams)
OWN_VALUE_CHECKS = frozenset({"epochs", "nbs", "fraction"})


@dataclass(frozen=True)
class TrainDetectorParams:
    family: Literal["yolov5", "yolov8", "yolo11"]
    size: Literal["n", "s", "m", "l", "x"]
    # null: `<family><size>.yaml` from scratch (offline); or a release asset name (yolov8n.pt,
    # downloaded), a synthdet detector folder or a model yaml, matching family and size
    model: str | None
    seeds: tuple[int, ...]  # every variant is trained once per seed; shared.seed's `real` annotates
    # extra `mix-r<share>-f<fraction>` variants, one per (real share, synthetic fraction) pair:
    # a subset of the real train images plus enough auto-labelled images to make up the fraction
    mix_real_shares: tuple[float, ...]
    mix_synthetic_fractions: tuple[float, ...]
    preset: Literal["genfusion"] | None  # fixed ultralytics settings, applied over `yolo`
    yolo: dict[str, Any]  # passed to ultralytics `model.train`
    # smaller training sets are repeated and topped up to exactly this many images an epoch
    # (synthdet.detectors.variants.epoch_plan): an equal training budget in optimizer steps;
    # 0 = plain epochs; None = the prepared train split's image count, so `real`'s steps on any
    # dataset (`images_per_epoch`)
    min_images_per_epoch: int | None = None
    # variants on the generated images besides the few-shot ones: synthetic (generated images
    # only) and mixed (every real train image plus every generated one); see
    # synthdet.detectors.variants
    variants: tuple[Literal["synthetic", "mixed"], ...] = ("synthetic",)
    # validation passes while training: 0 = the last epoch only (the detector the pipeline keeps
    # and evaluates); k = every k-th epoch too (the validation columns of the per-epoch CSV)
    val_every: int = 0

    def __post_init__(self) -> None:
        self._check_library_args()
        if self.model is not None and self.model.endswith((".yaml", ".pt")):
            name = Path(self.model).name
            _require(
                name.startswith(f"{self.family}{self.size}"),
                "train_detector.model",
                f"{self.model!r} does not match train_detector.family/size "
                f"({self.family}{self.size}); set them to the model's",
            )
        _require(len(self.seeds) >= 1, "train_detector.seeds", "must hold at least one seed")
        for key in ("seeds", "variants", "mix_real_shares", "mix_synthetic_fractions"):
            _check_matrix_values(getattr(self, key), f"train_detector.{key}")
        _require(
            self.min_images_per_epoch is None or self.min_images_per_epoch >= 0,
            "train_detector.min_images_per_epoch",
            "must be >= 0, or null for the train split's image count",
        )
        _require(
            bool(self.mix_real_shares) or not self.mix_synthetic_fractions,
            "train_detector.mix_synthetic_fractions",
            f"is {list(self.mix_synthetic_fractions)}, but train_detector.mix_real_shares is "
            "empty, so no mix variant would be trained; add a real share, e.g. "
            "-S 'train_detector.mix_real_shares=[1.0]'",
        )
        for share in self.mix_real_shares:
            _require(0 < share <= 1, "train_detector.mix_real_shares", "must be in (0, 1]")
        for fraction in self.mix_synthetic_fractions:
            _require(
                0 <= fraction < 1, "train_detector.mix_synthetic_fractions", "must be in [0, 1)"
            )
        _require(
            not (0 in self.mix_synthetic_fractions and 1 in self.mix_real_shares),
            "train_detector.mix_synthetic_fractions",
            "holds 0 with train_detector.mix_real_shares 1.0: mix-r1.0-f0.0 is every real train "
            "image and no generated one, the variant `real` trained again; drop the 0 (`real` is "
            "that point of the curve), or use real shares below 1",
        )
        _require(
            isinstance(self.val_every, int) and self.val_every >= 0,
            "train_detector.val_every",
            f"must be an integer >= 0 (0: validate the last epoch only), got {self.val_every!r}",
        )
        _require(
            "val" not in self.yolo,
            "train_detector.yolo.val",
            "is set by train_detector.val_every (0: the last epoch only, 1: every epoch, k: "
            "every k-th epoch and the last); remove it",
        )
        _require(
            "patience" not in self.yolo or self.val_every == 1,
            "train_detector.yolo.patience",
            f"stops training after that many epochs without a better validation, so it needs "
            f"every epoch validated, but train_detector.val_every is {self.val_every}; set "
            "train_detector.val_every=1 or remove patience",
        )
        _require(
            not self.yolo.get("save") or self.val_every > 0,
            "train_detector.yolo.save",
            "is true, which keeps the epoch best on validation, but train_detector.val_every is "
            "0 (the last epoch only), so the last epoch would always be kept; set "
            "train_detector.val_every (1: every epoch), or save false",
        )
        for owned in ("data", "project", "name", "seed", "exist_ok"):
            _require(
                owned not in self.yolo,
                f"train_detector.yolo.{owned}",
                "is set by the stage (paths and train_detector.seeds); remove it",
            )
        args = self.train_args()
        epochs = args.get("epochs", ULTRALYTICS_EPOCHS)
        _require(
            isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1,
            "train_detector.yolo.epochs",
            f"must be an integer >= 1 (0 epochs trains nothing), got {epochs!r}",
        )
        self._check_train_args(args, epochs)
        lr0 = args.get("lr0", 0.01)  # ultralytics' default
        _require(
            isinstance(lr0, int | float) and not isinstance(lr0, bool) and lr0 > 0,
            "train_detector.yolo.lr0",
            f"must be a number > 0 (at 0 the detector's weights never change), got {lr0!r}",
        )
        fraction = args.get("fraction", 1.0)
        _require(
            isinstance(fraction, int | float) and 0 < fraction <= 1,
            "train_detector.yolo.fraction",
            f"must be in (0, 1] (the share of the training images ultralytics uses), got "
            f"{fraction!r}",
        )
        imgsz = self.imgsz  # labelling and evaluation use it too
        _require(
            isinstance(imgsz, int)
            and not isinstance(imgsz, bool)
            and imgsz >= 32
            and imgsz % 32 == 0,
            "train_detector.yolo.imgsz",
            f"must be a positive multiple of 32, got {imgsz!r}",
        )

    def _check_library_args(self) -> None:
        """`yolo` and the preset against ultralytics' own schema (every unknown key and
        ill-typed value at once), and a `device` this machine lacks."""
        problems = yolo_problems(self.yolo, "train_detector.yolo", OWN_VALUE_CHECKS)
        if self.preset:
            preset = DETECTOR_PRESETS[self.preset]
            problems += yolo_problems(preset, f"train_detector.preset.{self.preset}", frozenset())
        if problem := device_problem(self.yolo.get("device"), "train_detector.yolo.device"):
            problems.append(problem)
        if problems:
            raise ParamsError("\n".join(problems))

    def _check_train_args(self, args: dict[str, Any], epochs: int) -> None:
        """ultralytics arguments that would crash it, be ignored, or change what params.yaml says
        is trained (its defaults where a key is unset)."""
        for key, default, why in (
            (
                "batch",
                16,
                "below 1 ultralytics' AutoBatch picks the batch from free GPU memory "
                "(16 on a CPU), so the variants would train at a batch params.yaml does not say",
            ),
            ("nbs", 64, "ultralytics divides the weight decay by this nominal batch size"),
        ):
            value = args.get(key, default)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"train_detector.yolo.{key}",
                f"must be an integer >= 1 ({why}), got {value!r}; e.g. 8",
            )
        _require(
            not args.get("time"),
            "train_detector.yolo.time",
            f"is {args.get('time')!r}, but with it ultralytics trains for that many hours and "
            "re-estimates the epochs from the first epoch's speed, so train_detector.yolo.epochs "
            "would be ignored and each variant's epochs would depend on the machine; remove it "
            "and set train_detector.yolo.epochs",
        )
        optimizer = args.get("optimizer", "auto")  # ultralytics' default
        ignored = [key for key in ("lr0", "momentum") if key in args]
        _require(
            optimizer != "auto" or not ignored,
            "train_detector.yolo.optimizer",
            f"is auto (ultralytics' default when unset), which picks its own optimizer and "
            f"learning rate and ignores train_detector.yolo.{' and '.join(ignored)} "
            "(ultralytics#8400), so params.yaml would not say how the detectors train; set "
            "train_detector.yolo.optimizer (e.g. AdamW or SGD), or remove "
            f"{' and '.join(ignored)}",
        )
        _require(
            not args.get("resume"),
            "train_detector.yolo.resume",
            f"is {args.get('resume')!r}, but synthdet trains every detector from scratch, in a "
            "new folder each stage run (a stopped stage reruns whole): ultralytics would find "
            "no checkpoint there to resume, or, given a path, continue another run with that "
            "run's arguments instead of params.yaml's; remove it",
        )
        # Only a close_mosaic params.yaml sets: ultralytics' default 10 with a short run (the
        # tests' 1 epoch) is its own choice. It turns mosaic off once epoch >= epochs - close.
        close, mosaic = args.get("close_mosaic", 0), args.get("mosaic", 1.0)
        _require(
            not (isinstance(mosaic, int | float) and mosaic > 0)
            or not isinstance(close, int)
            or close < epochs,
            "train_detector.yolo.close_mosaic",
            f"({close}) is not below train_detector.yolo.epochs ({epochs}): the last "
            "close_mosaic epochs run without mosaic, so no epoch would use it and "
            f"train_detector.yolo.mosaic ({mosaic}) would have no effect; lower close_mosaic to "
            f"at most {epochs - 1}, or set train_detector.yolo.mosaic=0",
        )

    @property
    def architecture(self) -> str:
        return f"{self.family}{self.size}"

    @property
    def model_source(self) -> str:
        """What training starts from: `model`, or the family/size yaml (from scratch)."""
        return self.model or f"{self.architecture}.yaml"

    def overridden_by_preset(self) -> list[str]:
        """`yolo` values the preset replaces, as 'key: yolo value -> preset value'."""
        preset = DETECTOR_PRESETS[self.preset] if self.preset else {}
        return [
            f"{key}: {self.yolo[key]!r} -> {value!r}"
            for key, value in preset.items()
            if key in self.yolo and self.yolo[key] != value
        ]

    def train_args(self) -> dict[str, Any]:
        """The ultralytics train arguments: `yolo`, overridden by the preset's values."""
        return {**self.yolo, **(DETECTOR_PRESETS[self.preset] if self.preset else {})}

    @property
    def imgsz(self) -> int:
        """The detectors' input size: `yolo.imgsz` (ultralytics' 640 when unset). The one value
        the detectors train, label (annotate_with_baseline) and are evaluated at."""
        return self.train_args().get("imgsz", ULTRALYTICS_IMGSZ)


@dataclass(frozen=True)
class EvaluateParams:
    """Scoring of the detectors and the generated images; the detectors see the test images at
    `imgsz`, train_detector's (set when a `Params` is made)."""

    confidence: float  # low, so the PR curve and mAP see the whole ranking
    iou: float
    fid_real_split: Literal["train", "val", "test"]
    grid_images: int
    leak_threshold: float  # a generated image this similar to a test image fails the run
    grid_confidence: float = 0.25  # boxes drawn in the test grid (ground truth vs predicted)
    # CLIP score of each generated image with its prompt: a hub id or local CLIP folder; null
    # (offline default) writes clip_score: null with the reason
    clip_model: str | None = None
    # the two classifier checks (timm, trained from scratch on CPU)
    classifier_model: str = "test_resnet"
    classifier_size: int = 32  # input pixels
    classifier_epochs: int = 15
    classifier_folds: int = 4  # two-sample test: every image is held out once
    # the smallest mAP@[.5:.95] difference worth detecting: a comparison whose minimum
    # detectable difference (80 % power, 5 % level) exceeds it is a demonstration, not evidence
    target_difference: float = 0.03

    def __post_init__(self) -> None:
        _require(0 < self.leak_threshold <= 1, "evaluate.leak_threshold", "must be in (0, 1]")
        _require(
            0 < self.target_difference <= 1,
            "evaluate.target_difference",
            "must be in (0, 1]: a difference in mAP@[.5:.95]",
        )
        # Detectors keep boxes scoring above the confidence, and no score is above 1: at 1 every
        # detector would find nothing (mAP 0 everywhere) and the grid would draw no box.
        _require(
            0 <= self.confidence < 1,
            "evaluate.confidence",
            "must be in [0, 1): no box scores above 1, so every detector would find nothing; "
            "keep it low (0.001) so mAP and the PR curve see the whole ranking",
        )
        _require(0 < self.iou <= 1, "evaluate.iou", "must be in (0, 1]")
        _require(self.grid_images >= 1, "evaluate.grid_images", "must be >= 1")
        _require(
            0 <= self.grid_confidence < 1,
            "evaluate.grid_confidence",
            "must be in [0, 1): no box scores 1, so the test grid would draw no predicted box",
        )
        _require(self.classifier_size >= 16, "evaluate.classifier_size", "must be >= 16")
        _require(self.classifier_epochs >= 1, "evaluate.classifier_epochs", "must be >= 1")
        _require(self.classifier_folds >= 2, "evaluate.classifier_folds", "must be >= 2")


@dataclass(frozen=True)
class CopyPasteParams:
    """Box-level Simple Copy-Paste (Ghiasi et al. 2021) composites of the handful."""

    objects_per_image: int  # object crops pasted on each background
    scale: tuple[float, float]  # each crop is resized by a factor drawn from [low, high]
    # a box whose object is hidden by pasted crops more than this (area share) is dropped
    max_occlusion: float

    def __post_init__(self) -> None:
        _require(
            self.objects_per_image >= 1, "few_shot.copy_paste.objects_per_image", "must be >= 1"
        )
        low_high = len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1]
        _require(low_high, "few_shot.copy_paste.scale", "must be [low, high] with 0 < low <= high")
        _require(
            0 < self.max_occlusion < 1,
            "few_shot.copy_paste.max_occlusion",
            "must be in (0, 1): at 0 any overlap drops a box, at 1 a hidden object keeps its box",
        )


FEW_SHOT_SOURCES = ("synthetic", "copy-paste", "pseudo")


@dataclass(frozen=True)
class FewShotParams:
    """The few-shot question: the handful alone, the handful plus `extra_images` images from each
    source, and the nested real-image curve (synthdet.detectors.variants)."""

    # N images each source adds to the handful: generated (synthetic), copy-paste composites,
    # real train images with withheld labels labelled by the annotator (pseudo)
    extra_images: int
    sources: tuple[Literal["synthetic", "copy-paste", "pseudo"], ...]
    # real-n<count> variants: the first <count> labelled train images, handful first, so the
    # curve runs handful (k) -> counts -> all (`real`); mAP against count gives what an extra
    # source is worth in real labelled images
    real_image_counts: tuple[int, ...]
    # handful draws (indices): draw d is the handful drawn with seed shared.seed + d
    # (core.data.draw_seed), each with its own personalisation, extra images and detectors;
    # draw 0 is the pipeline's first handful
    draws: tuple[int, ...]
    copy_paste: CopyPasteParams

    def __post_init__(self) -> None:
        _require(self.extra_images >= 1, "few_shot.extra_images", "must be >= 1")
        for key in ("sources", "real_image_counts", "draws"):
            _check_matrix_values(getattr(self, key), f"few_shot.{key}")
        _require(
            len(self.draws) >= 1 and all(draw >= 0 for draw in self.draws),
            "few_shot.draws",
            f"must list handful draw indices >= 0, e.g. [0] or [0, 1, 2]; got {list(self.draws)}",
        )
        counts = self.real_image_counts
        _require(
            list(counts) == sorted(set(counts)) and all(c >= 1 for c in counts),
            "few_shot.real_image_counts",
            f"must be increasing positive image counts, got {list(counts)}",
        )
