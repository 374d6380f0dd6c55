"""The generate section: how many images, from which prompts, and their quality filters."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Literal

from synthdet.params.parsing import ParamsError, _check_prompt_templates, _require


@dataclass(frozen=True)
class GenerateSubjectParams:
    """Per-subject overrides of generate.num_images and generate.prompts (None: the default)."""

    num_images: int | None = None
    prompts: tuple[str, ...] | None = None


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
    """Quality control of generated images; every drop is counted in
    metrics/draws/draw<d>/generate.json."""

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
    # img2img / ControlNet: the real images varied. handful: the subject's personalisation
    # images (few-shot: no label beyond the handful is used); train: every train image
    sources: Literal["handful", "train"] = "handful"
    # img2img: source + (output - the VAE's round trip of the source), so that what the base
    # VAE loses of the real image (colour, detail) does not reach the generated one (img2img
    # only: refused with other modes, which have no source latents to subtract)
    vae_residual: bool = True

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
        _require(self.batch_size >= 1, "generate.batch_size", "must be >= 1")
        _require(0 < self.strength <= 1, "generate.strength", "must be in (0, 1]")
        _require(
            self.mode == "img2img" or not self.vae_residual,
            "generate.vae_residual",
            f"is true, but generate.mode is {self.mode!r}: only img2img starts from the real "
            "image's latents, so only its output differs from the source's VAE round trip by "
            "what the denoiser changed; set generate.mode=img2img or generate.vae_residual=false",
        )
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
            self.controlnet_conditioning_scale > 0 or self.mode != "controlnet",
            "generate.controlnet_conditioning_scale",
            f"is {self.controlnet_conditioning_scale}, but must be > 0 with generate.mode "
            "controlnet: the ControlNet's residuals are scaled by it, so at 0 the control map "
            "has no effect (plain txt2img at the cost of a ControlNet); set it to 1.0, or "
            "generate.mode=txt2img",
        )
        _require(
            self.controlnet_conditioning_scale >= 0,
            "generate.controlnet_conditioning_scale",
            "must be >= 0",
        )
        _require(
            self.sources == "handful" or self.mode != "txt2img",
            "generate.sources",
            f"is {self.sources!r}, but generate.mode txt2img starts from noise, not from a real "
            "image, so no source is used; set generate.mode=img2img (or controlnet), or "
            "generate.sources=handful",
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
