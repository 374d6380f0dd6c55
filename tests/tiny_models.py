"""Tiny, randomly initialised diffusers pipelines built from configs (no download), for tests.

They have the structure of the real families (SD 1.x/2.x, SDXL with two text encoders and
size/crop conditioning, ControlNet) at a few thousand parameters, so every code path for real
models runs on CPU in seconds. Save one with `pipeline.save_pretrained(folder)` and pass the folder
wherever a hub id is accepted.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from synthdet.diffusion.builtin import clip_text_config, sd15_noise_scheduler
from synthdet.diffusion.vocabulary import build_clip_tokenizer

SAMPLE_SIZE = 32  # pixels; the two-level VAE halves them once, so latents are 16 px


def _text_config(tokenizer, hidden_size: int, projection_dim: int | None = None) -> CLIPTextConfig:
    return clip_text_config(
        tokenizer,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=projection_dim or hidden_size,
        hidden_act="gelu",
    )


# Two UNet levels, cross-attention on the coarser one, as SD's UNet but with 2 instead of 4 levels.
UNET_LEVELS = {
    "sample_size": SAMPLE_SIZE // 2,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
}


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=SAMPLE_SIZE,
    )


def tiny_sd_pipeline(seed: int = 0, prediction_type: str = "epsilon") -> StableDiffusionPipeline:
    """SD 1.x-shaped (prediction_type='v_prediction' for the SD 2.x 768 models' objective)."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer()
    unet = UNet2DConditionModel(
        **UNET_LEVELS,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    scheduler = sd15_noise_scheduler(
        DDPMScheduler, clip_sample=False, prediction_type=prediction_type
    )
    return StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer, 32)),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL-shaped: two text encoders (the second with projection), size/crop conditioning."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer()
    hidden_1, hidden_2, time_embed_dim = 16, 16, 8
    unet = UNet2DConditionModel(
        **UNET_LEVELS,
        cross_attention_dim=hidden_1 + hidden_2,  # SDXL concatenates both encoders' states
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        transformer_layers_per_block=(1, 1),
        # pooled text embedding + 6 size/crop numbers, each embedded to time_embed_dim
        projection_class_embeddings_input_dim=hidden_2 + 6 * time_embed_dim,
        norm_num_groups=8,
    )
    scheduler = sd15_noise_scheduler(EulerDiscreteScheduler, timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer, hidden_1)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer, hidden_2)),
        tokenizer=tokenizer,
        tokenizer_2=build_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
    )


def tiny_controlnet(unet: UNet2DConditionModel, seed: int = 0) -> ControlNetModel:
    """A ControlNet matching `unet` (as ControlNetModel.from_unet builds it for training)."""
    torch.manual_seed(seed)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
