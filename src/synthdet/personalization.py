"""Personalisation training: LoRA, DreamBooth, DreamBooth-LoRA and textual inversion.

One engine for SD 1.x/2.x (epsilon or v-prediction) and SDXL (two text encoders, size/crop
conditioning). What does not change during training is computed once: the VAE latent
distributions of the instance and class images (flipped copies included) and, when no text
encoder trains, the prompt embeddings. The reference recipe (diffusers' example scripts) encodes
both again at every step; `benchmarks/personalize.py` measures the difference.

accelerate handles the device, mixed precision, gradient accumulation, multi-GPU
(`accelerate launch`) and the resumable checkpoints; peft the LoRA layers; diffusers the noise
schedule, Min-SNR weighting, `cast_training_params` and the diffusers-native output files.
Batches, noise and timesteps of step k come from a generator seeded with (seed, k, process), so a
resumed run draws exactly what an uninterrupted one does.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler, DiffusionPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params, compute_snr
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file, save_file

from synthdet import diffusion
from synthdet.params import ParamsError, PersonalizeParams

DREAMBOOTH_METHODS = ("dreambooth", "dreambooth_lora")
StepCallback = Callable[[int, float], None]


# ---------------------------------------------------------------- examples


def load_images_with_crops(
    paths: Sequence[Path], resolution: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images resized (shorter side) and centre-cropped to `resolution` in [-1, 1], with SDXL's
    size/crop conditioning per image: (original height, width, crop top, left, target h, w)."""
    pixels = diffusion.load_images(paths, resolution)
    conditions = []
    for path in paths:
        with Image.open(path) as image:
            width, height = image.size
        scale = resolution / min(width, height)
        resized = (max(round(width * scale), resolution), max(round(height * scale), resolution))
        top, left = (resized[1] - resolution) // 2, (resized[0] - resolution) // 2
        conditions.append((height, width, top, left, resolution, resolution))
    return pixels, torch.tensor(conditions, dtype=torch.float32)


def flip_conditions(conditions: torch.Tensor, resolution: int) -> torch.Tensor:
    """Size/crop conditions of the mirrored images (the crop's left edge mirrors too)."""
    flipped = conditions.clone()
    resized_width = conditions[:, 1] * resolution / conditions[:, :2].min(dim=1).values
    flipped[:, 3] = (resized_width.round() - resolution - conditions[:, 3]).clamp(min=0)
    return torch.cat([conditions, flipped])


@dataclass
class Examples:
    """Training examples with what is cached: latent distributions, and prompt embeddings
    (None while a text encoder trains; then the token ids are encoded every step)."""

    latent_distributions: torch.Tensor  # (n, 2 * latent channels, h, w): mean and log-variance
    time_ids: torch.Tensor  # (n, 6) SDXL size/crop conditioning (unused by SD)
    token_ids: list[torch.Tensor]  # per text encoder, (n, 77)
    embeddings: torch.Tensor | None = None  # (n, 77, dim)
    pooled: torch.Tensor | None = None  # (n, dim) SDXL pooled text embedding

    def __len__(self) -> int:
        return len(self.latent_distributions)

    def take(self, index: torch.Tensor) -> Examples:
        return Examples(
            self.latent_distributions[index],
            self.time_ids[index],
            [ids[index] for ids in self.token_ids],
            None if self.embeddings is None else self.embeddings[index],
            None if self.pooled is None else self.pooled[index],
        )

    @staticmethod
    def cat(parts: Sequence[Examples]) -> Examples:
        def joined(values):
            return None if values[0] is None else torch.cat(values)

        return Examples(
            torch.cat([p.latent_distributions for p in parts]),
            torch.cat([p.time_ids for p in parts]),
            [torch.cat(ids) for ids in zip(*(p.token_ids for p in parts), strict=True)],
            joined([p.embeddings for p in parts]),
            joined([p.pooled for p in parts]),
        )


def tokenizers_and_encoders(pipeline: DiffusionPipeline) -> list[tuple]:
    pairs = [(pipeline.tokenizer, pipeline.text_encoder)]
    if diffusion.family_of(pipeline) == "sdxl":
        pairs.append((pipeline.tokenizer_2, pipeline.text_encoder_2))
    return pairs


def tokenize(pipeline: DiffusionPipeline, prompts: Sequence[str]) -> list[torch.Tensor]:
    """Token ids per tokenizer; multi-vector placeholders are expanded ('<sks>' -> '<sks>
    <sks>_1 ...') exactly as the pipeline does at inference, so every vector trains."""
    ids = []
    for tokenizer, _ in tokenizers_and_encoders(pipeline):
        expanded = pipeline.maybe_convert_prompt(list(prompts), tokenizer)
        ids.append(
            tokenizer(
                expanded,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
        )
    return ids


def encode_tokens(
    text_encoders: Sequence[torch.nn.Module], token_ids: Sequence[torch.Tensor], family: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompt embeddings as the pipelines compute them: SD the last hidden state, SDXL the
    penultimate hidden states of both encoders side by side plus the pooled projection."""
    if family == "sd":
        encoder = text_encoders[0]
        return encoder(token_ids[0].to(encoder.device))[0], None
    states, pooled = [], None
    for encoder, ids in zip(text_encoders, token_ids, strict=True):
        output = encoder(ids.to(encoder.device), output_hidden_states=True)
        states.append(output.hidden_states[-2])
        pooled = output[0]  # text_embeds of CLIPTextModelWithProjection (the last encoder)
    return torch.cat(states, dim=-1), pooled


@torch.no_grad()
def make_examples(
    pipeline: DiffusionPipeline,
    image_paths: Sequence[Path],
    prompts: Sequence[str],
    resolution: int,
    cache_text: bool,
    batch_size: int = 8,
) -> Examples:
    """Examples of the images and their mirror images (same prompt), latents encoded once."""
    pixels, conditions = load_images_with_crops(image_paths, resolution)
    vae = pipeline.vae
    latents = diffusion.encode_latent_distributions(
        vae, diffusion.with_flips(pixels).to(vae.dtype), batch_size
    ).float()
    prompts = list(prompts) * 2
    examples = Examples(
        latents, flip_conditions(conditions, resolution), tokenize(pipeline, prompts)
    )
    if cache_text:
        encoders = [encoder for _, encoder in tokenizers_and_encoders(pipeline)]
        embeddings, pooled = encode_tokens(encoders, examples.token_ids, family_of(pipeline))
        examples.embeddings = embeddings.float().cpu()
        examples.pooled = None if pooled is None else pooled.float().cpu()
    return examples


def family_of(pipeline: DiffusionPipeline) -> str:
    return diffusion.family_of(pipeline)


# ---------------------------------------------------------------- methods


@dataclass
class Trainable:
    """What a method trains: modules handed to accelerate and the parameters optimised."""

    modules: list[torch.nn.Module]
    parameters: list[torch.nn.Parameter]
    text_trains: bool
    placeholder_ids: list[list[int]] = field(default_factory=list)  # per text encoder
    frozen_embeddings: list[torch.Tensor] = field(default_factory=list)


def weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


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


def initializer_token(settings: PersonalizeParams, class_noun: str) -> str:
    return settings.textual_inversion.initializer_token or class_noun.split()[-1]


def setup_method(
    pipeline: DiffusionPipeline,
    settings: PersonalizeParams,
    placeholder: str,
    class_noun: str,
    dtype: torch.dtype,
) -> Trainable:
    """Freeze the pipeline and make trainable what `settings.method` trains."""
    method = settings.method
    pairs = tokenizers_and_encoders(pipeline)
    for module in (pipeline.unet, pipeline.vae, *(encoder for _, encoder in pairs)):
        module.requires_grad_(False)
    pipeline.vae.to(dtype=torch.float32)  # latents are encoded once, in full precision
    unet = pipeline.unet
    if method == "textual_inversion":
        unet.to(dtype=dtype)
        return _setup_textual_inversion(pipeline, settings, placeholder, class_noun, dtype)
    train_text = settings.train_text_encoder
    if method == "dreambooth":
        unet.requires_grad_(True)
        modules = [unet]
        if train_text:
            for _, encoder in pairs:
                encoder.requires_grad_(True)
                modules.append(encoder)
        for _, encoder in pairs:
            if not train_text:
                encoder.to(dtype=dtype)
    else:  # lora, dreambooth_lora: frozen weights in the compute dtype, LoRA weights in fp32
        for module in (unet, *(encoder for _, encoder in pairs)):
            module.to(dtype=dtype)
        try:
            unet.add_adapter(LoraConfig(**settings.lora))
        except (TypeError, ValueError) as exc:
            raise ParamsError(
                f"params: 'personalize.lora' is not a valid LoraConfig: {exc}"
            ) from exc
        modules = [unet]
        if train_text:
            text_config = {
                **settings.lora,
                "target_modules": list(settings.text_encoder_lora_modules),
            }
            for _, encoder in pairs:
                encoder.add_adapter(LoraConfig(**text_config))
                modules.append(encoder)
        cast_training_params(modules, dtype=torch.float32)
    if settings.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if train_text:
            for _, encoder in pairs:
                encoder.gradient_checkpointing_enable()
    parameters = [p for m in modules for p in m.parameters() if p.requires_grad]
    return Trainable(modules, parameters, text_trains=train_text)


def _setup_textual_inversion(
    pipeline: DiffusionPipeline,
    settings: PersonalizeParams,
    placeholder: str,
    class_noun: str,
    dtype: torch.dtype,
) -> Trainable:
    """Add `placeholder` (+ `placeholder_1`, ... for several vectors) to every tokenizer, start
    each vector at the initializer token's embedding; only the embedding table trains and the
    rows of all other tokens are restored after every step."""
    count = settings.textual_inversion.num_vectors
    tokens = [placeholder] + [f"{placeholder}_{i}" for i in range(1, count)]
    initializer = initializer_token(settings, class_noun)
    trainable = Trainable([], [], text_trains=True)
    for tokenizer, encoder in tokenizers_and_encoders(pipeline):
        added = tokenizer.add_tokens(tokens)
        if added != count:
            raise ParamsError(
                f"params: the placeholder {placeholder!r} (from the subject's identifier) is "
                "already a token of the tokenizer; textual inversion needs a new token"
            )
        initializer_ids = tokenizer.encode(initializer, add_special_tokens=False)
        if len(initializer_ids) != 1:
            raise ParamsError(
                f"params: 'personalize.textual_inversion.initializer_token' {initializer!r} "
                f"must be a single token (it is {len(initializer_ids)})"
            )
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        ids = tokenizer.convert_tokens_to_ids(tokens)
        embeddings = encoder.get_input_embeddings().weight
        with torch.no_grad():
            embeddings[ids] = embeddings[initializer_ids[0]].clone()
        encoder.to(dtype=dtype)
        embeddings = encoder.get_input_embeddings().weight
        embeddings.data = embeddings.data.float()  # the trained table stays fp32
        embeddings.requires_grad_(True)
        trainable.modules.append(encoder)
        trainable.parameters.append(embeddings)
        trainable.placeholder_ids.append(ids)
        trainable.frozen_embeddings.append(embeddings.detach().clone())
    return trainable


@torch.no_grad()
def restore_frozen_embeddings(trainable: Trainable) -> None:
    """Textual inversion: put back every embedding row except the placeholder vectors."""
    for parameter, frozen, ids in zip(
        trainable.parameters, trainable.frozen_embeddings, trainable.placeholder_ids, strict=True
    ):
        keep = torch.ones(len(parameter), dtype=torch.bool, device=parameter.device)
        keep[ids] = False
        parameter[keep] = frozen.to(parameter.device)[keep]


# ---------------------------------------------------------------- optimiser


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


# ---------------------------------------------------------------- the training step


def step_generator(seed: int, step: int, micro_step: int, process: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, micro_step, process]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


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


# ---------------------------------------------------------------- training loop


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
    family = family_of(pipeline)
    dtype = weight_dtype(accelerator.mixed_precision)
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
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
    by_id = {id(accelerator.unwrap_model(m)): m for m in modules}
    unet = by_id.get(id(pipeline.unet), pipeline.unet)
    text_encoders = [by_id.get(id(e), e) for _, e in tokenizers_and_encoders(pipeline)]
    vae_config = pipeline.vae.config
    shift = getattr(vae_config, "shift_factor", None) or 0.0

    def save_hook(models, weights, output_dir):
        # Only the trained parameters (a LoRA checkpoint is megabytes, not the whole UNet).
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

    start = 0
    if checkpoint_dir is not None:
        marker = Path(checkpoint_dir) / "fingerprint.txt"
        if marker.is_file() and marker.read_text() == fingerprint:
            found = latest_checkpoint(checkpoint_dir)
            if found is not None:
                accelerator.load_state(str(found[0]))
                start = found[1]
        elif accelerator.is_main_process:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            Path(checkpoint_dir).mkdir(parents=True)
            marker.write_text(fingerprint)

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
                loss = batch_loss(
                    batch,
                    instances,
                    unet=unet,
                    text_encoders=text_encoders,
                    noise_scheduler=noise_scheduler,
                    family=family,
                    scaling_factor=vae_config.scaling_factor,
                    shift_factor=shift,
                    prior_loss_weight=settings.prior_loss_weight,
                    snr_gamma=settings.snr_gamma,
                    generator=generator,
                    device=accelerator.device,
                    dtype=dtype,
                )
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


def save_checkpoint(accelerator: Accelerator, folder: Path, step: int) -> None:
    """Save the training state as checkpoint-<step>; keep only the newest complete one."""
    target = folder / f"checkpoint-{step}"
    accelerator.save_state(str(target))
    if accelerator.is_main_process:
        (target / "complete").write_text(str(step))
        for old in folder.glob("checkpoint-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- outputs


def save_adapter(
    pipeline: DiffusionPipeline, trainable: Trainable, method: str, folder: Path
) -> list[str]:
    """Write the trained weights in diffusers' own formats; return the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = tokenizers_and_encoders(pipeline)
    if method in ("lora", "dreambooth_lora"):
        layers = {
            "unet_lora_layers": convert_state_dict_to_diffusers(
                get_peft_model_state_dict(pipeline.unet)
            ),
            # The LoRA config (lora_alpha!) travels with the weights for load_lora_weights.
            "unet_lora_adapter_metadata": pipeline.unet.peft_config["default"].to_dict(),
        }
        if trainable.text_trains:
            for prefix, (_, encoder) in zip(
                ("text_encoder", "text_encoder_2"), pairs, strict=False
            ):
                layers[f"{prefix}_lora_layers"] = convert_state_dict_to_diffusers(
                    get_peft_model_state_dict(encoder)
                )
                layers[f"{prefix}_lora_adapter_metadata"] = encoder.peft_config["default"].to_dict()
        type(pipeline).save_lora_weights(folder, weight_name=diffusion.LORA_WEIGHT_NAME, **layers)
        return [diffusion.LORA_WEIGHT_NAME]
    if method == "textual_inversion":
        files = []
        for name, (tokenizer, encoder), ids in zip(
            diffusion.EMBEDDINGS_NAMES, pairs, trainable.placeholder_ids, strict=False
        ):
            vectors = encoder.get_input_embeddings().weight[ids].detach().float().cpu()
            save_file(
                {tokenizer.convert_ids_to_tokens(ids[0]): vectors.contiguous()}, str(folder / name)
            )
            files.append(name)
        return files
    # dreambooth: a diffusers UNet folder (and text encoder folders when they trained)
    pipeline.unet.save_pretrained(folder / "unet", safe_serialization=True)
    if trainable.text_trains:
        for name, (_, encoder) in zip(("text_encoder", "text_encoder_2"), pairs, strict=False):
            encoder.save_pretrained(folder / name, safe_serialization=True)
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and path.suffix in (".safetensors", ".json")
    )


def validation_images(
    pipeline: DiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    resolution: int,
    steps: int,
) -> list[list[Image.Image]]:
    """One row per prompt, one image per seed, in one batch (CPU generators: the image of a
    (prompt, seed) is the same in any batch and on any device)."""
    with torch.inference_mode():
        images = pipeline(
            prompt=[prompt for prompt in prompts for _ in seeds],
            height=resolution,
            width=resolution,
            num_inference_steps=steps,
            generator=[torch.Generator().manual_seed(seed) for _ in prompts for seed in seeds],
        ).images
    return [images[i * len(seeds) : (i + 1) * len(seeds)] for i in range(len(prompts))]


def validation_grid(
    base: list[list[Image.Image]], personalised: list[list[Image.Image]], gap: int = 8
) -> Image.Image:
    """Base model (left) and personalised model (right), same prompts (rows) and seeds."""
    size = base[0][0].width
    columns = len(base[0])
    width = 2 * columns * size + gap
    grid = Image.new("RGB", (width, len(base) * size), (255, 255, 255))
    for row, (left, right) in enumerate(zip(base, personalised, strict=True)):
        for column, image in enumerate(left):
            grid.paste(image, (column * size, row * size))
        for column, image in enumerate(right):
            grid.paste(image, (columns * size + gap + column * size, row * size))
    return grid


@torch.no_grad()
def evaluation_loss(
    pipeline: DiffusionPipeline,
    image_paths: Sequence[Path],
    prompts: Sequence[str],
    resolution: int,
    seed: int = 0,
    repeats: int = 4,
) -> float:
    """The plain noise-prediction loss of `pipeline` on the images with their prompts, at noise
    and timesteps fixed by `seed`: the same draw for the base and the personalised model, so
    the two numbers compare (a single training loss is far too noisy for that)."""
    examples = make_examples(pipeline, image_paths, prompts, resolution, cache_text=True)
    generator = torch.Generator().manual_seed(seed)
    unet = pipeline.unet
    losses = [
        batch_loss(
            examples,
            len(examples),
            unet=unet,
            text_encoders=[],
            noise_scheduler=DDPMScheduler.from_config(pipeline.scheduler.config),
            family=family_of(pipeline),
            scaling_factor=pipeline.vae.config.scaling_factor,
            shift_factor=getattr(pipeline.vae.config, "shift_factor", None) or 0.0,
            prior_loss_weight=0.0,
            snr_gamma=None,
            generator=generator,
            device=unet.device,
            dtype=unet.dtype,
        ).item()
        for _ in range(repeats)
    ]
    return sum(losses) / len(losses)


def run_fingerprint(**parts) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
