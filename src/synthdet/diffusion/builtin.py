"""`builtin:tiny`: an offline stand-in for Stable Diffusion 1.5.

The same diffusers classes (AutoencoderKL, UNet2DConditionModel with cross-attention,
CLIPTextModel + the real CLIP BPE tokenizer, a DDPM scheduler) at a size that trains on a CPU in
minutes, built from random weights or from a shipped domain checkpoint (`builtin:orchard`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from synthdet.core.errors import ModelNotAvailableError
from synthdet.diffusion.vocabulary import CLIP_CONTEXT_LENGTH, build_clip_tokenizer
from synthdet.params import BaseParams, ParamsError

BUILTIN_TINY = "builtin:tiny"


def _norm_groups(channels: Sequence[int]) -> int:
    # GroupNorm needs a group count dividing every channel width; SD uses 32 where it can.
    return math.gcd(32, *channels)


def clip_text_config(tokenizer: CLIPTokenizer, **sizes: Any) -> CLIPTextConfig:
    """A CLIP text encoder config for `tokenizer` (vocabulary, special tokens, 77 positions) with
    the given sizes (hidden_size, num_hidden_layers, ...)."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=CLIP_CONTEXT_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )


def sd15_noise_scheduler(scheduler_class: type, **overrides: Any) -> Any:
    """SD 1.5's noise schedule (steps_offset as SD 1.5, so pipelines do not warn)."""
    return scheduler_class(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        **overrides,
    )


def build_tiny_pipeline(base: BaseParams, resolution: int) -> StableDiffusionPipeline:
    """A randomly initialised SD-1.5-shaped pipeline with the sizes in `base`, for images of
    `resolution` px (shared.resolution; the networks' sample_size)."""
    tokenizer = build_clip_tokenizer()
    text_encoder = CLIPTextModel(
        clip_text_config(
            tokenizer,
            hidden_size=base.text_hidden_size,
            intermediate_size=4 * base.text_hidden_size,
            num_hidden_layers=base.text_layers,
            num_attention_heads=max(1, base.text_hidden_size // 16),
        )
    )
    vae_levels = len(base.vae_channels)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * vae_levels,
        up_block_types=("UpDecoderBlock2D",) * vae_levels,
        block_out_channels=base.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=_norm_groups(base.vae_channels),
        sample_size=resolution,
    )
    # Cross-attention on every level except the finest: attention there costs the most, and the
    # coarser levels are where layout and the prompt's subject are decided.
    unet_levels = len(base.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=resolution // 2 ** (vae_levels - 1),
        in_channels=4,
        out_channels=4,
        block_out_channels=base.unet_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (unet_levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (unet_levels - 1) + ("UpBlock2D",),
        cross_attention_dim=base.text_hidden_size,
        attention_head_dim=8,
        norm_num_groups=_norm_groups(base.unet_channels),
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd15_noise_scheduler(DDPMScheduler, clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def load_checkpoint(name: str, checkpoints: Path, base: BaseParams) -> StableDiffusionPipeline:
    """A shipped checkpoint (`builtin:orchard` -> `checkpoints/orchard`, made by
    synthdet.pretrain), checked against the architecture that `base` describes.

    Raises ModelNotAvailableError if the folder holds no pipeline, ParamsError naming the `base`
    keys whose sizes differ from the checkpoint's (they would otherwise be silently ignored).
    """
    folder = Path(checkpoints) / name.split(":", 1)[1]
    if not (folder / "model_index.json").is_file():
        raise ModelNotAvailableError(
            f"base.init: {name}: {folder} holds no pipeline (model_index.json); restore it with "
            "`git checkout -- models/builtin` or set base.init: null to train from scratch"
        )
    pipeline = StableDiffusionPipeline.from_pretrained(
        folder, use_safetensors=True, safety_checker=None, requires_safety_checker=False
    )
    found = {
        "vae_channels": tuple(pipeline.vae.config.block_out_channels),
        "unet_channels": tuple(pipeline.unet.config.block_out_channels),
        "text_hidden_size": pipeline.text_encoder.config.hidden_size,
        "text_layers": pipeline.text_encoder.config.num_hidden_layers,
    }
    wrong = [
        f"base.{k}={getattr(base, k)} (checkpoint: {v})"
        for k, v in found.items()
        if getattr(base, k) != v
    ]
    if wrong:
        raise ParamsError(
            f"params: base.init={name} has another architecture: {', '.join(wrong)}; use the "
            "checkpoint's sizes or set base.init: null to train from scratch"
        )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
