"""What each personalisation method trains, saves and loads, by weight format (the registry).

`synthdet.params.methods` names the methods; a method's weight format (`methods.Weights`) picks one
`WeightFormat` here: `setup` (freeze the pipeline, make trainable what the method trains), `save`
(diffusers' own file formats) and `apply` (diffusers' own loaders). `load_personalized_pipeline`
is the generate side: the base pipeline with a subject's adapter applied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from synthdet.artifacts.adapter import AdapterInfo
from synthdet.core.data import DataError
from synthdet.diffusion.builtin import BUILTIN_TINY
from synthdet.diffusion.hashing import files_sha256
from synthdet.diffusion.loading import (
    family_of,
    load_pipeline,
    model_fingerprint,
    tokenizers_and_encoders,
)
from synthdet.params import ParamsError, PersonalizeParams, SubjectParams, methods

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default for save_lora_weights
# Textual inversion: {placeholder: [num_vectors, dim]} per text encoder, as load_textual_inversion
# reads it (SDXL: the second file goes to text_encoder_2 / tokenizer_2).
EMBEDDINGS_NAMES = ("learned_embeds.safetensors", "learned_embeds_2.safetensors")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


@dataclass
class Trainable:
    """What a method trains: modules handed to accelerate and the parameters optimised."""

    modules: list[torch.nn.Module]
    parameters: list[torch.nn.Parameter]
    text_trains: bool
    placeholder_ids: list[list[int]] = field(default_factory=list)  # per text encoder
    frozen_embeddings: list[torch.Tensor] = field(default_factory=list)


def initializer_token(settings: PersonalizeParams, class_noun: str) -> str:
    return settings.textual_inversion.initializer_token or class_noun.split()[-1]


# ---------------------------------------------------------------- setup


def setup_method(
    pipeline: DiffusionPipeline,
    settings: PersonalizeParams,
    placeholder: str,
    class_noun: str,
    dtype: torch.dtype,
) -> Trainable:
    """Freeze the pipeline and make trainable what `settings.method` trains."""
    pairs = tokenizers_and_encoders(pipeline)
    for module in (pipeline.unet, pipeline.vae, *(encoder for _, encoder in pairs)):
        module.requires_grad_(False)
    pipeline.vae.to(dtype=torch.float32)  # latents are encoded once, in full precision
    return format_of(settings.method).setup(pipeline, settings, placeholder, class_noun, dtype)


def _checkpointing(pipeline: DiffusionPipeline, settings: PersonalizeParams) -> None:
    if settings.gradient_checkpointing:
        pipeline.unet.enable_gradient_checkpointing()
        if settings.train_text_encoder:
            for _, encoder in tokenizers_and_encoders(pipeline):
                encoder.gradient_checkpointing_enable()


def _trainable(modules: list[torch.nn.Module], text_trains: bool) -> Trainable:
    parameters = [p for m in modules for p in m.parameters() if p.requires_grad]
    return Trainable(modules, parameters, text_trains=text_trains)


def _setup_full(pipeline, settings, placeholder, class_noun, dtype) -> Trainable:
    """The whole UNet trains (and the text encoders with train_text_encoder)."""
    pairs = tokenizers_and_encoders(pipeline)
    train_text = settings.train_text_encoder
    unet = pipeline.unet
    unet.requires_grad_(True)
    modules = [unet]
    if train_text:
        for _, encoder in pairs:
            encoder.requires_grad_(True)
            modules.append(encoder)
    for _, encoder in pairs:
        if not train_text:
            encoder.to(dtype=dtype)
    _checkpointing(pipeline, settings)
    return _trainable(modules, train_text)


def _setup_lora(pipeline, settings, placeholder, class_noun, dtype) -> Trainable:
    """Frozen weights in the compute dtype, LoRA weights (peft) in fp32."""
    pairs = tokenizers_and_encoders(pipeline)
    train_text = settings.train_text_encoder
    unet = pipeline.unet
    for module in (unet, *(encoder for _, encoder in pairs)):
        module.to(dtype=dtype)
    try:
        unet.add_adapter(LoraConfig(**settings.lora))
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"params: 'personalize.lora' is not a valid LoraConfig: {exc}") from exc
    modules = [unet]
    if train_text:
        text_config = {**settings.lora, "target_modules": list(settings.text_encoder_lora_modules)}
        for _, encoder in pairs:
            encoder.add_adapter(LoraConfig(**text_config))
            modules.append(encoder)
    cast_training_params(modules, dtype=torch.float32)
    _checkpointing(pipeline, settings)
    return _trainable(modules, train_text)


def _setup_embeddings(pipeline, settings, placeholder, class_noun, dtype) -> Trainable:
    """Add `placeholder` (+ `placeholder_1`, ... for several vectors) to every tokenizer, start
    each vector at the initializer token's embedding; only the embedding table trains and the
    rows of all other tokens are restored after every step."""
    pipeline.unet.to(dtype=dtype)
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


# ---------------------------------------------------------------- save


def save_adapter(
    pipeline: DiffusionPipeline, trainable: Trainable, method: str, folder: Path
) -> list[str]:
    """Write the trained weights in diffusers' own formats; return the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    return format_of(method).save(pipeline, trainable, folder)


def _lora_metadata(model) -> dict:
    """The LoRA config saved with the weights, sets as sorted lists: diffusers writes peft's
    `target_modules` set in hash order, so the file's bytes changed with PYTHONHASHSEED."""
    config = model.peft_config["default"].to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}


def _save_lora(pipeline, trainable, folder) -> list[str]:
    pairs = tokenizers_and_encoders(pipeline)
    layers = {
        "unet_lora_layers": convert_state_dict_to_diffusers(
            get_peft_model_state_dict(pipeline.unet)
        ),
        # The LoRA config (lora_alpha!) travels with the weights for load_lora_weights.
        "unet_lora_adapter_metadata": _lora_metadata(pipeline.unet),
    }
    if trainable.text_trains:
        for prefix, (_, encoder) in zip(TEXT_ENCODERS, pairs, strict=False):
            layers[f"{prefix}_lora_layers"] = convert_state_dict_to_diffusers(
                get_peft_model_state_dict(encoder)
            )
            layers[f"{prefix}_lora_adapter_metadata"] = _lora_metadata(encoder)
    type(pipeline).save_lora_weights(folder, weight_name=LORA_WEIGHT_NAME, **layers)
    return [LORA_WEIGHT_NAME]


def _save_embeddings(pipeline, trainable, folder) -> list[str]:
    files = []
    pairs = tokenizers_and_encoders(pipeline)
    for name, (tokenizer, encoder), ids in zip(
        EMBEDDINGS_NAMES, pairs, trainable.placeholder_ids, strict=False
    ):
        vectors = encoder.get_input_embeddings().weight[ids].detach().float().cpu()
        save_file(
            {tokenizer.convert_ids_to_tokens(ids[0]): vectors.contiguous()}, str(folder / name)
        )
        files.append(name)
    return files


def _save_full(pipeline, trainable, folder) -> list[str]:
    """A diffusers UNet folder (and text encoder folders when they trained)."""
    pipeline.unet.save_pretrained(folder / "unet", safe_serialization=True)
    if trainable.text_trains:
        pairs = tokenizers_and_encoders(pipeline)
        for name, (_, encoder) in zip(TEXT_ENCODERS, pairs, strict=False):
            encoder.save_pretrained(folder / name, safe_serialization=True)
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and path.suffix in (".safetensors", ".json")
    )


# ---------------------------------------------------------------- apply


def _lora_layers(weights: Path) -> dict[str, int]:
    """LoRA layers per component ('unet', 'text_encoder', ...) of a diffusers LoRA file."""
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


def _apply_lora(pipeline: DiffusionPipeline, folder: Path, info: AdapterInfo) -> str:
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


def _apply_embeddings(pipeline: DiffusionPipeline, folder: Path, info: AdapterInfo) -> str:
    encoders = [(pipeline.text_encoder, pipeline.tokenizer)]
    if info.family == "sdxl":
        encoders.append((pipeline.text_encoder_2, pipeline.tokenizer_2))
    for name, (text_encoder, tokenizer) in zip(EMBEDDINGS_NAMES, encoders, strict=False):
        pipeline.load_textual_inversion(
            str(folder),
            weight_name=name,
            token=info.identifier,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
        )
    vectors = len(pipeline.maybe_convert_prompt(info.identifier, pipeline.tokenizer).split())
    names = " and ".join(TEXT_ENCODERS[: len(encoders)]).replace("_", "-")
    return (
        f"textual-inversion embedding {info.identifier} ({vectors} vectors) in {names}; "
        "UNet and text encoders unchanged"
    )


def _apply_full(pipeline: DiffusionPipeline, folder: Path, info: AdapterInfo) -> str:
    dtype = pipeline.unet.dtype
    pipeline.unet = UNet2DConditionModel.from_pretrained(
        folder / "unet", torch_dtype=dtype, use_safetensors=True
    )
    for name in TEXT_ENCODERS:
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


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class WeightFormat:
    setup: Callable[..., Trainable]  # (pipeline, settings, placeholder, class_noun, dtype)
    save: Callable[..., list[str]]  # (pipeline, trainable, folder) -> files written
    apply: Callable[..., str]  # (pipeline, folder, AdapterInfo) -> what was loaded, in words


FORMATS = {
    methods.Weights.LORA_LAYERS: WeightFormat(_setup_lora, _save_lora, _apply_lora),
    methods.Weights.FULL: WeightFormat(_setup_full, _save_full, _apply_full),
    methods.Weights.EMBEDDINGS: WeightFormat(
        _setup_embeddings, _save_embeddings, _apply_embeddings
    ),
}


def describe(
    pipeline: DiffusionPipeline,
    trainable: Trainable,
    settings: PersonalizeParams,
    folder: Path,
    files: list[str],
    *,
    subject: tuple[str, SubjectParams],
    base_fingerprint: str | None,
    seed: int,
    prior: dict,
    resolution: int,
) -> AdapterInfo:
    """The adapter.json of the weights `files` just saved in `folder` for `subject` (its name
    and params), trained from a base model with `base_fingerprint` on `resolution` px images."""
    method = methods.method(settings.method)
    name, params = subject
    return AdapterInfo(
        subject=name,
        identifier=method.concept_token(params.identifier),
        class_noun=params.class_noun,
        instance_prompt=method.instance_prompt(params.identifier, params.class_noun),
        method=settings.method,
        family=family_of(pipeline),
        pipeline_class=type(pipeline).__name__,
        base_model=settings.base_model,
        base_fingerprint=base_fingerprint,
        vae=settings.vae,
        weight_files=files,
        sha256=files_sha256(folder, files),
        resolution=resolution,
        max_train_steps=settings.max_train_steps,
        train_text_encoder=trainable.text_trains and not method.new_token,
        lora=settings.lora if method.weights is methods.Weights.LORA_LAYERS else None,
        textual_inversion=dataclasses.asdict(settings.textual_inversion)
        if method.new_token
        else None,
        seed=seed,
        prior=prior,
    )


def write_adapter(
    folder: Path,
    pipeline: DiffusionPipeline,
    trainable: Trainable,
    settings: PersonalizeParams,
    subject: tuple[str, SubjectParams],
    base_fingerprint: str | None,
    seed: int,
    prior: dict,
    resolution: int,
) -> AdapterInfo:
    """Save the trained weights into `folder` and describe them in its adapter.json."""
    files = save_adapter(pipeline, trainable, settings.method, folder)
    info = describe(
        pipeline,
        trainable,
        settings,
        folder,
        files,
        subject=subject,
        base_fingerprint=base_fingerprint,
        seed=seed,
        prior=prior,
        resolution=resolution,
    )
    info.write(folder)
    return info


def format_of(method: str) -> WeightFormat:
    return FORMATS[methods.method(method).weights]


def apply_adapter(pipeline: DiffusionPipeline, adapter_folder: Path, info: AdapterInfo) -> str:
    """Put a personalize output into `pipeline` with diffusers' own loaders; return what was
    loaded, in words ('UNet LoRA (32 layers); no text-encoder LoRA')."""
    if info.method not in methods.METHODS:
        raise DataError(
            f"{adapter_folder}: unknown personalisation method {info.method!r} in adapter.json"
        )
    return format_of(info.method).apply(pipeline, Path(adapter_folder), info)


def load_personalized_pipeline(
    adapter_folder: Path, builtin_folder: Path, base_model: str | None = None
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """The txt2img pipeline of the adapter's family with the subject's adapter applied.

    Refuses an adapter trained on another base model: another `base_model` name than the caller
    expects, or a `builtin:tiny` / local folder whose files changed since training.
    """
    info = AdapterInfo.read(adapter_folder)
    if base_model is not None:
        info.check_base(adapter_folder, base_model)
    recorded = info.base_fingerprint
    if recorded is not None:
        current = model_fingerprint(info.base_model, builtin_folder)
        if current != recorded:
            where = builtin_folder if info.base_model == BUILTIN_TINY else info.base_model
            raise DataError(
                f"{adapter_folder}: the adapter was trained on {info.base_model!r} with "
                f"fingerprint {recorded[:12]}, but {where} now holds {str(current)[:12]} (the base "
                "model changed); rerun the personalize stage"
            )
    pipeline = load_pipeline(info.base_model, builtin_folder, vae=info.vae)
    if family_of(pipeline) != info.family:
        raise DataError(
            f"{adapter_folder}: adapter family {info.family!r} does not match the base model "
            f"({family_of(pipeline)!r}); rerun the personalize stage"
        )
    loaded = apply_adapter(pipeline, adapter_folder, info)
    # One line of our own instead of diffusers' per-component notices.
    print(f"loaded {adapter_folder} ({info.method}): {loaded}", file=sys.stderr, flush=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
