"""Training the base model: cached latents and prompt embeddings, the VAE and UNet loops."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler
from torch.utils.data import DataLoader, TensorDataset

from synthdet.core.data import DataError, read_jsonl
from synthdet.diffusion.images import with_flips
from synthdet.diffusion.loss_curve import LossCurve, StepCallback
from synthdet.params import BaseParams

# Clip the gradient norm as diffusers' training examples do (max_grad_norm=1.0).
MAX_GRAD_NORM = 1.0


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
    _train_reconstruction(
        vae,
        list(vae.parameters()),
        images,
        steps=base.vae_steps,
        crop=base.vae_crop,
        learning_rate=base.vae_learning_rate,
        kl_weight=base.vae_kl_weight,
        base=base,
        generator=generator,
        on_step=on_step,
    )


def train_vae_decoder(
    vae: AutoencoderKL,
    images: torch.Tensor,
    base: BaseParams,
    *,
    steps: int,
    crop: int,
    learning_rate: float,
    generator: torch.Generator,
    on_step: StepCallback,
) -> None:
    """Fine-tune the VAE's decoder alone on pixel reconstruction (MSE), the encoder frozen.

    The latents do not change, so the UNet trained on them and the latent scaling factor stay
    valid: Stability AI's `sd-vae-ft-mse` improved SD 1.x's decoder the same way. images: (N, 3,
    H, W) floats in [-1, 1]; random `crop` px crops; `base`'s batch size and LR schedule.
    """
    decoder = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    _train_reconstruction(
        vae,
        decoder,
        images,
        steps=steps,
        crop=crop,
        learning_rate=learning_rate,
        kl_weight=0.0,  # the encoder does not train: its KL term has no gradient
        base=base,
        generator=generator,
        on_step=on_step,
    )


def _train_reconstruction(
    vae: AutoencoderKL,
    parameters: list[torch.nn.Parameter],
    images: torch.Tensor,
    *,
    steps: int,
    crop: int,
    learning_rate: float,
    kl_weight: float,
    base: BaseParams,
    generator: torch.Generator,
    on_step: StepCallback,
) -> None:
    vae.train().requires_grad_(False)
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    lr_scheduler = get_scheduler(
        base.lr_scheduler,
        optimizer,
        num_warmup_steps=base.lr_warmup_steps,
        num_training_steps=steps,
    )
    batches = endless_batches(TensorDataset(with_flips(images)), base.batch_size, generator)
    for step in range(1, steps + 1):
        (pixels,) = next(batches)
        pixels = random_crops(pixels, crop, generator).to(vae.device)
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        loss = F.mse_loss(reconstruction, pixels)
        if kl_weight:  # KL summed per latent like SD's VAE, averaged over the batch
            loss = loss + kl_weight * posterior.kl().mean()
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
    prompt: str,
    generator: torch.Generator,
    curve: LossCurve,
    *,
    from_checkpoint: bool,
    step_offset: int = 0,
) -> float:
    """Train the VAE, then the UNet on `prompt` (Params.base_prompt), on native-scale crops of
    `images`.

    images: (N, 3, H, W) floats in [-1, 1] at the detector's scale. The VAE sees random
    `base.vae_crop` px crops, the UNet random `base.unet_crop` px crops of the cached latents:
    both networks are convolutional, so they then encode and denoise whole images, and an object
    is drawn at the size in pixels it had in training. A step count of 0 keeps that network as it
    is (fine-tuning a shipped checkpoint). Returns the latent scaling factor (1 / latent std),
    also written to the VAE's config; measured again only for a new or retrained VAE.
    `from_checkpoint`: the pipeline is a trained checkpoint (`base.init`), not new weights;
    `step_offset`: steps already in `curve` (a checkpoint's earlier runs).
    """
    pipeline.text_encoder.requires_grad_(False)
    if base.vae_steps:
        train_vae(pipeline.vae, images, base, generator, curve.recorder("vae", step_offset + 1))
    # A checkpoint's UNet learned latents scaled by the checkpoint's factor: with its encoder
    # unchanged the factor stays (SD fine-tuning never re-measures it).
    keeps_scaling = from_checkpoint and not base.vae_steps
    if keeps_scaling and not base.unet_steps:
        return pipeline.vae.config.scaling_factor
    latent_distributions = encode_latent_distributions(
        pipeline.vae, with_flips(images), base.batch_size
    )
    if keeps_scaling:
        scaling_factor = pipeline.vae.config.scaling_factor
    else:
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
    class_embedding, empty_embedding = encode_prompts(pipeline, [prompt, ""])
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
        on_step=curve.recorder("unet", first_step=step_offset + base.vae_steps + 1),
        unconditional_embedding=empty_embedding,
        unconditional_probability=base.unconditional_probability,
        latent_crop=base.unet_crop // latent_downsampling(pipeline.vae),
    )
    unet.requires_grad_(False)
    return scaling_factor


def latent_downsampling(vae: AutoencoderKL) -> int:
    """How many image pixels one latent pixel spans (8 for SD's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)
