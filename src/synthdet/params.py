"""Typed, frozen parameters parsed from params.yaml.

Every section is a frozen dataclass. Parsing rejects unknown keys (suggesting the closest name),
missing keys, wrong types and out-of-range values with a message that names the key, so a typo in
`dvc exp run -S ...` fails before any work starts. Library option blocks (ultralytics train args,
peft LoraConfig) are typed `dict` and pass through unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from synthdet.errors import SynthdetError


class ParamsError(SynthdetError):
    """A parameter is unknown, missing, of the wrong type or out of range."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ParamsError(f"params: '{key}' {message}")


@dataclass(frozen=True)
class SharedParams:
    seed: int
    identifier: str  # the rare token that names the personalised subject ("sks")
    class_noun: str  # what the subject is ("apple tree"); also the prior/class prompt noun
    class_names: tuple[str, ...]  # detector classes, index = YOLO class id
    mlflow_experiment: str

    def __post_init__(self) -> None:
        _require(len(self.class_names) > 0, "shared.class_names", "must name at least one class")
        _require(bool(self.identifier.strip()), "shared.identifier", "must not be empty")


@dataclass(frozen=True)
class PrepareParams:
    raw_dir: str
    format: Literal["auto", "yolo", "coco", "voc"]
    group_pattern: str  # regex on the file stem; group 1 (or group 'group') names the photo
    val_groups: int
    test_groups: int
    personalize_images: int

    def __post_init__(self) -> None:
        try:
            compiled = re.compile(self.group_pattern)
        except re.error as exc:
            raise ParamsError(
                f"params: 'prepare.group_pattern' is not a valid regex: {exc}"
            ) from exc
        _require(compiled.groups >= 1, "prepare.group_pattern", "needs a capture group")
        _require(self.val_groups >= 1, "prepare.val_groups", "must be >= 1")
        _require(self.test_groups >= 1, "prepare.test_groups", "must be >= 1")
        _require(self.personalize_images >= 1, "prepare.personalize_images", "must be >= 1")


@dataclass(frozen=True)
class BaseParams:
    """Pretraining of the offline `builtin:tiny` Stable Diffusion model on the real train split."""

    resolution: int
    vae_channels: tuple[int, ...]  # AutoencoderKL widths; latents are 2**(levels-1) times smaller
    unet_channels: tuple[int, ...]  # UNet widths per level; all but the first have cross-attention
    text_hidden_size: int  # CLIP text encoder width (= UNet cross-attention width)
    text_layers: int
    vae_steps: int
    unet_steps: int
    batch_size: int
    vae_crop: int  # the VAE trains on random crops of this size (it is convolutional)
    vae_learning_rate: float
    vae_kl_weight: float  # KL term next to the reconstruction loss; small, as in SD's VAE
    unet_learning_rate: float
    lr_scheduler: str  # diffusers.optimization.get_scheduler name, for both phases
    lr_warmup_steps: int
    unconditional_probability: float  # class prompt replaced by "" (for classifier-free guidance)

    def __post_init__(self) -> None:
        _require(
            self.resolution % 8 == 0 and self.resolution >= 32,
            "base.resolution",
            "must be a multiple of 8 and >= 32",
        )
        _require(len(self.vae_channels) >= 2, "base.vae_channels", "needs at least 2 levels")
        _require(len(self.unet_channels) >= 2, "base.unet_channels", "needs at least 2 levels")
        latent_size = self.resolution // 2 ** (len(self.vae_channels) - 1)
        _require(
            latent_size % 2 ** (len(self.unet_channels) - 1) == 0,
            "base.unet_channels",
            f"has too many levels for {latent_size}px latents (base.resolution / "
            "2**(len(base.vae_channels) - 1) must divide by 2**(levels - 1))",
        )
        _require(
            8 <= self.vae_crop <= self.resolution and self.vae_crop % 8 == 0,
            "base.vae_crop",
            "must be a multiple of 8 between 8 and base.resolution",
        )
        for key in ("vae_channels", "unet_channels"):
            _require(
                all(c >= 8 and c % 8 == 0 for c in getattr(self, key)),
                f"base.{key}",
                "must be multiples of 8",
            )
        _require(
            self.text_hidden_size % 16 == 0, "base.text_hidden_size", "must be a multiple of 16"
        )
        for key in ("text_layers", "vae_steps", "unet_steps", "batch_size"):
            _require(getattr(self, key) >= 1, f"base.{key}", "must be >= 1")
        for key in ("vae_learning_rate", "unet_learning_rate"):
            _require(getattr(self, key) > 0, f"base.{key}", "must be > 0")
        _require(self.vae_kl_weight >= 0, "base.vae_kl_weight", "must be >= 0")
        _require(self.lr_warmup_steps >= 0, "base.lr_warmup_steps", "must be >= 0")
        _require(
            0 <= self.unconditional_probability < 1,
            "base.unconditional_probability",
            "must be in [0, 1)",
        )


@dataclass(frozen=True)
class CaptionParams:
    captioner: Literal["template", "blip"]
    template: str  # fields: {identifier}, {class_noun}, {objects}
    count_objects: bool  # fill {objects} from the label file ("with 12 apples")
    blip_model: str | None  # hub id or local folder; required for captioner=blip
    max_new_tokens: int

    def __post_init__(self) -> None:
        _require(
            self.captioner != "blip" or bool(self.blip_model),
            "caption.blip_model",
            "must name a BLIP model (hub id or local folder) when caption.captioner is 'blip'",
        )
        _require(self.max_new_tokens >= 1, "caption.max_new_tokens", "must be >= 1")
        try:
            self.template.format(identifier="", class_noun="", objects="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ParamsError(
                f"params: 'caption.template' has an unknown or malformed field ({exc}); "
                "use {identifier}, {class_noun} and {objects}"
            ) from exc


@dataclass(frozen=True)
class PersonalizeParams:
    base_model: str  # 'builtin:tiny', a hub id or a local diffusers folder
    resolution: int
    max_train_steps: int
    batch_size: int
    learning_rate: float
    lr_scheduler: str
    lr_warmup_steps: int
    lora: dict[str, Any] = field(default_factory=dict)  # passed to peft.LoraConfig

    def __post_init__(self) -> None:
        _require(self.resolution % 8 == 0, "personalize.resolution", "must be a multiple of 8")
        _require(self.max_train_steps >= 1, "personalize.max_train_steps", "must be >= 1")
        _require(self.batch_size >= 1, "personalize.batch_size", "must be >= 1")
        _require(self.learning_rate > 0, "personalize.learning_rate", "must be > 0")
        _require(self.lr_warmup_steps >= 0, "personalize.lr_warmup_steps", "must be >= 0")
        _require(
            "target_modules" in self.lora,
            "personalize.lora",
            "must set target_modules (e.g. [to_q, to_k, to_v, to_out.0])",
        )


@dataclass(frozen=True)
class GenerateParams:
    num_images: int
    prompts: tuple[str, ...]  # templates with {identifier} and {class_noun}; used round-robin
    negative_prompt: str
    num_inference_steps: int
    guidance_scale: float
    resolution: int
    batch_size: int

    def __post_init__(self) -> None:
        _require(self.num_images >= 1, "generate.num_images", "must be >= 1")
        _require(len(self.prompts) >= 1, "generate.prompts", "must hold at least one prompt")
        for i, template in enumerate(self.prompts):
            try:
                template.format(identifier="", class_noun="")
            except (KeyError, IndexError, ValueError) as exc:
                raise ParamsError(
                    f"params: 'generate.prompts[{i}]' {template!r} is not a valid template "
                    f"({exc!r}); the fields are {{identifier}} and {{class_noun}}"
                ) from exc
        _require(self.num_inference_steps >= 1, "generate.num_inference_steps", "must be >= 1")
        _require(self.guidance_scale >= 0, "generate.guidance_scale", "must be >= 0")
        _require(self.resolution % 8 == 0, "generate.resolution", "must be a multiple of 8")
        _require(self.batch_size >= 1, "generate.batch_size", "must be >= 1")


@dataclass(frozen=True)
class AnnotateParams:
    confidence: float
    iou: float
    imgsz: int

    def __post_init__(self) -> None:
        _require(
            0 <= self.confidence <= 1, "annotate_with_baseline.confidence", "must be in [0, 1]"
        )
        _require(0 < self.iou <= 1, "annotate_with_baseline.iou", "must be in (0, 1]")
        _require(self.imgsz % 32 == 0, "annotate_with_baseline.imgsz", "must be a multiple of 32")


@dataclass(frozen=True)
class TrainDetectorParams:
    model: str  # ultralytics model: a yaml (from scratch, offline) or a .pt with weights
    yolo: dict[str, Any] = field(default_factory=dict)  # passed to ultralytics `model.train`

    def __post_init__(self) -> None:
        _require(
            self.model.endswith((".yaml", ".pt")),
            "train_detector.model",
            "must be an ultralytics model .yaml (from scratch) or .pt (weights)",
        )
        for owned in ("data", "project", "name", "seed", "exist_ok"):
            _require(
                owned not in self.yolo,
                f"train_detector.yolo.{owned}",
                "is set by the stage (paths and shared.seed); remove it",
            )


@dataclass(frozen=True)
class EvaluateParams:
    imgsz: int
    confidence: float  # low, so the PR curve and mAP see the whole ranking
    iou: float
    fid_real_split: Literal["train", "val", "test"]
    grid_images: int
    leak_threshold: float  # a generated image this similar to a test image fails the run

    def __post_init__(self) -> None:
        _require(0 < self.leak_threshold <= 1, "evaluate.leak_threshold", "must be in (0, 1]")
        _require(0 <= self.confidence <= 1, "evaluate.confidence", "must be in [0, 1]")
        _require(0 < self.iou <= 1, "evaluate.iou", "must be in (0, 1]")
        _require(self.imgsz % 32 == 0, "evaluate.imgsz", "must be a multiple of 32")
        _require(self.grid_images >= 1, "evaluate.grid_images", "must be >= 1")


@dataclass(frozen=True)
class Params:
    shared: SharedParams
    prepare: PrepareParams
    base: BaseParams
    caption: CaptionParams
    personalize: PersonalizeParams
    generate: GenerateParams
    annotate_with_baseline: AnnotateParams
    train_detector: TrainDetectorParams
    evaluate: EvaluateParams


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the type hint `hint`, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return parse_section(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if origin is Literal:
        _require(value in args, key, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        _require(isinstance(value, list | tuple), key, f"must be a list, got {_describe(value)}")
        return tuple(_convert(item, args[0], f"{key}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        _require(isinstance(value, dict), key, f"must be a mapping, got {_describe(value)}")
        return dict(value)
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        _require(ok, key, f"must be a number, got {_describe(value)}")
        return float(value)
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        _require(ok, key, f"must be an integer, got {_describe(value)}")
        return value
    _require(isinstance(value, hint), key, f"must be {hint.__name__}, got {_describe(value)}")
    return value


def parse_section(cls: type, raw: Any, where: str = "") -> Any:
    """Build dataclass `cls` from mapping `raw`; `where` is the dotted key prefix for messages."""
    _require(
        isinstance(raw, dict), where or "params.yaml", f"must be a mapping, got {_describe(raw)}"
    )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ParamsError(
                f"params: unknown key '{prefix}{key}'{hint}; known keys: {', '.join(fields)}"
            )
    values = {}
    for name, spec in fields.items():
        key = prefix + name
        if name not in raw:
            has_default = (
                spec.default is not dataclasses.MISSING
                or spec.default_factory is not dataclasses.MISSING
            )
            _require(has_default, key, "is missing")
            continue
        values[name] = _convert(raw[name], hints[name], key)
    return cls(**values)


def parse_params(raw: Any) -> Params:
    return parse_section(Params, raw)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ParamsError(f"params: file {path} not found") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"params: {path} is not valid YAML: {exc}") from exc
    return parse_params(raw)
