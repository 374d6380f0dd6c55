"""The sections of the diffusion model: base, caption, class_images and personalize."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from synthdet.params import methods
from synthdet.params.parsing import (
    ParamsError,
    _check_prompt_templates,
    _fields,
    _require,
    lora_problems,
)

# Checkpoints shipped in the repository (models/builtin/<name>), made by synthdet.pretrain.
BUILTIN_CHECKPOINTS = ("builtin:orchard",)

# diffusers.optimization.get_scheduler names (piecewise_constant needs step rules, not offered)
LrScheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
]


def _check_warmup(section: str, scheduler: str, warmup: int) -> None:
    _require(
        warmup == 0 or scheduler != "constant",
        f"{section}.lr_warmup_steps",
        f"is {warmup}, but {section}.lr_scheduler constant has no warm-up (diffusers ignores "
        f"it), so it would do nothing; set {section}.lr_scheduler=constant_with_warmup, or "
        f"{section}.lr_warmup_steps=0",
    )


@dataclass(frozen=True)
class BaseParams:
    """Pretraining of the offline `builtin:tiny` Stable Diffusion model on the real train split.

    Images are scaled so their shorter side is `shared.resolution` (the scale the detector sees)
    and both networks train on random native-scale crops (`vae_crop`, `unet_crop`), so an object
    keeps the size in pixels it has in the generated images. The crops and levels are checked
    against shared.resolution in `params.checks`; the prompt trained on is `Params.base_prompt`.
    """

    init: str | None  # start from this shipped checkpoint (builtin:orchard); None = random init
    pool_dir: str  # folder of unlabelled images trained on next to the train split (a DVC dep)
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
    lr_scheduler: LrScheduler  # diffusers.optimization.get_scheduler name, for both phases
    lr_warmup_steps: int
    unconditional_probability: float  # prompt replaced by "" (for classifier-free guidance)

    @property
    def crop_unit(self) -> int:
        """The VAE's times the UNet's downsampling: UNet crops (px) must be multiples of it."""
        return 2 ** (len(self.vae_channels) - 1) * 2 ** (len(self.unet_channels) - 1)

    def __post_init__(self) -> None:
        _require(len(self.vae_channels) >= 2, "base.vae_channels", "needs at least 2 levels")
        _require(len(self.unet_channels) >= 2, "base.unet_channels", "needs at least 2 levels")
        _require(
            self.vae_crop >= 8 and self.vae_crop % 8 == 0,
            "base.vae_crop",
            f"must be a positive multiple of 8, got {self.vae_crop}",
        )
        _require(
            self.unet_crop >= self.crop_unit and self.unet_crop % self.crop_unit == 0,
            "base.unet_crop",
            f"must be a positive multiple of {self.crop_unit} (the VAE's and UNet's "
            f"downsampling), got {self.unet_crop}",
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
        _check_warmup("base", self.lr_scheduler, self.lr_warmup_steps)
        for key in ("vae_steps", "unet_steps"):
            steps = getattr(self, key)
            _require(
                steps == 0 or self.lr_warmup_steps < steps,
                "base.lr_warmup_steps",
                f"({self.lr_warmup_steps}) must be below base.{key} ({steps}): the learning rate "
                "would still be warming up when training ends; lower it",
            )
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
        # The class noun lives once (shared.subjects.*.class_noun): the prompt must take it.
        _require(
            "class_noun" in _fields(self.prompt),
            "class_images.prompt",
            f"{self.prompt!r} never names the class ({{class_noun}}), so neither the class "
            "images nor the base model's training prompt would say what the subject is; add "
            "{class_noun}, e.g. 'a photo of {class_noun}'",
        )
        _require(self.num_inference_steps >= 1, "class_images.num_inference_steps", "must be >= 1")
        _require(self.guidance_scale >= 0, "class_images.guidance_scale", "must be >= 0")
        _require(self.batch_size >= 1, "class_images.batch_size", "must be >= 1")


@dataclass(frozen=True)
class TextualInversionParams:
    num_vectors: int  # embedding vectors behind the placeholder token; all of them train
    initializer_token: str | None  # None: the last word of the subject's class noun

    def __post_init__(self) -> None:
        _require(self.num_vectors >= 1, "personalize.textual_inversion.num_vectors", "must be >= 1")
        # the tokenizer decides at the stage's start whether the word is one token
        _require(
            self.initializer_token is None or len(self.initializer_token.split()) == 1,
            "personalize.textual_inversion.initializer_token",
            f"must be one word (a single token), got {self.initializer_token!r}; e.g. 'tree'",
        )


PERSONALIZE_METHODS = methods.METHOD_NAMES


@dataclass(frozen=True)
class PersonalizeParams:
    method: Literal[PERSONALIZE_METHODS]  # a key of synthdet.params.methods.METHODS
    base_model: str  # 'builtin:tiny', a hub id or a local diffusers folder
    vae: str | None  # replacement VAE (hub id or folder), e.g. an SDXL fp16-fix VAE
    max_train_steps: int  # optimizer steps
    batch_size: int  # instance images per step (per device)
    gradient_accumulation_steps: int
    learning_rate: float
    lr_scheduler: LrScheduler
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
    lora: dict[str, Any]  # passed to peft.LoraConfig (UNet)
    text_encoder_lora_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    textual_inversion: TextualInversionParams = field(
        default_factory=lambda: TextualInversionParams(1, None)
    )

    def __post_init__(self) -> None:
        if problems := lora_problems(self.lora):
            raise ParamsError("\n".join(problems))
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
        _check_warmup("personalize", self.lr_scheduler, self.lr_warmup_steps)
        _require(
            self.vae is None or self.base_model != "builtin:tiny",
            "personalize.vae",
            f"is {self.vae!r}, but personalize.base_model is builtin:tiny, whose UNet learned the "
            "latents of its own VAE (the base stage): another VAE's latents mean nothing to it; "
            "set personalize.vae=null (a replacement VAE is for a Stable Diffusion base model)",
        )
        _require(
            self.lr_warmup_steps < self.max_train_steps,
            "personalize.lr_warmup_steps",
            f"({self.lr_warmup_steps}) must be below personalize.max_train_steps "
            f"({self.max_train_steps}): the learning rate would still be warming up when "
            "training ends; lower it",
        )
        _require(
            self.checkpointing_steps <= self.max_train_steps,
            "personalize.checkpointing_steps",
            f"({self.checkpointing_steps}) is above personalize.max_train_steps "
            f"({self.max_train_steps}), so no resumable state would ever be saved; lower it "
            "(e.g. to half the steps) or set it to 0 to save none",
        )
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
        if methods.method(self.method).weights is methods.Weights.LORA_LAYERS:
            self._check_lora()
        # The validation grid (base vs personalised, metrics/personalize/draw<d>/<subject>/) needs a
        # prompt and a seed; an empty list would end training in a traceback.
        _check_prompt_templates(self.validation_prompts, "personalize.validation_prompts")
        _require(
            len(self.validation_seeds) >= 1,
            "personalize.validation_seeds",
            "must hold at least one seed (the validation grid draws one image per prompt and seed)",
        )
        if not methods.method(self.method).new_token:
            self._check_no_placeholder_settings()
        else:
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

    def _check_no_placeholder_settings(self) -> None:
        """textual_inversion settings changed for a method that adds no placeholder token."""
        for key, default, written in (("num_vectors", 1, "1"), ("initializer_token", None, "null")):
            value = getattr(self.textual_inversion, key)
            _require(
                value == default,
                f"personalize.textual_inversion.{key}",
                f"is {value!r}, but personalize.method {self.method} adds no placeholder token, "
                "so it would have no effect; set personalize.method=textual_inversion, or "
                f"personalize.textual_inversion.{key}={written}",
            )

    def _check_lora(self) -> None:
        """LoRA settings under which the adapter could not be built or would change nothing."""
        rank = self.lora.get("r", 8)  # peft's default rank
        _require(
            isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1,
            "personalize.lora.r",
            f"must be an integer >= 1 (the LoRA rank), got {rank!r}",
        )
        alpha = self.lora.get("lora_alpha", 8)
        _require(
            isinstance(alpha, int | float) and not isinstance(alpha, bool) and alpha > 0,
            "personalize.lora.lora_alpha",
            f"must be > 0, got {alpha!r}: the LoRA update is scaled by lora_alpha / r, so at 0 "
            "the trained adapter changes nothing; set it to personalize.lora.r (e.g. 8)",
        )
        _require(
            not self.train_text_encoder or len(self.text_encoder_lora_modules) > 0,
            "personalize.text_encoder_lora_modules",
            f"is empty, but personalize.train_text_encoder is true with {self.method}, so no "
            "text-encoder layer would get a LoRA and it would not train; list modules (e.g. "
            "[q_proj, k_proj, v_proj, out_proj]) or set personalize.train_text_encoder=false",
        )
