"""The personalisation training loop (see the package docstring) and its pieces."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler, DiffusionPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr
from safetensors.torch import load_file, save_file

from synthdet.diffusion.hashing import derive_seed
from synthdet.diffusion.loading import family_of, tokenizers_and_encoders
from synthdet.diffusion.loss_curve import StepCallback
from synthdet.params import ParamsError, PersonalizeParams
from synthdet.personalization.adapters import Trainable, restore_frozen_embeddings
from synthdet.personalization.examples import Examples, encode_tokens


def weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def make_accelerator(settings: PersonalizeParams, device: torch.device) -> Accelerator:
    """accelerate for this run: CPU processes over gloo on a CPU (also under `accelerate launch`),
    the resolved mixed precision, `gradient_accumulation_steps`."""
    return Accelerator(
        cpu=device.type == "cpu",
        mixed_precision=resolve_mixed_precision(settings.mixed_precision),
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
    )


def resolve_mixed_precision(requested: str) -> str:
    cuda = torch.cuda.is_available()
    if requested == "auto":
        if not cuda:
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp16" and not cuda:
        raise ParamsError(
            "params: 'personalize.mixed_precision' fp16 needs a CUDA GPU; use auto, no or bf16"
        )
    return requested


def make_optimizer(name: str, parameters: list, learning_rate: float) -> torch.optim.Optimizer:
    if name == "adamw":
        # One fused kernel for all (many small LoRA) tensors instead of a Python loop over them.
        return torch.optim.AdamW(parameters, lr=learning_rate, fused=True)
    try:
        import bitsandbytes
    except ImportError as exc:
        raise ParamsError(
            "params: 'personalize.optimizer' adamw_8bit needs bitsandbytes "
            "(pip install bitsandbytes) and a CUDA GPU; use adamw"
        ) from exc
    if not torch.cuda.is_available():
        raise ParamsError(
            "params: 'personalize.optimizer' adamw_8bit needs a CUDA GPU (bitsandbytes' 8-bit "
            "optimizers run on CUDA); use adamw"
        )
    return bitsandbytes.optim.AdamW8bit(parameters, lr=learning_rate)


def step_generator(seed: int, step: int, micro_step: int, process: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, step, micro_step, process, bits=64))


def draw(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """`size` example indices: without replacement while there are enough examples."""
    if size <= count:
        return torch.randperm(count, generator=generator)[:size]
    return torch.randint(0, count, (size,), generator=generator)


def sample_batch(
    instance: Examples,
    prior: Examples | None,
    batch_size: int,
    class_batch_size: int,
    generator: torch.Generator,
) -> tuple[Examples, int]:
    """`batch_size` instance examples followed by `class_batch_size` class examples; returns the
    batch and the number of instance examples in it."""
    parts = [instance.take(draw(len(instance), batch_size, generator))]
    if prior is not None and class_batch_size:
        parts.append(prior.take(draw(len(prior), class_batch_size, generator)))
    return Examples.cat(parts), batch_size


def diffusion_loss(
    unet: torch.nn.Module,
    noise_scheduler: DDPMScheduler,
    latents: torch.Tensor,
    embeddings: torch.Tensor,
    added_conditions: dict | None,
    generator: torch.Generator,
    snr_gamma: float | None,
) -> torch.Tensor:
    """Per-example noise-prediction (or v-prediction) loss, Min-SNR weighted if `snr_gamma`."""
    device = latents.device
    noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (len(latents),), generator=generator
    ).to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    v_prediction = noise_scheduler.config.prediction_type == "v_prediction"
    target = noise_scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
    prediction = unet(noisy, timesteps, embeddings, added_cond_kwargs=added_conditions).sample
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is not None:
        snr = compute_snr(noise_scheduler, timesteps)
        weights = torch.clamp(snr, max=snr_gamma) / (snr + 1 if v_prediction else snr)
        loss = loss * weights
    return loss


def batch_loss(
    batch: Examples,
    instances: int,
    *,
    unet: torch.nn.Module,
    text_encoders: Sequence[torch.nn.Module],
    noise_scheduler: DDPMScheduler,
    family: str,
    scaling_factor: float,
    shift_factor: float,
    prior_loss_weight: float,
    snr_gamma: float | None,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Instance loss + prior_loss_weight * class loss for one batch (instances first)."""
    distributions = batch.latent_distributions.to(device)
    latents = DiagonalGaussianDistribution(distributions).sample(generator)
    latents = ((latents - shift_factor) * scaling_factor).to(dtype)
    if batch.embeddings is not None:
        embeddings, pooled = batch.embeddings.to(device, dtype), batch.pooled
    else:
        embeddings, pooled = encode_tokens(text_encoders, batch.token_ids, family)
        embeddings = embeddings.to(dtype)
    added = None
    if family == "sdxl":
        added = {"text_embeds": pooled.to(device, dtype), "time_ids": batch.time_ids.to(device)}
    losses = diffusion_loss(unet, noise_scheduler, latents, embeddings, added, generator, snr_gamma)
    loss = losses[:instances].mean()
    if len(losses) > instances:
        loss = loss + prior_loss_weight * losses[instances:].mean()
    return loss


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    losses: list[float]


def _trainable_state(models: list[torch.nn.Module]) -> list[dict[str, torch.Tensor]]:
    return [
        {name: p.detach().cpu().contiguous() for name, p in m.named_parameters() if p.requires_grad}
        for m in models
    ]


def latest_checkpoint(folder: Path) -> tuple[Path, int] | None:
    found = [
        (path, int(path.name.split("-")[1]))
        for path in Path(folder).glob("checkpoint-*")
        if path.name.split("-")[1].isdigit() and (path / "complete").is_file()
    ]
    return max(found, key=lambda item: item[1]) if found else None


def train(
    pipeline: DiffusionPipeline,
    trainable: Trainable,
    settings: PersonalizeParams,
    instance: Examples,
    prior: Examples | None,
    *,
    seed: int,
    accelerator: Accelerator,
    checkpoint_dir: Path | None,
    fingerprint: str,
    on_step: StepCallback,
    stop_after: int | None = None,
) -> TrainResult:
    """Run `settings.max_train_steps` optimizer steps (each `gradient_accumulation_steps`
    micro-batches), saving a resumable state every `checkpointing_steps` into `checkpoint_dir`
    and resuming from the newest one there if it belongs to the same run (`fingerprint`).
    `stop_after` ends early after that step (to test resuming)."""
    optimizer = make_optimizer(settings.optimizer, trainable.parameters, settings.learning_rate)
    processes = accelerator.num_processes
    lr_scheduler = get_scheduler(
        settings.lr_scheduler,
        optimizer,
        num_warmup_steps=settings.lr_warmup_steps * processes,
        num_training_steps=settings.max_train_steps * processes,
    )
    prepared = accelerator.prepare(*trainable.modules, optimizer, lr_scheduler)
    modules = list(prepared[: len(trainable.modules)])
    optimizer, lr_scheduler = prepared[len(trainable.modules) :]
    loss_of = _loss_function(pipeline, modules, settings, accelerator)
    _register_trainable_hooks(accelerator)
    start = _resume(accelerator, checkpoint_dir, fingerprint)

    for module in modules:
        module.train()
    losses = []
    last = settings.max_train_steps if stop_after is None else stop_after
    for step in range(start + 1, last + 1):
        step_losses = []
        for micro in range(settings.gradient_accumulation_steps):
            generator = step_generator(seed, step, micro, accelerator.process_index)
            batch, instances = sample_batch(
                instance, prior, settings.batch_size, settings.class_batch_size, generator
            )
            with accelerator.accumulate(*modules), accelerator.autocast():
                loss = loss_of(batch, instances, generator)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable.parameters, settings.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            step_losses.append(loss.detach().item())
        if trainable.placeholder_ids:
            restore_frozen_embeddings(trainable)
        losses.append(sum(step_losses) / len(step_losses))
        on_step(step, losses[-1])
        every = settings.checkpointing_steps
        # A finished run needs no checkpoint.
        due = bool(every) and step % every == 0 and step < settings.max_train_steps
        if checkpoint_dir is not None and due:
            save_checkpoint(accelerator, Path(checkpoint_dir), step)
    for module in modules:
        module.eval()
    return TrainResult(steps=last, resumed_from=start, losses=losses)


def _loss_function(
    pipeline: DiffusionPipeline,
    modules: list[torch.nn.Module],
    settings: PersonalizeParams,
    accelerator: Accelerator,
) -> Callable[[Examples, int, torch.Generator], torch.Tensor]:
    """`batch_loss` bound to the prepared (accelerate-wrapped) UNet and text encoders."""
    by_id = {id(accelerator.unwrap_model(m)): m for m in modules}
    unet = by_id.get(id(pipeline.unet), pipeline.unet)
    text_encoders = [by_id.get(id(e), e) for _, e in tokenizers_and_encoders(pipeline)]
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    vae_config = pipeline.vae.config
    family = family_of(pipeline)
    dtype = weight_dtype(accelerator.mixed_precision)

    def loss_of(batch: Examples, instances: int, generator: torch.Generator) -> torch.Tensor:
        return batch_loss(
            batch,
            instances,
            unet=unet,
            text_encoders=text_encoders,
            noise_scheduler=noise_scheduler,
            family=family,
            scaling_factor=vae_config.scaling_factor,
            shift_factor=getattr(vae_config, "shift_factor", None) or 0.0,
            prior_loss_weight=settings.prior_loss_weight,
            snr_gamma=settings.snr_gamma,
            generator=generator,
            device=accelerator.device,
            dtype=dtype,
        )

    return loss_of


def _register_trainable_hooks(accelerator: Accelerator) -> None:
    """Checkpoints hold only the trained parameters (a LoRA checkpoint is megabytes, not the
    whole UNet)."""

    def save_hook(models, weights, output_dir):
        for index, state in enumerate(_trainable_state(models)):
            save_file(state, str(Path(output_dir) / f"trainable_{index}.safetensors"))
        weights.clear()

    def load_hook(models, input_dir):
        for index, model in enumerate(list(models)):
            state = load_file(str(Path(input_dir) / f"trainable_{index}.safetensors"))
            model.load_state_dict(state, strict=False)
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _resume(accelerator: Accelerator, checkpoint_dir: Path | None, fingerprint: str) -> int:
    """The step to continue after: the newest complete checkpoint of the same run (loaded into
    the accelerator), else 0 with the folder emptied and marked with this run's fingerprint."""
    if checkpoint_dir is None:
        return 0
    marker = Path(checkpoint_dir) / "fingerprint.txt"
    if marker.is_file() and marker.read_text() == fingerprint:
        found = latest_checkpoint(checkpoint_dir)
        if found is not None:
            accelerator.load_state(str(found[0]))
            return found[1]
    elif accelerator.is_main_process:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        Path(checkpoint_dir).mkdir(parents=True)
        marker.write_text(fingerprint)
    return 0


def save_checkpoint(accelerator: Accelerator, folder: Path, step: int) -> None:
    """Save the training state as checkpoint-<step>; keep only the newest complete one."""
    target = folder / f"checkpoint-{step}"
    accelerator.save_state(str(target))
    if accelerator.is_main_process:
        (target / "complete").write_text(str(step))
        for old in folder.glob("checkpoint-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
