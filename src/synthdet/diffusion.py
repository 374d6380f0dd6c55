"""Stable Diffusion pieces shared by the base, personalize and generate stages.

`builtin:tiny` is an offline stand-in for Stable Diffusion 1.5: the same diffusers classes
(AutoencoderKL, UNet2DConditionModel with cross-attention, CLIPTextModel + the real CLIP BPE
tokenizer, a DDPM scheduler) at a size that trains on a CPU in minutes. Everything downstream
(LoRA training, `load_lora_weights`, generation) is the code path a real SD 1.5 model takes.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from synthdet import tracking
from synthdet.data import DataError, read_jsonl
from synthdet.errors import ModelNotAvailableError
from synthdet.params import BaseParams, ParamsError

BUILTIN_TINY = "builtin:tiny"
CLIP_CONTEXT_LENGTH = 77  # every CLIP text encoder, SD 1.5's included
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default for save_lora_weights
# Textual inversion: {placeholder: [num_vectors, dim]} per text encoder, as load_textual_inversion
# reads it (SDXL: the second file goes to text_encoder_2 / tokenizer_2).
EMBEDDINGS_NAMES = ("learned_embeds.safetensors", "learned_embeds_2.safetensors")
ADAPTER_INFO_NAME = "adapter.json"
FAMILY_PIPELINES = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
# Clip the gradient norm as diffusers' training examples do (max_grad_norm=1.0).
MAX_GRAD_NORM = 1.0

StepCallback = Callable[[int, float], None]  # (1-based step, loss)


def configure_torch() -> torch.device:
    """Use every CPU core this process may run on (or SYNTHDET_TORCH_THREADS, for a machine
    shared with other jobs, where spinning threads slow each other down); return the device."""
    threads = int(os.environ.get("SYNTHDET_TORCH_THREADS") or 0)
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- tokenizer


def _open_clip_vocabulary() -> Path:
    # find_spec locates the package without importing it (importing open_clip takes seconds).
    spec = importlib.util.find_spec("open_clip")
    path = (
        Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
        if spec and spec.submodule_search_locations
        else None
    )
    if path is None or not path.is_file():
        raise ModelNotAvailableError(
            "the CLIP BPE vocabulary (open_clip/bpe_simple_vocab_16e6.txt.gz) was not found; "
            "install open-clip-torch, which ships it"
        )
    return path


def write_clip_vocabulary(folder: Path) -> tuple[Path, Path]:
    """Write CLIP's `vocab.json` and `merges.txt` from open-clip's BPE file into `folder`.

    Same construction as OpenAI's CLIP tokenizer: 256 byte symbols, the same with the end-of-word
    marker `</w>`, one token per merge, then the two special tokens (49408 in all).
    """
    with gzip.open(_open_clip_vocabulary(), "rt", encoding="utf-8") as bpe_file:
        lines = bpe_file.read().split("\n")
    # Line 0 is a version header; CLIP uses the first 49152 - 256 - 2 merges.
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_symbols = list(bytes_to_unicode().values())
    tokens = [
        *byte_symbols,
        *(symbol + "</w>" for symbol in byte_symbols),
        *("".join(merge.split()) for merge in merges),
        "<|startoftext|>",
        "<|endoftext|>",
    ]
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def build_clip_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = write_clip_vocabulary(Path(folder))
        return CLIPTokenizer(
            str(vocab_file), str(merges_file), model_max_length=CLIP_CONTEXT_LENGTH
        )


# ---------------------------------------------------------------- builtin:tiny


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


def build_tiny_pipeline(base: BaseParams) -> StableDiffusionPipeline:
    """A randomly initialised SD-1.5-shaped pipeline with the sizes in `base`."""
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
        sample_size=base.resolution,
    )
    # Cross-attention on every level except the finest: attention there costs the most, and the
    # coarser levels are where layout and the prompt's subject are decided.
    unet_levels = len(base.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=base.resolution // 2 ** (vae_levels - 1),
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


# ---------------------------------------------------------------- loading models


def family_of(pipeline: DiffusionPipeline) -> str:
    """'sdxl' for pipelines with two text encoders and size/crop conditioning, else 'sd'."""
    return "sdxl" if getattr(pipeline, "text_encoder_2", None) is not None else "sd"


def _model_source(base_model: str, builtin_folder: Path) -> str:
    if base_model == BUILTIN_TINY:
        if not (Path(builtin_folder) / "model_index.json").is_file():
            raise ModelNotAvailableError(
                f"builtin:tiny: {builtin_folder} holds no pipeline (model_index.json); "
                "run the base stage first (dvc repro base)"
            )
        return str(builtin_folder)
    source = os.path.expanduser(base_model)
    # Hub ids contain "/" too; only an explicit path can be reported as a missing folder.
    if base_model.startswith((".", "/", "~")) and not Path(source).is_dir():
        raise ModelNotAvailableError(f"personalize.base_model: folder {base_model} not found")
    return source


def _unavailable(what: str, name: str, exc: Exception) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"{what} {name!r} cannot be loaded here ({exc}). Fix: point {what} at a local diffusers "
        f"folder (e.g. one saved with `hf download {name} --local-dir models/sd15`), or fill the "
        "Hugging Face cache while online and run with HF_HUB_OFFLINE=1, or use "
        f"personalize.base_model={BUILTIN_TINY} (trained offline by the base stage)"
    )


def load_pipeline(
    base_model: str, builtin_folder: Path, vae: str | None = None
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """Load `base_model` (`builtin:tiny` from `builtin_folder`, a local folder or a hub id) as the
    txt2img pipeline of its family, SD 1.x/2.x or SDXL, read from its model_index.json;
    `vae` replaces its VAE (e.g. an fp16-fix VAE for SDXL)."""
    source = _model_source(base_model, builtin_folder)
    try:  # hub errors are OSErrors, invalid ids ValueErrors
        index = DiffusionPipeline.load_config(source)
    except (OSError, ValueError) as exc:
        raise _unavailable("personalize.base_model", base_model, exc) from exc
    family = "sdxl" if "text_encoder_2" in index else "sd"
    # Weights from safetensors only: a .bin is a pickle, and unpickling can run code.
    extra: dict = {"use_safetensors": True}
    if family == "sd":
        extra |= {"safety_checker": None, "requires_safety_checker": False}
    if vae:
        try:
            extra["vae"] = AutoencoderKL.from_pretrained(
                os.path.expanduser(vae), use_safetensors=True
            )
        except (OSError, ValueError) as exc:
            raise _unavailable("personalize.vae", vae, exc) from exc
    try:
        pipeline = FAMILY_PIPELINES[family].from_pretrained(source, **extra)
    except (OSError, ValueError) as exc:
        raise _unavailable("personalize.base_model", base_model, exc) from exc
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def model_fingerprint(base_model: str, builtin_folder: Path) -> str | None:
    """sha256 over the files of a local model folder (`builtin:tiny` included); None for hub ids,
    whose revision the hub pins. An adapter records it, so a retrained base model is noticed."""
    source = Path(_model_source(base_model, builtin_folder))
    return folder_sha256(source) if source.is_dir() else None


def folder_sha256(folder: Path) -> str:
    """sha256 over a folder's files (relative path and content; hidden files are not part of a
    model)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_of(path)}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- training data


def load_images(paths: Sequence[Path], resolution: int) -> torch.Tensor:
    """Images resized (shorter side) and centre-cropped to `resolution`, as floats in [-1, 1]."""
    tensors = []
    for path in paths:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        scale = resolution / min(image.size)
        width, height = round(image.width * scale), round(image.height * scale)
        image = image.resize((max(width, resolution), max(height, resolution)), Image.BICUBIC)
        left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
        tensors.append(array.permute(2, 0, 1) / 127.5 - 1)
    return torch.stack(tensors)


def with_flips(images: torch.Tensor) -> torch.Tensor:
    """The images followed by their mirror images: the random-flip augmentation, precomputed."""
    return torch.cat([images, torch.flip(images, dims=[3])])


def read_captions(captions_file: Path, image_paths: Sequence[Path]) -> list[str]:
    """The caption of each image, from `{"file": ..., "caption": ...}` JSON lines."""
    by_file: dict[str, str] = {}
    for number, row in enumerate(read_jsonl(captions_file), 1):
        if not isinstance(row.get("file"), str) or not isinstance(row.get("caption"), str):
            raise DataError(
                f"{captions_file}: line {number} needs string fields 'file' and 'caption'"
            )
        if row["file"] in by_file:
            raise DataError(f"{captions_file}: line {number}: second caption for {row['file']}")
        by_file[row["file"]] = row["caption"]
    missing = [p.name for p in image_paths if p.name not in by_file]
    if missing:
        raise DataError(f"{captions_file}: no caption for {', '.join(missing)}")
    extra = sorted(set(by_file) - {p.name for p in image_paths})
    if extra:
        raise DataError(
            f"{captions_file}: captions for images that are not in the image folder "
            f"({', '.join(extra)}); captions are stale, rerun the caption stage"
        )
    return [by_file[p.name] for p in image_paths]


@torch.no_grad()
def encode_prompts(pipeline: StableDiffusionPipeline, prompts: Sequence[str]) -> torch.Tensor:
    """Text-encoder hidden states, computed once because the text encoder stays frozen."""
    tokens = pipeline.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=pipeline.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    device = pipeline.text_encoder.device
    return pipeline.text_encoder(tokens.input_ids.to(device))[0]


@torch.no_grad()
def encode_latent_distributions(
    vae: AutoencoderKL, images: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """The VAE posterior parameters (mean and log-variance) of every image, computed once."""
    return torch.cat(
        [
            vae.encode(chunk.to(vae.device)).latent_dist.parameters.cpu()
            for chunk in images.split(batch_size)
        ]
    )


def random_crops(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random `size` x `size` crop of each image."""
    height, width = images.shape[-2:]
    tops = torch.randint(0, height - size + 1, (len(images),), generator=generator).tolist()
    lefts = torch.randint(0, width - size + 1, (len(images),), generator=generator).tolist()
    return torch.stack(
        [
            image[:, y : y + size, x : x + size]
            for image, y, x in zip(images, tops, lefts, strict=True)
        ]
    )


def endless_batches(
    dataset: TensorDataset, batch_size: int, generator: torch.Generator
) -> Iterator[list[torch.Tensor]]:
    """Shuffled batches, epoch after epoch (training runs for a number of steps, not epochs)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    while True:
        yield from loader


# ---------------------------------------------------------------- training loops


def _optimise(
    loss: torch.Tensor,
    parameters: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def train_vae(
    vae: AutoencoderKL,
    images: torch.Tensor,
    base: BaseParams,
    generator: torch.Generator,
    on_step: StepCallback,
) -> None:
    """Train the autoencoder: pixel reconstruction (MSE) plus a small KL term on the latents.

    It trains on random `base.vae_crop` px crops: the VAE is convolutional, so it works on the
    full images afterwards (SD's VAE was trained at 256 px too), at a fraction of the cost.
    """
    vae.train().requires_grad_(True)
    parameters = list(vae.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=base.vae_learning_rate)
    lr_scheduler = get_scheduler(
        base.lr_scheduler,
        optimizer,
        num_warmup_steps=base.lr_warmup_steps,
        num_training_steps=base.vae_steps,
    )
    batches = endless_batches(TensorDataset(with_flips(images)), base.batch_size, generator)
    for step in range(1, base.vae_steps + 1):
        (pixels,) = next(batches)
        pixels = random_crops(pixels, base.vae_crop, generator).to(vae.device)
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        # KL summed per latent like SD's VAE, averaged over the batch, weighted small.
        loss = F.mse_loss(reconstruction, pixels) + base.vae_kl_weight * posterior.kl().mean()
        _optimise(loss, parameters, optimizer, lr_scheduler)
        on_step(step, loss.item())
    vae.eval().requires_grad_(False)


@torch.no_grad()
def latent_scaling_factor(latent_distributions: torch.Tensor) -> float:
    """1 / std of the latents: unit variance for the diffusion model (SD 1.5 measured 0.18215)."""
    mean, _ = latent_distributions.chunk(2, dim=1)
    return float(1 / mean.std())


def train_noise_prediction(
    unet: UNet2DConditionModel,
    noise_scheduler: DDPMScheduler,
    latent_distributions: torch.Tensor,
    text_embeddings: torch.Tensor,
    *,
    scaling_factor: float,
    steps: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    on_step: StepCallback,
    unconditional_embedding: torch.Tensor | None = None,
    unconditional_probability: float = 0.0,
    latent_crop: int | None = None,
) -> None:
    """The standard SD objective: predict the noise added to latents at a random timestep.

    Trains whatever parameters of `unet` require grad (all of them for pretraining, the LoRA
    layers for personalisation). Row i of `latent_distributions` is conditioned on row i of
    `text_embeddings`, or, with `unconditional_probability`, on `unconditional_embedding` (the
    empty prompt) so that classifier-free guidance has an unconditional prediction to work with.
    `latent_crop`: train on random crops of this many latent pixels (the UNet is convolutional,
    so it then denoises whole images: the native-scale crops of the `base` stage).
    """
    parameters = [p for p in unet.parameters() if p.requires_grad]
    unet.train()
    batches = endless_batches(
        TensorDataset(latent_distributions, text_embeddings), batch_size, generator
    )
    device = unet.device
    for step in range(1, steps + 1):
        distributions, conditions = next(batches)
        if latent_crop is not None:
            distributions = random_crops(distributions, latent_crop, generator)
        distributions, conditions = distributions.to(device), conditions.to(device)
        if unconditional_embedding is not None:
            dropped = torch.rand(len(conditions), generator=generator) < unconditional_probability
            conditions = torch.where(
                dropped.to(device)[:, None, None], unconditional_embedding.to(device), conditions
            )
        latents = DiagonalGaussianDistribution(distributions).sample(generator) * scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (len(latents),), generator=generator
        ).to(device)
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        prediction = unet(noisy_latents, timesteps, conditions).sample
        loss = F.mse_loss(prediction.float(), target.float())
        _optimise(loss, parameters, optimizer, lr_scheduler)
        on_step(step, loss.item())
    unet.eval()


def pretrain(
    pipeline: StableDiffusionPipeline,
    images: torch.Tensor,
    base: BaseParams,
    generator: torch.Generator,
    curve: LossCurve,
) -> float:
    """Train the VAE, then the UNet on `base.class_prompt`, on native-scale crops of `images`.

    images: (N, 3, H, W) floats in [-1, 1] at the detector's scale. The VAE sees random
    `base.vae_crop` px crops, the UNet random `base.unet_crop` px crops of the cached latents:
    both networks are convolutional, so they then encode and denoise whole images, and an object
    is drawn at the size in pixels it had in training. A step count of 0 keeps that network as it
    is (fine-tuning a shipped checkpoint). Returns the latent scaling factor (1 / latent std),
    also written to the VAE's config.
    """
    pipeline.text_encoder.requires_grad_(False)
    if base.vae_steps:
        train_vae(pipeline.vae, images, base, generator, curve.recorder("vae"))
    latent_distributions = encode_latent_distributions(
        pipeline.vae, with_flips(images), base.batch_size
    )
    scaling_factor = latent_scaling_factor(latent_distributions)
    pipeline.vae.register_to_config(scaling_factor=scaling_factor)
    if not base.unet_steps:
        return scaling_factor
    unet = pipeline.unet
    unet.requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=base.unet_learning_rate)
    lr_scheduler = get_scheduler(
        base.lr_scheduler,
        optimizer,
        num_warmup_steps=base.lr_warmup_steps,
        num_training_steps=base.unet_steps,
    )
    class_embedding, empty_embedding = encode_prompts(pipeline, [base.class_prompt, ""])
    train_noise_prediction(
        unet,
        pipeline.scheduler,
        latent_distributions,
        class_embedding.expand(len(latent_distributions), -1, -1),
        scaling_factor=scaling_factor,
        steps=base.unet_steps,
        batch_size=base.batch_size,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        generator=generator,
        on_step=curve.recorder("unet", first_step=base.vae_steps + 1),
        unconditional_embedding=empty_embedding,
        unconditional_probability=base.unconditional_probability,
        latent_crop=base.unet_crop // latent_downsampling(pipeline.vae),
    )
    unet.requires_grad_(False)
    return scaling_factor


def latent_downsampling(vae: AutoencoderKL) -> int:
    """How many image pixels one latent pixel spans (8 for SD's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


# ---------------------------------------------------------------- files


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class LossCurve:
    """Per-step losses for the TSV plot; MLflow gets the mean of every `log_every` steps.

    One MLflow call per step would cost about as much as a training step of the tiny model.
    """

    def __init__(
        self,
        run: tracking.StageRun | None,
        log_every: int = 10,
        on_step: Callable[[int, str, float], None] | None = None,
    ) -> None:
        """`run`: the MLflow run (None: no MLflow, as in the checkpoint recipe); `on_step` is
        called with (curve step, phase, loss) after every step, e.g. for progress and saving."""
        self.run, self.log_every, self.on_step = run, log_every, on_step
        self.rows: list[tuple[int, str, float]] = []

    def recorder(self, phase: str, first_step: int = 1) -> StepCallback:
        """A training-loop callback that numbers its steps from `first_step` in the curve."""

        def on_step(step: int, loss: float) -> None:
            self.rows.append((first_step + step - 1, phase, loss))
            if self.on_step is not None:
                self.on_step(first_step + step - 1, phase, loss)
            if self.run is not None and step % self.log_every == 0:
                window = [row[2] for row in self.rows[-self.log_every :]]
                self.run.log_metrics(
                    {f"{phase}_loss": sum(window) / len(window)}, step=first_step + step - 1
                )

        return on_step

    def _tail_mean(self, losses: list[float]) -> float:
        # Mean of 10% of the steps: single diffusion losses are very noisy.
        tail = losses[-max(1, len(losses) // 10) :]
        return sum(tail) / len(tail)

    def initial(self, phase: str) -> float:
        """Mean loss of the first 10% of the phase's steps."""
        return self._tail_mean(self.losses(phase)[::-1])

    def final(self, phase: str) -> float | None:
        """Mean loss of the last 10% of the phase's steps (None: the phase did not train)."""
        losses = self.losses(phase)
        return self._tail_mean(losses) if losses else None

    def losses(self, phase: str) -> list[float]:
        return [loss for _, row_phase, loss in self.rows if row_phase == phase]

    def tsv(self) -> str:
        lines = ["step\tphase\tloss", *(f"{s}\t{p}\t{loss:.6f}" for s, p, loss in self.rows)]
        return "\n".join(lines) + "\n"


def files_sha256(folder: Path, files: Sequence[str]) -> str:
    """One hash over several files (relative paths and contents), e.g. all weights of an adapter."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{sha256_of(Path(folder) / name)}\n".encode())
    return digest.hexdigest()


def read_adapter_info(adapter_folder: Path) -> dict:
    """The subject's `adapter.json`, after checking its weight files match the recorded sha256.

    Keys: subject, identifier (the token that names the subject in prompts: 'sks', or the
    textual-inversion placeholder '<sks>'), class_noun, instance_prompt, method, family ('sd' or
    'sdxl'), pipeline_class, base_model, base_fingerprint, vae, weight_files, sha256, and the
    training settings.
    """
    info_file = Path(adapter_folder) / ADAPTER_INFO_NAME
    if not info_file.is_file():
        raise DataError(f"{adapter_folder}: no {ADAPTER_INFO_NAME}; run the personalize stage")
    info = json.loads(info_file.read_text())
    files = info.get("weight_files") or []
    missing = [name for name in files if not (Path(adapter_folder) / name).is_file()]
    if not files or missing or files_sha256(adapter_folder, files) != info.get("sha256"):
        raise DataError(
            f"{adapter_folder}: weight files missing ({', '.join(missing) or 'none listed'}) or "
            f"not matching the sha256 in {info_file}; rerun the personalize stage"
        )
    return info


TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def _lora_layers(weights: Path) -> dict[str, int]:
    """LoRA layers per component ('unet', 'text_encoder', ...) of a diffusers LoRA file."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        keys = list(handle.keys())
    counts: dict[str, int] = {}
    for key in keys:
        # the down matrix of a LoRA layer, in peft's and diffusers' key formats
        if any(part in key for part in ("lora_A.", "lora.down.", "lora_down.", "_layer.down.")):
            component = key.split(".", 1)[0]
            counts[component] = counts.get(component, 0) + 1
    return counts


@contextlib.contextmanager
def _expected_missing_lora(components: Sequence[str]) -> Iterator[None]:
    """Silence diffusers' "No LoRA keys associated to ... found with the prefix='<component>'"
    for components the adapter has no LoRA for by design (a UNet-only LoRA's text encoders):
    users read that line as "my LoRA did not load". Any other such line still shows."""

    def keep(record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return "No LoRA keys associated to" not in text or not any(
            f"prefix='{name}'" in text for name in components
        )

    loggers = [
        logging.getLogger(f"diffusers.loaders.{name}")
        for name in ("lora_base", "peft", "lora_pipeline")
    ]
    for logger in loggers:
        logger.addFilter(keep)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(keep)


def apply_adapter(pipeline: DiffusionPipeline, adapter_folder: Path, info: dict) -> str:
    """Put a personalize output into `pipeline` with diffusers' own loaders; return what was
    loaded, in words ('UNet LoRA (32 layers); no text-encoder LoRA')."""
    folder = Path(adapter_folder)
    method = info["method"]
    if method in ("lora", "dreambooth_lora"):
        layers = _lora_layers(folder / LORA_WEIGHT_NAME)
        encoders = [name for name in TEXT_ENCODERS if getattr(pipeline, name, None) is not None]
        with _expected_missing_lora([name for name in encoders if not layers.get(name)]):
            pipeline.load_lora_weights(str(folder), weight_name=LORA_WEIGHT_NAME)
        parts = [f"UNet LoRA ({layers.get('unet', 0)} layers)"]
        for name in encoders:
            label = name.replace("_", "-")
            parts.append(
                f"{label} LoRA ({layers[name]} layers)" if layers.get(name) else f"no {label} LoRA"
            )
        return "; ".join(parts)
    if method == "textual_inversion":
        encoders = [(pipeline.text_encoder, pipeline.tokenizer)]
        if info["family"] == "sdxl":
            encoders.append((pipeline.text_encoder_2, pipeline.tokenizer_2))
        for name, (text_encoder, tokenizer) in zip(EMBEDDINGS_NAMES, encoders, strict=False):
            pipeline.load_textual_inversion(
                str(folder),
                weight_name=name,
                token=info["identifier"],
                text_encoder=text_encoder,
                tokenizer=tokenizer,
            )
        vectors = len(pipeline.maybe_convert_prompt(info["identifier"], pipeline.tokenizer).split())
        names = " and ".join(TEXT_ENCODERS[: len(encoders)]).replace("_", "-")
        return (
            f"textual-inversion embedding {info['identifier']} ({vectors} vectors) in {names}; "
            "UNet and text encoders unchanged"
        )
    if method == "dreambooth":
        dtype = pipeline.unet.dtype
        pipeline.unet = UNet2DConditionModel.from_pretrained(
            folder / "unet", torch_dtype=dtype, use_safetensors=True
        )
        for name in ("text_encoder", "text_encoder_2"):
            if (folder / name).is_dir():
                model_class = type(getattr(pipeline, name))
                setattr(
                    pipeline,
                    name,
                    model_class.from_pretrained(folder / name, dtype=dtype, use_safetensors=True),
                )
        tuned = [name for name in TEXT_ENCODERS if (folder / name).is_dir()]
        return "fine-tuned UNet; " + (
            f"fine-tuned {' and '.join(tuned)}".replace("_", "-") if tuned else "base text encoder"
        )
    raise DataError(f"{folder}: unknown personalisation method {method!r} in adapter.json")


def load_personalized_pipeline(
    adapter_folder: Path, builtin_folder: Path, base_model: str | None = None
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """The txt2img pipeline of the adapter's family with the subject's adapter applied.

    Refuses an adapter trained on another base model: another `base_model` name than the caller
    expects, or a `builtin:tiny` / local folder whose files changed since training.
    """
    info = read_adapter_info(adapter_folder)
    if base_model is not None and info["base_model"] != base_model:
        raise DataError(
            f"{adapter_folder}: the adapter was trained on {info['base_model']!r}, but "
            f"personalize.base_model is {base_model!r}; rerun the personalize stage"
        )
    recorded = info.get("base_fingerprint")
    if recorded is not None:
        current = model_fingerprint(info["base_model"], builtin_folder)
        if current != recorded:
            where = builtin_folder if info["base_model"] == BUILTIN_TINY else info["base_model"]
            raise DataError(
                f"{adapter_folder}: the adapter was trained on {info['base_model']!r} with "
                f"fingerprint {recorded[:12]}, but {where} now holds {str(current)[:12]} (the base "
                "model changed); rerun the personalize stage"
            )
    pipeline = load_pipeline(info["base_model"], builtin_folder, vae=info.get("vae"))
    if family_of(pipeline) != info["family"]:
        raise DataError(
            f"{adapter_folder}: adapter family {info['family']!r} does not match the base model "
            f"({family_of(pipeline)!r}); rerun the personalize stage"
        )
    loaded = apply_adapter(pipeline, adapter_folder, info)
    # One line of our own instead of diffusers' per-component notices.
    print(f"loaded {adapter_folder} ({info['method']}): {loaded}", file=sys.stderr, flush=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def image_seed(seed: int, index: int) -> int:
    """A well-mixed per-image seed from (shared.seed, image index), independent of batching."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint32)[0])
