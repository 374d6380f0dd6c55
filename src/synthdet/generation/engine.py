"""The engine: a personalised pipeline set up for fast, seeded, batched generation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import ControlNetModel
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image
from torch import Tensor, nn

from synthdet.core.data import DataError
from synthdet.core.errors import ModelNotAvailableError
from synthdet.diffusion.images import fit_square
from synthdet.diffusion.loading import family_of
from synthdet.diffusion.vocabulary import text_seen
from synthdet.generation.modes import MODES, guided
from synthdet.params import GenerateParams

SCHEDULERS = {
    "dpm_solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm_solver++_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
}


def load_controlnet(model: str, device: torch.device | str = "cpu") -> nn.Module:
    """A ControlNetModel from a hub id or a local folder (SD 1.x and SDXL ControlNets alike)."""
    source = os.path.expanduser(model)
    try:
        return ControlNetModel.from_pretrained(source).to(device)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(
            f"generate.controlnet_model {model!r} cannot be loaded here ({exc}); point it at a "
            "local diffusers ControlNet folder, or fill the Hugging Face cache while online and "
            "run with HF_HUB_OFFLINE=1"
        ) from exc


def _fuse_adapters(pipeline: Any) -> None:
    """Merge loaded LoRA adapters into the weights: same model, no per-layer LoRA overhead."""
    try:
        adapters = pipeline.get_list_adapters() if hasattr(pipeline, "get_list_adapters") else {}
    except (ValueError, AttributeError):
        adapters = {}
    if any(adapters.values()):
        pipeline.fuse_lora()
        pipeline.unload_lora_weights()


class Engine:
    """A personalised pipeline set up for fast, seeded, batched generation in one mode, of
    square `resolution` px images (shared.resolution)."""

    def __init__(
        self,
        pipeline: Any,
        settings: GenerateParams,
        resolution: int,
        device: torch.device | str = "cpu",
        controlnet: nn.Module | None = None,
    ) -> None:
        self.settings = settings
        self.resolution = resolution
        self.device = torch.device(device)
        self.family = family_of(pipeline)
        self.mode = MODES[settings.mode]
        dtype = getattr(torch, settings.dtype)
        if dtype == torch.float16 and self.device.type == "cpu":
            raise DataError("generate.dtype=float16 needs a GPU; use float32 or bfloat16 on CPU")
        _fuse_adapters(pipeline)
        pipeline = self.mode.pipeline(pipeline, self.family, controlnet)
        if settings.scheduler != "model":
            name, options = SCHEDULERS[settings.scheduler]
            pipeline.scheduler = getattr(diffusers, name).from_config(
                pipeline.scheduler.config, **options
            )
        pipeline.to(self.device)
        if dtype != torch.float32:
            pipeline.to(dtype=dtype)
        networks = [pipeline.unet, pipeline.vae, getattr(pipeline, "controlnet", None)]
        for network in networks:
            if network is not None and hasattr(network, "set_attn_processor"):
                network.set_attn_processor(AttnProcessor2_0())  # SDPA
            if network is not None and settings.channels_last:
                network.to(memory_format=torch.channels_last)
        if settings.compile:
            pipeline.unet = torch.compile(pipeline.unet)
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline = pipeline
        self._embeddings: dict[str, tuple[Tensor, ...]] = {}
        self._conditions: dict[Path, Image.Image] = {}
        self._round_trips: dict[Path, np.ndarray] = {}

    @property
    def guided(self) -> bool:
        return guided(self.settings)

    def read_prompt(self, prompt: str) -> tuple[str, int, int]:
        """(the text the text encoder reads of `prompt`, its length in tokens, the encoder's
        limit): synthdet.diffusion.vocabulary.text_seen."""
        return text_seen(self.pipeline, prompt)

    def embed(self, prompt: str) -> tuple[Tensor, ...]:
        """Prompt and negative-prompt embeddings (and pooled ones for SDXL), once per prompt."""
        if prompt not in self._embeddings:
            common = {
                "device": self.device,
                "num_images_per_prompt": 1,
                "do_classifier_free_guidance": self.guided,
                "negative_prompt": self.settings.negative_prompt,
            }
            with torch.inference_mode():
                if self.family == "sdxl":
                    encoded = self.pipeline.encode_prompt(prompt=prompt, **common)
                else:
                    encoded = self.pipeline.encode_prompt(prompt, **common)
            self._embeddings[prompt] = tuple(encoded)
        return self._embeddings[prompt]

    def _condition(self, source: Path) -> Image.Image:
        """The real image at generation size (img2img) or its control map (ControlNet)."""
        if source not in self._conditions:
            with Image.open(source) as opened:
                image = fit_square(opened, self.resolution)
            image = self.mode.condition(image, self.settings)
            self._conditions[source] = image
        return self._conditions[source]

    def _round_trip(self, source: Path) -> np.ndarray:
        """The real image at generation size encoded and decoded by the pipeline's VAE
        (posterior mode), float (H, W, 3) in [0, 1]: what img2img starts from, seen in pixels."""
        if source not in self._round_trips:
            vae, processor = self.pipeline.vae, self.pipeline.image_processor
            pixels = processor.preprocess(self._condition(source)).to(self.device, vae.dtype)
            with torch.inference_mode():
                decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
            self._round_trips[source] = processor.postprocess(decoded, output_type="np")[0]
        return self._round_trips[source]

    def _vae_residual(self, images: np.ndarray, sources: Sequence[Path]) -> np.ndarray:
        """`generate.vae_residual`: each source + (its image - the source's VAE round trip),
        float (N, H, W, 3) in [0, 1] unclipped: the denoiser's change applied to the real pixels,
        so a base VAE that shifts colours (measured: the generated objects' mean colour follows
        its round trip, docs/generation.md) or blurs does not pass that on."""
        real = np.stack([np.asarray(self._condition(p), dtype=np.float32) / 255 for p in sources])
        round_trips = np.stack([self._round_trip(p) for p in sources])
        return real + images - round_trips

    def __call__(
        self, prompts: Sequence[str], seeds: Sequence[int], sources: Sequence[Path | None] = ()
    ) -> tuple[np.ndarray, list[bool]]:
        """uint8 images (N, H, W, 3) and the safety checker's flags, one call for the batch."""
        s = self.settings
        embedded = [self.embed(prompt) for prompt in prompts]
        names = (
            ["prompt_embeds", "negative_prompt_embeds"]
            if self.family == "sd"
            else [
                "prompt_embeds",
                "negative_prompt_embeds",
                "pooled_prompt_embeds",
                "negative_pooled_prompt_embeds",
            ]
        )
        kwargs: dict[str, Any] = {}
        for position, name in enumerate(names):
            parts = [e[position] for e in embedded]
            if all(part is not None for part in parts):
                kwargs[name] = torch.cat(parts)
        kwargs.update(
            num_inference_steps=s.num_inference_steps,
            guidance_scale=s.guidance_scale,
            # CPU generators: the same noise on any device and in any process.
            generator=[torch.Generator().manual_seed(seed) for seed in seeds],
            output_type="np",
        )
        conditions = [self._condition(p) for p in sources] if self.mode.uses_source else []
        kwargs.update(self.mode.inputs(s, conditions, self.resolution))
        with torch.inference_mode():
            output = self.pipeline(**kwargs)
        images = output.images
        if s.vae_residual:
            images = self._vae_residual(images, sources)
        images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
        flags = getattr(output, "nsfw_content_detected", None) or [False] * len(images)
        return images, [bool(flag) for flag in flags]
