"""Typed, frozen parameters parsed from params.yaml.

Every section is a frozen dataclass. Parsing rejects unknown keys (suggesting the closest name),
missing keys, wrong types and out-of-range values with a message that names the key, so a typo in
`dvc exp run -S ...` fails before any work starts. Library option blocks (ultralytics train args,
peft LoraConfig) are typed `dict` and pass through unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from synthdet import methods
from synthdet.captioning import subject_caption
from synthdet.errors import SynthdetError


class ParamsError(SynthdetError):
    """A parameter is unknown, missing, of the wrong type or out of range."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ParamsError(f"params: '{key}' {message}")


# Checkpoints shipped in the repository (models/builtin/<name>), made by synthdet.pretrain.
BUILTIN_CHECKPOINTS = ("builtin:orchard",)

SUBJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class SubjectParams:
    """One personalised subject: its own images, identifier, class noun and adapter."""

    identifier: str  # the rare token that names the subject ("sks"); "<sks>" for textual inversion
    class_noun: str  # what the subject is ("apple tree"); also the prior/class prompt noun
    images: int  # how many train images the subject is personalised on
    stem_pattern: str  # regex (re.search) on the file stem choosing candidates; '.*' = any


@dataclass(frozen=True)
class SharedParams:
    seed: int
    subjects: dict[str, SubjectParams]  # name -> subject; each gets its own DVC stage and adapter
    class_names: tuple[str, ...]  # detector classes, index = YOLO class id
    mlflow_experiment: str

    def __post_init__(self) -> None:
        _require(
            0 <= self.seed < 2**32,
            "shared.seed",
            f"must be in [0, 2**32 - 1] (numpy's seed range), got {self.seed}",
        )
        _require(len(self.class_names) > 0, "shared.class_names", "must name at least one class")
        for i, name in enumerate(self.class_names):
            _require(
                bool(name.strip()) and name == name.strip(),
                f"shared.class_names[{i}]",
                f"must be a non-empty name without leading or trailing spaces, got {name!r}",
            )
        repeated = sorted({name for name in self.class_names if self.class_names.count(name) > 1})
        _require(
            not repeated,
            "shared.class_names",
            f"names {', '.join(map(repr, repeated))} more than once; each class needs its own "
            "name (the index is the YOLO class id)",
        )
        _require(
            bool(self.mlflow_experiment.strip()), "shared.mlflow_experiment", "must not be empty"
        )
        _require(len(self.subjects) > 0, "shared.subjects", "must hold at least one subject")
        for name, subject in self.subjects.items():
            key = f"shared.subjects.{name}"
            _require(
                SUBJECT_NAME.fullmatch(str(name)) is not None,
                key,
                "is not a valid subject name (letters, digits, '_' and '-'; it names a folder "
                "and a DVC stage)",
            )
            _require(
                bool(subject.identifier.strip()) and len(subject.identifier.split()) == 1,
                f"{key}.identifier",
                "must be one non-empty word",
            )
            _require(bool(subject.class_noun.strip()), f"{key}.class_noun", "must not be empty")
            _require(subject.images >= 1, f"{key}.images", "must be >= 1")
            try:
                re.compile(subject.stem_pattern)
            except re.error as exc:
                raise ParamsError(
                    f"params: '{key}.stem_pattern' is not a valid regex: {exc}"
                ) from exc


@dataclass(frozen=True)
class PrepareParams:
    raw_dir: str
    format: Literal["auto", "yolo", "coco", "voc"]
    # regex on the file stem; group 1 (or group 'group') names the photo; None: every image is
    # its own group
    group_pattern: str | None
    val_groups: int  # groups (photos), not images, drawn for val
    test_groups: int  # groups (photos), not images, drawn for test

    def __post_init__(self) -> None:
        _require(bool(self.raw_dir.strip()), "prepare.raw_dir", "must name the dataset folder")
        if self.group_pattern is not None:
            try:
                compiled = re.compile(self.group_pattern)
            except re.error as exc:
                raise ParamsError(
                    f"params: 'prepare.group_pattern' is not a valid regex: {exc}"
                ) from exc
            _require(
                compiled.groups >= 1,
                "prepare.group_pattern",
                "needs a capture group (or null: every image is its own group)",
            )
        _require(self.val_groups >= 1, "prepare.val_groups", "must be >= 1")
        _require(self.test_groups >= 1, "prepare.test_groups", "must be >= 1")


@dataclass(frozen=True)
class BaseParams:
    """Pretraining of the offline `builtin:tiny` Stable Diffusion model on the real train split.

    Images are scaled so their shorter side is `resolution` (the scale the detector sees) and
    both networks train on random native-scale crops (`vae_crop`, `unet_crop`), so an object
    keeps the size in pixels it has in the generated images.
    """

    init: str | None  # start from this shipped checkpoint (builtin:orchard); None = random init
    pool_dir: str  # folder of unlabelled images trained on next to the train split (a DVC dep)
    resolution: int
    vae_channels: tuple[int, ...]  # AutoencoderKL widths; latents are 2**(levels-1) times smaller
    unet_channels: tuple[int, ...]  # UNet widths per level; all but the first have cross-attention
    text_hidden_size: int  # CLIP text encoder width (= UNet cross-attention width)
    text_layers: int
    vae_steps: int
    unet_steps: int
    batch_size: int
    vae_crop: int  # the VAE trains on random crops of this size (it is convolutional)
    unet_crop: int  # the UNet trains on random crops of this size, in image pixels
    vae_learning_rate: float
    vae_kl_weight: float  # KL term next to the reconstruction loss; small, as in SD's VAE
    unet_learning_rate: float
    lr_scheduler: str  # diffusers.optimization.get_scheduler name, for both phases
    lr_warmup_steps: int
    unconditional_probability: float  # class prompt replaced by "" (for classifier-free guidance)
    class_prompt: str  # the one prompt the UNet is pretrained on ("a photo of apple tree")

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
        crop_unit = 2 ** (len(self.vae_channels) - 1) * 2 ** (len(self.unet_channels) - 1)
        _require(
            crop_unit <= self.unet_crop <= self.resolution and self.unet_crop % crop_unit == 0,
            "base.unet_crop",
            f"must be a multiple of {crop_unit} (the VAE's and UNet's downsampling) between "
            f"{crop_unit} and base.resolution",
        )
        _require(
            self.init in (None, *BUILTIN_CHECKPOINTS),
            "base.init",
            f"must be null or one of {', '.join(BUILTIN_CHECKPOINTS)}",
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
        for key in ("text_layers", "batch_size"):
            _require(getattr(self, key) >= 1, f"base.{key}", "must be >= 1")
        # From a shipped checkpoint 0 steps means "use it as it is"; from scratch it cannot.
        least = 0 if self.init else 1
        for key in ("vae_steps", "unet_steps"):
            _require(
                getattr(self, key) >= least,
                f"base.{key}",
                f"must be >= {least}" + ("" if self.init else " (or set base.init)"),
            )
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
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ParamsError(
                f"params: 'caption.template' has an unknown or malformed field ({exc}); "
                "use {identifier}, {class_noun} and {objects}"
            ) from exc
        _require(
            not self.count_objects or "objects" in _fields(self.template),
            "caption.count_objects",
            "is true, but caption.template has no {objects} field, so the counts never reach a "
            "caption; add {objects} to the template or set caption.count_objects=false",
        )
        _require(
            self.captioner == "blip" or self.blip_model is None,
            "caption.blip_model",
            "is set, but caption.captioner is 'template', so BLIP is never run; set "
            "caption.captioner=blip, or caption.blip_model=null",
        )


@dataclass(frozen=True)
class ClassImagesParams:
    """Prior-preservation images, generated by the base model from the class prompt per subject."""

    count: int  # per subject; 0 = no prior preservation
    prompt: str  # template with {class_noun}
    negative_prompt: str
    num_inference_steps: int
    guidance_scale: float
    resolution: int
    batch_size: int

    def __post_init__(self) -> None:
        _require(self.count >= 0, "class_images.count", "must be >= 0")
        try:
            self.prompt.format(class_noun="")
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ParamsError(
                f"params: 'class_images.prompt' has an unknown or malformed field ({exc}); "
                "use {class_noun}"
            ) from exc
        _require(self.num_inference_steps >= 1, "class_images.num_inference_steps", "must be >= 1")
        _require(self.guidance_scale >= 0, "class_images.guidance_scale", "must be >= 0")
        _require(
            self.resolution >= 8 and self.resolution % 8 == 0,
            "class_images.resolution",
            "must be a positive multiple of 8",
        )
        _require(self.batch_size >= 1, "class_images.batch_size", "must be >= 1")


@dataclass(frozen=True)
class TextualInversionParams:
    num_vectors: int  # embedding vectors behind the placeholder token; all of them train
    initializer_token: str | None  # None: the last word of the subject's class noun

    def __post_init__(self) -> None:
        _require(self.num_vectors >= 1, "personalize.textual_inversion.num_vectors", "must be >= 1")


PERSONALIZE_METHODS = methods.METHOD_NAMES


@dataclass(frozen=True)
class PersonalizeParams:
    method: Literal[PERSONALIZE_METHODS]  # a key of synthdet.methods.METHODS
    base_model: str  # 'builtin:tiny', a hub id or a local diffusers folder
    vae: str | None  # replacement VAE (hub id or folder), e.g. an SDXL fp16-fix VAE
    resolution: int
    max_train_steps: int  # optimizer steps
    batch_size: int  # instance images per step (per device)
    gradient_accumulation_steps: int
    learning_rate: float
    lr_scheduler: str
    lr_warmup_steps: int
    train_text_encoder: bool  # methods without a new token: train the text encoder(s) too
    prior_loss_weight: float  # methods with prior preservation, with class images
    class_batch_size: int  # class (prior) images per step next to batch_size instance images
    snr_gamma: float | None  # Min-SNR loss weighting (5.0 in the paper); None = plain MSE
    mixed_precision: Literal["auto", "no", "fp16", "bf16"]  # auto: bf16/fp16 on GPU, fp32 on CPU
    gradient_checkpointing: bool
    optimizer: Literal["adamw", "adamw_8bit"]  # adamw_8bit needs bitsandbytes and CUDA
    max_grad_norm: float
    checkpointing_steps: int  # save a resumable training state every K steps; 0 = never
    validation_prompts: tuple[str, ...]  # templates with {identifier} and {class_noun}
    validation_seeds: tuple[int, ...]
    validation_steps: int  # denoising steps of the validation images
    lora: dict[str, Any] = field(default_factory=dict)  # passed to peft.LoraConfig (UNet)
    text_encoder_lora_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    textual_inversion: TextualInversionParams = field(
        default_factory=lambda: TextualInversionParams(1, None)
    )

    def __post_init__(self) -> None:
        _require(
            self.resolution >= 8 and self.resolution % 8 == 0,
            "personalize.resolution",
            "must be a positive multiple of 8",
        )
        for key in (
            "max_train_steps",
            "batch_size",
            "gradient_accumulation_steps",
            "validation_steps",
        ):
            _require(getattr(self, key) >= 1, f"personalize.{key}", "must be >= 1")
        for key in ("lr_warmup_steps", "class_batch_size", "checkpointing_steps"):
            _require(getattr(self, key) >= 0, f"personalize.{key}", "must be >= 0")
        _require(self.learning_rate > 0, "personalize.learning_rate", "must be > 0")
        _require(self.prior_loss_weight >= 0, "personalize.prior_loss_weight", "must be >= 0")
        _require(self.max_grad_norm > 0, "personalize.max_grad_norm", "must be > 0")
        _require(
            self.snr_gamma is None or self.snr_gamma > 0, "personalize.snr_gamma", "must be > 0"
        )
        _require(
            "target_modules" in self.lora,
            "personalize.lora",
            "must set target_modules (e.g. [to_q, to_k, to_v, to_out.0])",
        )
        # The validation grid (base vs personalised, metrics/personalize/<subject>/) needs a
        # prompt and a seed; an empty list would end training in a traceback.
        _check_prompt_templates(self.validation_prompts, "personalize.validation_prompts")
        _require(
            len(self.validation_seeds) >= 1,
            "personalize.validation_seeds",
            "must hold at least one seed (the validation grid draws one image per prompt and seed)",
        )
        if methods.method(self.method).new_token:
            _require(
                not self.train_text_encoder,
                "personalize.train_text_encoder",
                "is true, but personalize.method textual_inversion trains only the placeholder "
                "token's embedding vectors, never the text encoder; set it to false (or use "
                "lora, dreambooth or dreambooth_lora)",
            )
            _require(
                any("identifier" in _fields(t) for t in self.validation_prompts),
                "personalize.validation_prompts",
                "never name the subject ({identifier}), and textual_inversion changes nothing "
                "else, so the base and personalised images would be identical; add a prompt "
                "with {identifier}, e.g. 'a photo of {identifier}'",
            )


@dataclass(frozen=True)
class GenerateSubjectParams:
    """Per-subject overrides of generate.num_images and generate.prompts (None: the default)."""

    num_images: int | None = None
    prompts: tuple[str, ...] | None = None


def _fields(template: str) -> set[str]:
    """The names of a format template's fields ('a {identifier}' -> {'identifier'})."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _check_prompt_templates(templates: tuple[str, ...], key: str, required: bool = True) -> None:
    if required:
        _require(len(templates) >= 1, key, "must hold at least one prompt")
    for i, template in enumerate(templates):
        try:
            template.format(identifier="", class_noun="")
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ParamsError(
                f"params: '{key}[{i}]' {template!r} is not a valid template "
                f"({exc!r}); the fields are {{identifier}} and {{class_noun}}"
            ) from exc


def img2img_steps(strength: float, num_inference_steps: int) -> int:
    """The denoising steps diffusers' img2img pipelines run: int(steps x strength)."""
    return min(int(num_inference_steps * strength), num_inference_steps)


def _least_strength(steps: int) -> float:
    thousandths = math.ceil(1000 / steps)
    while img2img_steps(thousandths / 1000, steps) < 1:
        thousandths += 1
    return thousandths / 1000


def _least_steps(strength: float) -> int:
    steps = math.ceil(1 / strength)
    while img2img_steps(strength, steps) < 1:
        steps += 1
    return steps


@dataclass(frozen=True)
class GenerateFilterParams:
    """Quality control of generated images; every drop is counted in metrics/generate.json."""

    blank_max_std: float  # pixel std (0-255) at or below which an image is blank (safety checker)
    max_attempts: int  # seeds tried per image (derived from the image's seed) before dropping it
    memorization_threshold: float  # cosine similarity to a real personalisation image; above: drop
    outliers: Literal["kmeans", "realism", "none"]  # off-distribution filter
    clusters: int  # kmeans: KMeans clusters on PCA-reduced Inception features; largest is kept
    pca_components: int  # kmeans: PCA dimensions (capped at images - 1)
    min_cluster_images: int  # kmeans: fewer images of a subject than this: no clustering
    realism_k: int  # realism: k of the k-NN real manifold (Kynkäänniemi et al. 2019 use 3)
    min_realism: float  # realism: keep images whose realism score is at least this (1 = inside)

    def __post_init__(self) -> None:
        # The pixel std of an 8-bit image is at most 127.5 (half black, half white): a threshold
        # there would call every image blank and drop all of them.
        _require(
            0 <= self.blank_max_std < 127.5,
            "generate.filters.blank_max_std",
            "must be in [0, 127.5): no image has a pixel std above 127.5, so every image would "
            "be blank and dropped (0 keeps all but perfectly flat images)",
        )
        _require(self.max_attempts >= 1, "generate.filters.max_attempts", "must be >= 1")
        _require(
            0 < self.memorization_threshold <= 1,
            "generate.filters.memorization_threshold",
            "must be in (0, 1] (1 disables the filter)",
        )
        _require(self.clusters >= 2, "generate.filters.clusters", "must be >= 2")
        _require(self.pca_components >= 1, "generate.filters.pca_components", "must be >= 1")
        _require(
            self.min_cluster_images >= self.clusters,
            "generate.filters.min_cluster_images",
            "must be >= generate.filters.clusters",
        )
        _require(self.realism_k >= 1, "generate.filters.realism_k", "must be >= 1")
        _require(self.min_realism >= 0, "generate.filters.min_realism", "must be >= 0")


@dataclass(frozen=True)
class GenerateParams:
    mode: Literal["txt2img", "img2img", "controlnet"]
    num_images: int  # per subject, unless generate.subjects.<name>.num_images says otherwise
    prompts: tuple[str, ...]  # templates with {identifier} and {class_noun}; used round-robin
    subjects: dict[str, GenerateSubjectParams]  # per-subject counts / prompts, keyed like shared
    negative_prompt: str
    num_inference_steps: int
    guidance_scale: float
    scheduler: Literal[
        "dpm_solver++",
        "dpm_solver++_karras",
        "unipc",
        "ddim",
        "euler",
        "euler_ancestral",
        "pndm",
        "ddpm",
        "model",  # the scheduler saved with the base model
    ]
    resolution: int
    batch_size: int
    strength: float  # img2img: how far from the real image (0 = copy, 1 = ignore it)
    controlnet_model: str | None  # controlnet: hub id or local diffusers ControlNetModel folder
    control: Literal["canny", "sobel"]  # controlnet: the map extracted from the real image
    canny_low: int
    canny_high: int
    controlnet_conditioning_scale: float
    dtype: Literal["float32", "float16", "bfloat16"]  # float16 / bfloat16: on a GPU
    channels_last: bool
    compile: bool  # torch.compile the UNet (pays off on a GPU for thousands of images)
    filters: GenerateFilterParams

    def __post_init__(self) -> None:
        _require(self.num_images >= 0, "generate.num_images", "must be >= 0")
        _check_prompt_templates(self.prompts, "generate.prompts")
        for name, subject in self.subjects.items():
            key = f"generate.subjects.{name}"
            _require(
                subject.num_images is None or subject.num_images >= 0,
                f"{key}.num_images",
                "must be >= 0",
            )
            if subject.prompts is not None:
                _check_prompt_templates(subject.prompts, f"{key}.prompts")
        _require(self.num_inference_steps >= 1, "generate.num_inference_steps", "must be >= 1")
        _require(self.guidance_scale >= 0, "generate.guidance_scale", "must be >= 0")
        _require(
            self.resolution >= 8 and self.resolution % 8 == 0,
            "generate.resolution",
            "must be a positive multiple of 8",
        )
        _require(self.batch_size >= 1, "generate.batch_size", "must be >= 1")
        _require(0 < self.strength <= 1, "generate.strength", "must be in (0, 1]")
        if self.mode == "img2img":
            steps = self.num_inference_steps
            _require(
                img2img_steps(self.strength, steps) >= 1,
                "generate.strength",
                f"x 'generate.num_inference_steps' ({self.strength} x {steps}) must be >= 1 "
                "with generate.mode img2img: img2img denoises int(strength x steps) steps, and "
                f"this leaves none; raise generate.strength to at least "
                f"{_least_strength(steps)}, or generate.num_inference_steps to at least "
                f"{_least_steps(self.strength)}",
            )
        _require(
            self.mode != "controlnet" or bool(self.controlnet_model),
            "generate.controlnet_model",
            "must name a ControlNet (hub id or local folder) when generate.mode is 'controlnet'",
        )
        _require(
            self.mode == "controlnet" or self.controlnet_model is None,
            "generate.controlnet_model",
            f"is set, but generate.mode is {self.mode!r}, so no ControlNet is used; set "
            "generate.mode=controlnet, or generate.controlnet_model=null",
        )
        _require(
            0 <= self.canny_low <= self.canny_high <= 255,
            "generate.canny_low",
            "must satisfy 0 <= canny_low <= canny_high <= 255",
        )
        _require(
            self.controlnet_conditioning_scale >= 0,
            "generate.controlnet_conditioning_scale",
            "must be >= 0",
        )

    def count(self, subject: str) -> int:
        override = self.subjects.get(subject)
        if override is not None and override.num_images is not None:
            return override.num_images
        return self.num_images

    def templates(self, subject: str) -> tuple[str, ...]:
        override = self.subjects.get(subject)
        if override is not None and override.prompts is not None:
            return override.prompts
        return self.prompts

    def check_subjects(self, known: list[str]) -> None:
        """Reject per-subject settings for a subject that shared.subjects does not define."""
        for name in self.subjects:
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ParamsError(
                    f"params: 'generate.subjects.{name}' names no subject of shared.subjects"
                    f"{hint}; known subjects: {', '.join(known)}"
                )


@dataclass(frozen=True)
class AnnotateParams:
    confidence: float
    iou: float
    imgsz: int
    # img2img / ControlNet: also propose the real boxes of the train image a generated image was
    # made from (manifest `source`), merged with the baseline's boxes by class-wise NMS
    source_boxes: bool = False
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
            self.imgsz >= 32 and self.imgsz % 32 == 0,
            "annotate_with_baseline.imgsz",
            "must be a positive multiple of 32",
        )
        _require(
            0 < self.source_box_confidence <= 1,
            "annotate_with_baseline.source_box_confidence",
            "must be in (0, 1]",
        )
        _require(0 < self.merge_iou <= 1, "annotate_with_baseline.merge_iou", "must be in (0, 1]")


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
    yolo: dict[str, Any] = field(default_factory=dict)  # passed to ultralytics `model.train`

    def __post_init__(self) -> None:
        if self.model is not None and self.model.endswith((".yaml", ".pt")):
            name = Path(self.model).name
            _require(
                name.startswith(f"{self.family}{self.size}"),
                "train_detector.model",
                f"{self.model!r} does not match train_detector.family/size "
                f"({self.family}{self.size}); set them to the model's",
            )
        _require(len(self.seeds) >= 1, "train_detector.seeds", "must hold at least one seed")
        _require(len(set(self.seeds)) == len(self.seeds), "train_detector.seeds", "has a duplicate")
        for share in self.mix_real_shares:
            _require(0 < share <= 1, "train_detector.mix_real_shares", "must be in (0, 1]")
        for fraction in self.mix_synthetic_fractions:
            _require(
                0 <= fraction < 1, "train_detector.mix_synthetic_fractions", "must be in [0, 1)"
            )
        for owned in ("data", "project", "name", "seed", "exist_ok"):
            _require(
                owned not in self.yolo,
                f"train_detector.yolo.{owned}",
                "is set by the stage (paths and train_detector.seeds); remove it",
            )
        epochs = self.train_args().get("epochs", 1)
        _require(
            isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1,
            "train_detector.yolo.epochs",
            f"must be an integer >= 1 (0 epochs trains nothing), got {epochs!r}",
        )
        fraction = self.train_args().get("fraction", 1.0)
        _require(
            isinstance(fraction, int | float) and 0 < fraction <= 1,
            "train_detector.yolo.fraction",
            f"must be in (0, 1] (the share of the training images ultralytics uses), got "
            f"{fraction!r}",
        )

    @property
    def architecture(self) -> str:
        return f"{self.family}{self.size}"

    @property
    def model_source(self) -> str:
        """What training starts from: `model`, or the family/size yaml (from scratch)."""
        return self.model or f"{self.architecture}.yaml"

    def train_args(self) -> dict[str, Any]:
        """The ultralytics train arguments: `yolo`, overridden by the preset's values."""
        return {**self.yolo, **(DETECTOR_PRESETS[self.preset] if self.preset else {})}


@dataclass(frozen=True)
class EvaluateParams:
    imgsz: int
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

    def __post_init__(self) -> None:
        _require(0 < self.leak_threshold <= 1, "evaluate.leak_threshold", "must be in (0, 1]")
        # Detectors keep boxes scoring above the confidence, and no score is above 1: at 1 every
        # detector would find nothing (mAP 0 everywhere) and the grid would draw no box.
        _require(
            0 <= self.confidence < 1,
            "evaluate.confidence",
            "must be in [0, 1): no box scores above 1, so every detector would find nothing; "
            "keep it low (0.001) so mAP and the PR curve see the whole ranking",
        )
        _require(0 < self.iou <= 1, "evaluate.iou", "must be in (0, 1]")
        _require(
            self.imgsz >= 32 and self.imgsz % 32 == 0,
            "evaluate.imgsz",
            "must be a positive multiple of 32",
        )
        _require(self.grid_images >= 1, "evaluate.grid_images", "must be >= 1")
        _require(
            0 <= self.grid_confidence < 1,
            "evaluate.grid_confidence",
            "must be in [0, 1): no box scores 1, so the test grid would draw no predicted box",
        )
        _require(self.classifier_size >= 16, "evaluate.classifier_size", "must be >= 16")
        _require(self.classifier_epochs >= 1, "evaluate.classifier_epochs", "must be >= 1")
        _require(self.classifier_folds >= 2, "evaluate.classifier_folds", "must be >= 2")


def _names_subject(template: str, token: str) -> bool:
    """Whether a prompt template names the subject: its {identifier} field, or the token itself."""
    return "identifier" in _fields(template) or (
        re.search(rf"(?<![\w<]){re.escape(token)}(?![\w>])", template) is not None
    )


def _check_settings_take_effect(params: Params) -> None:
    """Settings of different sections that together would produce nothing or have no effect."""
    method_name = params.personalize.method
    subjects = params.shared.subjects
    generate = params.generate
    for name, subject in subjects.items():
        token = methods.method(method_name).concept_token(subject.identifier)
        own = generate.subjects.get(name)
        key = (
            f"generate.subjects.{name}.prompts"
            if own is not None and own.prompts is not None
            else "generate.prompts"
        )
        for i, template in enumerate(generate.templates(name)):
            _require(
                _names_subject(template, token),
                f"{key}[{i}]",
                f"{template!r} never names the subject (no {{identifier}}), so its images "
                f"would not show the personalised {name}; add {{identifier}}, e.g. "
                "'a photo of {identifier} {class_noun}'",
            )
    _require(
        sum(generate.count(name) for name in subjects) > 0,
        "generate.num_images",
        "is 0 for every subject, so generate would make no image and the synthetic and mixed "
        "detectors would have nothing to train on; set generate.num_images >= 1",
    )
    if methods.method(method_name).new_token and params.caption.captioner == "template":
        for name, subject in subjects.items():
            token = methods.method(method_name).concept_token(subject.identifier)
            caption = subject_caption(
                params.caption.template,
                subject.identifier,
                subject.class_noun,
                "",
                method_name,
                check=False,
            )
            _require(
                token in caption,
                "caption.template",
                f"{params.caption.template!r} gives captions without the placeholder {token} "
                f"(subject {name}: {caption!r}), and personalize.method textual_inversion "
                "trains only that token, so nothing would be learned; add {identifier}, e.g. "
                "'a photo of {identifier}{objects}'",
            )
    _require(
        not params.annotate_with_baseline.source_boxes or generate.mode != "txt2img",
        "annotate_with_baseline.source_boxes",
        "is true, but generate.mode is 'txt2img': txt2img images have no source train image, "
        "so no source box would ever be offered; set generate.mode=img2img (or controlnet), or "
        "annotate_with_baseline.source_boxes=false",
    )
    count = params.class_images.count
    if count > 0:
        personalize = params.personalize
        _require(
            method_name in methods.PRIOR_METHODS,
            "class_images.count",
            f"is {count}, but personalize.method {method_name!r} uses no class images (prior "
            "preservation belongs to dreambooth and dreambooth_lora), so they would be drawn "
            "for nothing; set class_images.count=0",
        )
        for key in ("prior_loss_weight", "class_batch_size"):
            _require(
                getattr(personalize, key) > 0,
                f"personalize.{key}",
                f"is 0, so the {count} class images per subject (class_images.count) never "
                "reach the loss; set class_images.count=0 to train without prior preservation, "
                f"or personalize.{key} > 0",
            )


@dataclass(frozen=True)
class Params:
    shared: SharedParams
    prepare: PrepareParams
    base: BaseParams
    caption: CaptionParams
    class_images: ClassImagesParams
    personalize: PersonalizeParams
    generate: GenerateParams
    annotate_with_baseline: AnnotateParams
    train_detector: TrainDetectorParams
    evaluate: EvaluateParams

    def __post_init__(self) -> None:
        check_across_sections(self)

    def subject(self, name: str) -> SubjectParams:
        """`shared.subjects.<name>`; ParamsError naming the subjects if there is none."""
        if name not in self.shared.subjects:
            raise ParamsError(
                f"params: no subject 'shared.subjects.{name}'; subjects: "
                f"{', '.join(self.shared.subjects)}"
            )
        return self.shared.subjects[name]


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
        if args and dataclasses.is_dataclass(args[1]):  # dict[str, Section]: each value parsed
            return {
                name: parse_section(args[1], item, f"{key}.{name}") for name, item in value.items()
            }
        return dict(value)
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        _require(ok, key, f"must be a number, got {_describe(value)}")
        _require(math.isfinite(value), key, f"must be a finite number, got {value!r}")
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


def check_across_sections(params: Params) -> None:
    """Checks that involve two sections; run whenever a `Params` is made (parsed, or changed with
    dataclasses.replace), so every stage, the first one included, refuses a combination that a
    later stage could not run."""
    _require(
        params.shared.seed in params.train_detector.seeds,
        "shared.seed",
        f"({params.shared.seed}) must be one of 'train_detector.seeds' "
        f"{list(params.train_detector.seeds)}: the real detector of shared.seed is the annotator; "
        f"e.g. -S shared.seed={params.train_detector.seeds[0]}",
    )
    params.generate.check_subjects(list(params.shared.subjects))
    _check_settings_take_effect(params)


def parse_params(raw: Any) -> Params:
    return parse_section(Params, raw)


def read_yaml(text: str) -> Any:
    """YAML 1.2, read exactly as DVC reads params.yaml (ruamel.yaml, safe): `1e-4` is a number,
    `yes` / `no` / `on` / `off` are strings, and a repeated key is an error."""
    return YAML(typ="safe").load(text)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = read_yaml(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError as exc:
        raise ParamsError(f"params: file {path} not found") from exc
    except UnicodeDecodeError as exc:
        raise ParamsError(f"params: {path} is not UTF-8 text ({exc}); save it as UTF-8") from exc
    except YAMLError as exc:  # a repeated key too
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ParamsError(f"params: {path} is not valid YAML: {problem}{where}") from exc
    return parse_params(raw)
