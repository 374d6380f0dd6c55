"""Loading Stable Diffusion pipelines (SD 1.x/2.x and SDXL), with or without a subject's adapter."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from huggingface_hub import snapshot_download

from synthdet.core.errors import ModelNotAvailableError
from synthdet.core.threads import cpu_threads
from synthdet.diffusion.builtin import BUILTIN_TINY
from synthdet.diffusion.hashing import folder_sha256


def configure_torch() -> torch.device:
    """Compute with `synthdet.core.threads.cpu_threads()` CPU threads; return the device."""
    torch.set_num_threads(cpu_threads())
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


FAMILY_PIPELINES = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}


def family_of(model: DiffusionPipeline | Mapping[str, Any]) -> str:
    """'sdxl' for a pipeline (or its model_index.json) with a second text encoder and size/crop
    conditioning, else 'sd' (SD 1.x/2.x): the one family rule."""
    second = (
        model.get("text_encoder_2")
        if isinstance(model, Mapping)
        else getattr(model, "text_encoder_2", None)
    )
    return "sdxl" if second is not None else "sd"


def tokenizers_and_encoders(pipeline: DiffusionPipeline) -> list[tuple]:
    """(tokenizer, text encoder) of each text encoder of the pipeline (two for SDXL)."""
    pairs = [(pipeline.tokenizer, pipeline.text_encoder)]
    if family_of(pipeline) == "sdxl":
        pairs.append((pipeline.tokenizer_2, pipeline.text_encoder_2))
    return pairs


def model_source(base_model: str, builtin_folder: Path | None) -> str:
    """Where `base_model` loads from: the builtin:tiny folder, a local folder or a hub id."""
    if base_model == BUILTIN_TINY:
        if builtin_folder is None or not (Path(builtin_folder) / "model_index.json").is_file():
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
    source = model_source(base_model, builtin_folder)
    try:  # hub errors are OSErrors, invalid ids ValueErrors
        index = DiffusionPipeline.load_config(source)
    except (OSError, ValueError) as exc:
        raise _unavailable("personalize.base_model", base_model, exc) from exc
    family = family_of(index)
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


def model_fingerprint(model: str, builtin_folder: Path | None = None) -> str | None:
    """sha256 over the files of a local model folder (`builtin:tiny` included); None for hub ids,
    whose revision the hub pins. An adapter records it, so a retrained base model is noticed."""
    source = Path(model_source(model, builtin_folder))
    return folder_sha256(source) if source.is_dir() else None


def model_revision(model: str, builtin_folder: Path | None = None) -> str:
    """What identifies a model's weights: its folder's fingerprint, or the commit of the hub
    snapshot in the local cache ('unknown' when not cached: the loader reports that)."""
    fingerprint = model_fingerprint(model, builtin_folder)
    if fingerprint is not None:
        return fingerprint
    try:
        return Path(snapshot_download(model, local_files_only=True)).name  # the commit hash
    except Exception:  # not cached: the loader reports it properly
        return "unknown"
