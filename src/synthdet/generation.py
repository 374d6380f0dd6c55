"""Generation at scale: the engine behind the generate stage.

- **Plan.** Image i of subject s has a prompt (template i mod len), a seed derived from
  (shared.seed, s, i), a source train image for img2img / ControlNet (i mod the subject's train
  images) and a *key*: the sha256 of everything that decides its pixels (prompt, seed, source
  bytes, mode, steps, scheduler, resolution, batch size, base model and revision, adapter hash,
  ControlNet, dtype...). Images are computed in *units*, the aligned batches
  [k * batch_size, (k + 1) * batch_size), always full (padded past the count), so an image's bytes
  depend on its unit only: not on how many processes run, on a resume, or on the count.
- **Store.** Every PNG carries its provenance (key, seeds tried, blank scores) in a text chunk.
  `images/` holds kept images, `dropped/` the filtered ones, `pending/` what a run generated
  before its filters ran. A run reuses every file whose key matches, generates the rest (so raising
  `num_images` from N to M generates only the new images, and a killed run resumes), and
  regenerates any image whose prompt, seed, model, adapter... changed. Files appear by rename.
- **Engine.** Batched, prompt embeddings computed once per prompt, `torch.inference_mode`, SDPA
  attention, LoRA fused into the weights; channels_last, torch.compile and float16 / bfloat16 as
  options. txt2img, img2img (DA-Fusion-style variations of real train images) and ControlNet on
  Canny / Sobel maps of real train images, for the SD 1.x and SDXL families.
- **Filters.** Blank outputs (e.g. blacked out by a safety checker) are redone with the next
  derived seed; near-copies of the real personalisation images (Inception cosine similarity) are
  dropped; off-distribution images are dropped by KMeans on PCA-reduced Inception features
  (Genfusion) or by the k-NN realism score (Kynkäänniemi et al. 2019). FID before and after.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from torch import Tensor, nn

from synthdet import diffusion
from synthdet.data import DataError, list_images
from synthdet.errors import ModelNotAvailableError, warn
from synthdet.metrics import (
    FidInceptionFeatures,
    image_embeddings,
    inception_features,
)
from synthdet.params import GenerateFilterParams, GenerateParams, Params, img2img_steps

# Bump when the engine changes how pixels are computed: every cached image is then redone.
ENGINE_VERSION = 1
PROVENANCE_CHUNK = "synthdet"  # PNG text chunk with the image's provenance (JSON)
IMAGES, DROPPED, PENDING = "images", "dropped", "pending"
FEATURES_FILE = "cache/features.npz"

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


# ---------------------------------------------------------------- seeds and plan


def derive_seed(seed: int, subject: str, index: int, attempt: int = 0) -> int:
    """A well-mixed 63-bit seed from (shared.seed, subject, image index, attempt)."""
    subject_word = int.from_bytes(hashlib.sha256(subject.encode()).digest()[:8], "little")
    words = np.random.SeedSequence([seed, subject_word, index, attempt]).generate_state(
        2, dtype=np.uint32
    )
    return int(words[0]) | (int(words[1]) & 0x7FFFFFFF) << 32


def image_file(subject: str, index: int) -> str:
    return f"{subject}_{index:06d}.png"


def model_revision(model: str, builtin_folder: Path | None = None) -> str:
    """What identifies a model's weights: a folder hash, or the hub snapshot's commit."""
    if model.startswith("builtin:"):
        if builtin_folder is None:
            raise ModelNotAvailableError(f"{model}: no folder given")
        return diffusion.folder_sha256(Path(builtin_folder))
    local = Path(os.path.expanduser(model))
    if local.is_dir():
        return diffusion.folder_sha256(local)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True)).name  # the commit hash
    except Exception:  # not cached: the loader reports it properly
        return "unknown"


@dataclass(frozen=True)
class SubjectPlan:
    """One subject's share of the dataset and what its images are made from."""

    name: str
    identifier: str
    class_noun: str
    count: int
    templates: tuple[str, ...]
    sources: tuple[Path, ...] = ()  # real train images (img2img / ControlNet), sorted
    references: tuple[Path, ...] = ()  # real personalisation images (memorisation filter)
    identity: dict[str, Any] = field(default_factory=dict)  # base model, revision, adapter hash
    templates_key: str = "generate.prompts"  # where the templates come from, for messages


@dataclass(frozen=True)
class ImageSpec:
    subject: str
    index: int
    prompt: str
    seed: int  # attempt 0; attempt a uses derive_seed(..., a)
    source: Path | None
    key: str
    in_range: bool  # False: padding of the last unit, computed but never written

    @property
    def file(self) -> str:
        return image_file(self.subject, self.index)


def guided(settings: GenerateParams) -> bool:
    """Classifier-free guidance is on: diffusers uses it (and the negative prompt) only above 1."""
    return settings.guidance_scale > 1


def engine_description(settings: GenerateParams) -> dict:
    """The generation settings every manifest row repeats, as used: without classifier-free
    guidance (guidance_scale <= 1) the negative prompt is never encoded, so it is None."""
    row: dict[str, Any] = {
        "mode": settings.mode,
        "negative_prompt": settings.negative_prompt if guided(settings) else None,
        "scheduler": settings.scheduler,
        "steps": settings.num_inference_steps,
        "guidance_scale": settings.guidance_scale,
        "resolution": settings.resolution,
    }
    if settings.mode == "img2img":
        row["strength"] = settings.strength
    if settings.mode == "controlnet":
        row.update(control=settings.control, controlnet_model=settings.controlnet_model)
    return row


def engine_record(settings: GenerateParams) -> dict:
    """What the manifest says of the engine: the description, whether classifier-free guidance
    ran, and for img2img the denoising steps really run (int(strength x steps))."""
    row = {**engine_description(settings), "classifier_free_guidance": guided(settings)}
    if settings.mode == "img2img":
        row["denoising_steps"] = img2img_steps(settings.strength, settings.num_inference_steps)
    return row


def setting_warnings(settings: GenerateParams, plans: Sequence[SubjectPlan]) -> list[str]:
    """What the generate settings silently switch off, said once at the start of a run."""
    notes = []
    if not guided(settings):
        ignored = (
            f", so generate.negative_prompt ({settings.negative_prompt!r}) is ignored; the "
            "manifest records negative_prompt: null"
            if settings.negative_prompt.strip()
            else ""
        )
        notes.append(
            f"generate.guidance_scale={settings.guidance_scale} is <= 1: classifier-free "
            f"guidance is off{ignored}. Set it above 1 (e.g. 5) to use guidance."
        )
    filters = settings.filters
    if filters.outliers == "kmeans":
        small = [p.name for p in plans if 0 < p.count < filters.min_cluster_images]
        if small:
            notes.append(
                f"generate.filters.outliers=kmeans does nothing for {', '.join(small)}: fewer "
                f"images than generate.filters.min_cluster_images={filters.min_cluster_images} "
                "are never clustered. Lower it, or generate more images."
            )
    return notes


def engine_identity(settings: GenerateParams, controlnet_revision: str | None) -> dict:
    """The generate params that decide an image's pixels (filters do not)."""
    identity = {
        "engine_version": ENGINE_VERSION,
        **engine_description(settings),
        "batch_size": settings.batch_size,
        "dtype": settings.dtype,
        "channels_last": settings.channels_last,
        "compile": settings.compile,
    }
    if settings.mode == "controlnet":
        identity.update(
            controlnet_revision=controlnet_revision,
            canny=[settings.canny_low, settings.canny_high],
            controlnet_conditioning_scale=settings.controlnet_conditioning_scale,
        )
    return identity


def plan_units(
    subject: SubjectPlan, settings: GenerateParams, seed: int, identity: dict
) -> list[list[ImageSpec]]:
    """The subject's images as units: aligned batches, the last one padded to batch_size."""
    if settings.mode != "txt2img" and not subject.sources:
        raise DataError(
            f"subject {subject.name}: generate.mode={settings.mode} needs real train images "
            "matching its stem_pattern, found none"
        )
    source_hashes = {path: diffusion.sha256_of(path) for path in subject.sources}
    size = settings.batch_size
    units = []
    for first in range(0, subject.count, size):
        unit = []
        for index in range(first, first + size):
            template = subject.templates[index % len(subject.templates)]
            prompt = template.format(identifier=subject.identifier, class_noun=subject.class_noun)
            source = (
                subject.sources[index % len(subject.sources)]
                if settings.mode != "txt2img"
                else None
            )
            image_seed = derive_seed(seed, subject.name, index)
            description = {
                **identity,
                **subject.identity,
                "subject": subject.name,
                "index": index,
                "prompt": prompt,
                "seed": image_seed,
                "source_sha256": source_hashes[source] if source else None,
            }
            key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
            unit.append(
                ImageSpec(
                    subject.name, index, prompt, image_seed, source, key, index < subject.count
                )
            )
        units.append(unit)
    return units


def subject_images(folder: Path, stem_pattern: str) -> tuple[Path, ...]:
    """The images of `folder` (a YOLO folder or a plain one) whose stem matches the pattern."""
    folder = Path(folder)
    images = folder / "images" if (folder / "images").is_dir() else folder
    if not images.is_dir():
        return ()
    pattern = re.compile(stem_pattern)
    return tuple(p for p in list_images(images) if pattern.search(p.stem))


def subject_plans(
    params: Params, adapters: Path, builtin_base: Path, train: Path, personalize: Path
) -> list[SubjectPlan]:
    """Every subject of shared.subjects with its count, prompts, real images and adapter."""
    settings = params.generate
    settings.check_subjects(list(params.shared.subjects))
    plans = []
    for name, subject in params.shared.subjects.items():
        info = diffusion.read_adapter_info(adapters / name)
        if info["base_model"] != params.personalize.base_model:
            raise DataError(
                f"{adapters / name}: the adapter was trained on {info['base_model']!r}, but "
                f"personalize.base_model is {params.personalize.base_model!r}; rerun the "
                "personalize stage"
            )
        own = personalize / name
        references = (
            subject_images(own, ".*")
            if own.is_dir()
            else subject_images(personalize, subject.stem_pattern)
        )
        override = settings.subjects.get(name)
        templates_key = (
            f"generate.subjects.{name}.prompts"
            if override is not None and override.prompts is not None
            else "generate.prompts"
        )
        plans.append(
            SubjectPlan(
                name=name,
                identifier=info.get("identifier", subject.identifier),
                class_noun=info.get("class_noun", subject.class_noun),
                count=settings.count(name),
                templates=settings.templates(name),
                sources=references
                if settings.sources == "handful"
                else subject_images(train, subject.stem_pattern),
                references=references,
                identity={
                    "base_model": info["base_model"],
                    "base_revision": info.get("base_fingerprint")
                    or model_revision(info["base_model"], builtin_base),
                    "adapter_sha256": info["sha256"],
                    "adapter_method": info.get("method", "lora"),
                    "family": info.get("family", "sd"),
                },
                templates_key=templates_key,
            )
        )
    return plans


def load_controlnet(model: str, device: torch.device | str = "cpu") -> nn.Module:
    """A ControlNetModel from a hub id or a local folder (SD 1.x and SDXL ControlNets alike)."""
    from diffusers import ControlNetModel

    source = os.path.expanduser(model)
    try:
        return ControlNetModel.from_pretrained(source).to(device)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(
            f"generate.controlnet_model {model!r} cannot be loaded here ({exc}); point it at a "
            "local diffusers ControlNet folder, or fill the Hugging Face cache while online and "
            "run with HF_HUB_OFFLINE=1"
        ) from exc


# ---------------------------------------------------------------- engine


def _family(pipeline: Any) -> str:
    return "sdxl" if hasattr(pipeline, "text_encoder_2") else "sd"


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` and centre-crop: the real image at generation size."""
    image = image.convert("RGB")
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def control_map(image: Image.Image, kind: str, low: int = 100, high: int = 200) -> Image.Image:
    """The ControlNet conditioning image: Canny edges or Sobel gradient magnitude (3 channels)."""
    import cv2

    grey = np.asarray(image.convert("L"))
    if kind == "canny":
        edges = cv2.Canny(grey, low, high)
    elif kind == "sobel":
        gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
        magnitude = np.sqrt(gx**2 + gy**2)
        edges = np.clip(255 * magnitude / max(float(magnitude.max()), 1e-6), 0, 255)
        edges = edges.astype(np.uint8)
    else:
        raise ValueError(f"unknown control map {kind!r}")
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


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
    """A personalised pipeline set up for fast, seeded, batched generation in one mode."""

    def __init__(
        self,
        pipeline: Any,
        settings: GenerateParams,
        device: torch.device | str = "cpu",
        controlnet: nn.Module | None = None,
    ) -> None:
        from diffusers import (
            AutoPipelineForImage2Image,
            StableDiffusionControlNetPipeline,
            StableDiffusionXLControlNetPipeline,
        )
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.settings = settings
        self.device = torch.device(device)
        self.family = _family(pipeline)
        dtype = getattr(torch, settings.dtype)
        if dtype == torch.float16 and self.device.type == "cpu":
            raise DataError("generate.dtype=float16 needs a GPU; use float32 or bfloat16 on CPU")
        _fuse_adapters(pipeline)
        if settings.mode == "img2img":
            pipeline = AutoPipelineForImage2Image.from_pipe(pipeline)
        elif settings.mode == "controlnet":
            if controlnet is None:
                raise DataError("generate.mode=controlnet needs a ControlNet model")
            components = dict(pipeline.components)
            if self.family == "sdxl":
                pipeline = StableDiffusionXLControlNetPipeline(**components, controlnet=controlnet)
            else:
                pipeline = StableDiffusionControlNetPipeline(
                    **components,
                    controlnet=controlnet,
                    requires_safety_checker=components.get("safety_checker") is not None,
                )
        if settings.scheduler != "model":
            import diffusers

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

    @property
    def guided(self) -> bool:
        return guided(self.settings)

    def read_prompt(self, prompt: str) -> tuple[str, int, int]:
        """(the text the text encoder reads of `prompt`, its length in tokens, the encoder's
        limit). diffusers truncates a longer prompt to the start token, the first limit - 2
        tokens and the end token (textual-inversion placeholders expanded to all vectors)."""
        tokenizer = self.pipeline.tokenizer
        text = prompt
        if hasattr(self.pipeline, "maybe_convert_prompt"):
            text = self.pipeline.maybe_convert_prompt(prompt, tokenizer)
        ids = tokenizer(text, truncation=False, verbose=False).input_ids
        limit = tokenizer.model_max_length
        if len(ids) <= limit:
            return prompt, len(ids), limit
        return tokenizer.decode(ids[1 : limit - 1]).strip(), len(ids), limit

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
                image = fit_square(opened, self.settings.resolution)
            if self.settings.mode == "controlnet":
                s = self.settings
                image = control_map(image, s.control, s.canny_low, s.canny_high)
            self._conditions[source] = image
        return self._conditions[source]

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
        if s.mode == "txt2img":
            kwargs.update(height=s.resolution, width=s.resolution)
        elif s.mode == "img2img":
            kwargs.update(image=[self._condition(p) for p in sources], strength=s.strength)
        else:
            kwargs.update(
                image=[self._condition(p) for p in sources],
                height=s.resolution,
                width=s.resolution,
                controlnet_conditioning_scale=s.controlnet_conditioning_scale,
            )
        with torch.inference_mode():
            output = self.pipeline(**kwargs)
        images = (np.clip(output.images, 0, 1) * 255).round().astype(np.uint8)
        flags = getattr(output, "nsfw_content_detected", None) or [False] * len(images)
        return images, [bool(flag) for flag in flags]


# ---------------------------------------------------------------- store


def read_provenance(path: Path) -> dict | None:
    """The provenance a PNG carries, or None for a foreign / unreadable file."""
    try:
        with Image.open(path) as image:
            text = image.info.get(PROVENANCE_CHUNK)
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def write_png(path: Path, pixels: np.ndarray, provenance: dict) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PROVENANCE_CHUNK, json.dumps(provenance, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        Image.fromarray(pixels).save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def scan_store(out: Path) -> dict[str, list[tuple[Path, dict]]]:
    """Every generated PNG under images/, dropped/ and pending/ with its provenance."""
    found: dict[str, list[tuple[Path, dict]]] = {}
    for folder in (PENDING, IMAGES, DROPPED):
        directory = out / folder
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.png")):
            record = read_provenance(path)
            found.setdefault(path.name, []).append((path, record or {}))
    return found


def final_attempt(attempts: Sequence[dict], filters: GenerateFilterParams) -> int | None:
    """Which attempt the retry rule keeps, or None if it needs attempts not made yet."""
    for number in range(filters.max_attempts):
        if number >= len(attempts):
            return None
        if not is_blank(attempts[number]["std"], attempts[number]["nsfw"], filters):
            return number
    return filters.max_attempts - 1


def is_blank(std: float, nsfw: bool, filters: GenerateFilterParams) -> bool:
    return nsfw or std <= filters.blank_max_std


def valid_entry(record: dict, spec: ImageSpec, filters: GenerateFilterParams) -> bool:
    """A stored image is reusable if its key matches and the retry rule still picks it."""
    return (
        record.get("key") == spec.key
        and isinstance(record.get("attempts"), list)
        and final_attempt(record["attempts"], filters) == record.get("attempt")
    )


# ---------------------------------------------------------------- generation


@dataclass
class GenerationStats:
    generated: int = 0  # images written by this process in this run
    computed: int = 0  # images the model computed (units are full batches, retries included)
    retried: int = 0  # images redone because they came out blank
    seconds: float = 0.0
    warned: set[tuple[str, int]] = field(default_factory=set)  # (subject, template) truncated


def truncation_warning(
    subject: SubjectPlan, template: int, tokens: int | None, limit: int | None, seen: str
) -> str:
    length = f"is {tokens} tokens" if tokens else "is too long"
    reads = f" ({limit} with its start and end tokens)" if limit else ""
    return (
        f"{subject.templates_key}[{template}] {subject.templates[template]!r} {length} for "
        f"subject {subject.name}, more than the text encoder reads{reads}: the model sees only "
        f"{seen!r}. Shorten it; the manifest records that text as prompt_seen."
    )


def prompt_reader(engine: Any) -> Callable[[str], tuple[str, int | None, int | None]]:
    """`engine.read_prompt` with a cache; an engine without it (a test double) reads all."""
    read = getattr(engine, "read_prompt", None)
    cache: dict[str, tuple[str, int | None, int | None]] = {}

    def seen(prompt: str) -> tuple[str, int | None, int | None]:
        if prompt not in cache:
            cache[prompt] = read(prompt) if read is not None else (prompt, None, None)
        return cache[prompt]

    return seen


def generate_unit(
    engine: Callable[..., tuple[np.ndarray, list[bool]]],
    unit: Sequence[ImageSpec],
    needed: set[int],
    seed: int,
    filters: GenerateFilterParams,
    stats: GenerationStats,
) -> Iterator[tuple[ImageSpec, np.ndarray, dict]]:
    """Compute a whole unit and yield the `needed` images with their attempt records.

    A blank image is redone with the seed of the next attempt; the whole unit is recomputed at
    that attempt, so the result does not depend on which other images of the unit were blank.
    """
    pending = {spec.index: spec for spec in unit if spec.index in needed}
    attempts: dict[int, list[dict]] = {index: [] for index in pending}
    for attempt in range(filters.max_attempts):
        seeds = [derive_seed(seed, spec.subject, spec.index, attempt) for spec in unit]
        images, flags = engine(
            [spec.prompt for spec in unit], seeds, [spec.source for spec in unit]
        )
        stats.computed += len(unit)
        for position, spec in enumerate(unit):
            if spec.index not in pending:
                continue
            std = round(float(images[position].std()), 4)
            attempts[spec.index].append(
                {"seed": seeds[position], "std": std, "nsfw": flags[position]}
            )
            blank = is_blank(std, flags[position], filters)
            if not blank or attempt == filters.max_attempts - 1:
                del pending[spec.index]
                yield (
                    spec,
                    images[position],
                    {"attempt": attempt, "attempts": attempts[spec.index], "blank": blank},
                )
        if not pending:
            return
        stats.retried += len(pending)


# ---------------------------------------------------------------- features and filters


class FeatureCache:
    """Inception features by file content hash, kept in one .npz across runs."""

    def __init__(self, path: Path, extractor: nn.Module | None = None) -> None:
        self.path = path
        self._extractor = extractor
        self.features: dict[str, np.ndarray] = {}
        if path.is_file():
            try:
                with np.load(path) as data:
                    self.features = dict(zip(data["keys"].tolist(), data["features"], strict=True))
            except (OSError, ValueError, KeyError):
                self.features = {}
        self.used: set[str] = set()

    @property
    def extractor(self) -> nn.Module:
        if self._extractor is None:
            self._extractor = FidInceptionFeatures()
        return self._extractor

    def get(self, paths: Sequence[Path], size: int | None = None) -> np.ndarray:
        """(N, 2048) features: at the images' own size, or resized to `size` and normalised."""
        keys = [diffusion.sha256_of(p) + (f"@{size}" if size else "") for p in paths]
        missing = [(p, k) for p, k in zip(paths, keys, strict=True) if k not in self.features]
        for start in range(0, len(missing), 32):
            chunk = missing[start : start + 32]
            chunk_paths = [p for p, _ in chunk]
            if size:
                computed = image_embeddings(chunk_paths, size, self.extractor)
            else:
                computed = inception_features(chunk_paths, self.extractor)
            for (_, key), row in zip(chunk, computed.numpy(), strict=True):
                self.features[key] = row.astype(np.float32)
        self.used.update(keys)
        if not keys:
            width = getattr(self._extractor, "num_features", FidInceptionFeatures.num_features)
            return np.zeros((0, width), np.float32)
        return np.stack([self.features[k] for k in keys])

    def save(self) -> None:
        """Keep the features used by this run only, written atomically."""
        keys = sorted(self.used)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(suffix=".npz", dir=self.path.parent)
        os.close(handle)
        try:
            features = (
                np.stack([self.features[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
            )
            np.savez(tmp, keys=np.array(keys, dtype=str), features=features)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def frechet_distance(real: np.ndarray, generated: np.ndarray) -> float | None:
    """FID of two Inception feature sets (None with fewer than 2 images on a side).

    Exact, without the 2048 x 2048 matrix square root (which costs a minute on 2 CPU cores):
    with centred features A (n x d) and B (m x d), Sigma_r = A'A / (n-1), Sigma_g = B'B / (m-1),
    and the eigenvalues of Sigma_r Sigma_g are the squared singular values of
    A B' / sqrt((n-1)(m-1)), so tr sqrt(Sigma_r Sigma_g) is that small matrix's nuclear norm.
    Matches torchmetrics' FrechetInceptionDistance (tests/test_generation.py).
    """
    if len(real) < 2 or len(generated) < 2:
        return None
    a = torch.from_numpy(np.asarray(real, dtype=np.float64))
    b = torch.from_numpy(np.asarray(generated, dtype=np.float64))
    mean_a, mean_b = a.mean(dim=0), b.mean(dim=0)
    a, b = a - mean_a, b - mean_b
    scale = (len(a) - 1) * (len(b) - 1)
    cross = torch.linalg.svdvals(a @ b.T).sum() / math.sqrt(scale)
    value = (
        (mean_a - mean_b).square().sum()
        + a.square().sum() / (len(a) - 1)
        + b.square().sum() / (len(b) - 1)
        - 2 * cross
    )
    value = float(value)
    return round(value, 4) if math.isfinite(value) else None


def largest_cluster(
    features: np.ndarray, filters: GenerateFilterParams, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Genfusion's filter without t-SNE: KMeans on PCA-reduced features, keep the largest cluster.

    Returns (keep mask, cluster label per image). t-SNE is left out on purpose: it preserves
    neighbourhoods, not distances or densities, so KMeans clusters on it are not meaningful; PCA
    keeps the Euclidean geometry KMeans assumes. Ties go to the cluster with the lower label.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    count = len(features)
    components = max(1, min(filters.pca_components, count - 1, features.shape[1]))
    reduced = PCA(n_components=components, svd_solver="full", random_state=seed).fit_transform(
        features.astype(np.float64)
    )
    labels = KMeans(n_clusters=filters.clusters, n_init=10, random_state=seed).fit_predict(reduced)
    sizes = np.bincount(labels, minlength=filters.clusters)
    return labels == int(np.argmax(sizes)), labels


def realism_scores(real: np.ndarray, generated: np.ndarray, k: int) -> np.ndarray:
    """Kynkäänniemi et al. (2019) realism score of each generated sample against the real set.

    The real manifold is the union of balls around real samples with radius = distance to the
    k-th nearest real neighbour; the half with the largest radii is discarded (outliers), as in
    the paper. Score >= 1: the sample lies inside the manifold.
    """
    if len(real) <= k:
        raise DataError(f"the realism filter needs more than realism_k={k} real images")
    real_t, gen_t = torch.from_numpy(real).double(), torch.from_numpy(generated).double()
    radii = torch.cdist(real_t, real_t).kthvalue(k + 1, dim=1).values  # +1: itself at 0
    kept = radii <= radii.median()
    distances = torch.cdist(gen_t, real_t[kept]).clamp_min(1e-12)
    return (radii[kept][None, :] / distances).max(dim=1).values.numpy()


@dataclass
class FilterResult:
    kept: dict[str, bool]  # file -> kept
    reasons: dict[str, str | None]
    scores: dict[str, dict[str, Any]]


def apply_filters(
    records: dict[str, dict],
    paths: dict[str, Path],
    subjects: Sequence[SubjectPlan],
    real_features: dict[str, np.ndarray],
    cache: FeatureCache,
    filters: GenerateFilterParams,
    resolution: int,
    seed: int,
) -> tuple[FilterResult, dict[str, np.ndarray]]:
    """Decide kept / dropped per image: blank, then memorisation, then off-distribution.

    `records` maps file -> provenance of the planned images. Returns the decisions and the
    generated images' features per file (for FID).
    """
    kept, reasons, scores = {}, {}, {}
    features_by_file: dict[str, np.ndarray] = {}
    for subject in subjects:
        files = [f for f in sorted(records) if records[f]["subject"] == subject.name]
        for file in files:
            record = records[file]
            final = record["attempts"][record["attempt"]]
            scores[file] = {"blank_std": final["std"], "nsfw": final["nsfw"]}
            reasons[file] = "blank" if record["blank"] else None
        alive = [f for f in files if reasons[f] is None]
        if alive:
            generated = cache.get([paths[f] for f in alive])
            features_by_file.update(zip(alive, generated, strict=True))
        # Memorisation: cosine similarity of normalised Inception features at one size.
        if alive and subject.references and filters.memorization_threshold < 1:
            refs = cache.get(list(subject.references), size=resolution)
            norm = generated / np.maximum(np.linalg.norm(generated, axis=1, keepdims=True), 1e-12)
            similarity = norm @ refs.T
            best = similarity.argmax(axis=1)
            for row, file in enumerate(alive):
                value = float(similarity[row, best[row]])
                scores[file]["memorization_similarity"] = round(value, 4)
                scores[file]["memorization_match"] = subject.references[best[row]].name
                if value > filters.memorization_threshold:
                    reasons[file] = "memorized"
        alive = [f for f in alive if reasons[f] is None]
        # Off-distribution.
        if alive and filters.outliers == "kmeans" and len(alive) >= filters.min_cluster_images:
            matrix = np.stack([features_by_file[f] for f in alive])
            keep, labels = largest_cluster(matrix, filters, seed)
            sizes = np.bincount(labels, minlength=filters.clusters)
            for file, keep_it, label in zip(alive, keep, labels, strict=True):
                scores[file]["cluster"] = int(label)
                scores[file]["cluster_size"] = int(sizes[label])
                if not keep_it:
                    reasons[file] = "off_distribution"
        elif alive and filters.outliers == "realism":
            real = real_features.get(subject.name)
            if real is None or len(real) <= filters.realism_k:
                raise DataError(
                    f"subject {subject.name}: the realism filter needs more than "
                    f"generate.filters.realism_k={filters.realism_k} real train images"
                )
            matrix = np.stack([features_by_file[f] for f in alive])
            realism = realism_scores(real, matrix, filters.realism_k)
            for file, value in zip(alive, realism, strict=True):
                scores[file]["realism"] = round(float(value), 4)
                if value < filters.min_realism:
                    reasons[file] = "off_distribution"
        for file in files:
            kept[file] = reasons[file] is None
    return FilterResult(kept, reasons, scores), features_by_file


# ---------------------------------------------------------------- finishing the store


def place(out: Path, file: str, source: Path, kept: bool) -> Path:
    """Move an image to images/ (kept) or dropped/ by rename; remove other copies of it."""
    target = out / (IMAGES if kept else DROPPED) / file
    target.parent.mkdir(parents=True, exist_ok=True)
    if source != target:
        os.replace(source, target)
    for folder in (IMAGES, DROPPED, PENDING):
        other = out / folder / file
        if other != target and other.exists():
            other.unlink()
    return target


def remove_unplanned(out: Path, planned: set[str]) -> int:
    """Delete stored images the plan no longer has (count lowered, subject removed) and the
    temporary files of writes killed before their rename (main process, all writers done)."""
    removed = 0
    for folder in (IMAGES, DROPPED, PENDING):
        directory = out / folder
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            if path.name not in planned or path.suffix == ".tmp":
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed += 1
    pending = out / PENDING
    if pending.is_dir() and not any(pending.iterdir()):
        pending.rmdir()
    return removed


def count_reasons(reasons: dict[str, str | None]) -> Counter:
    return Counter(reason for reason in reasons.values() if reason)


# ---------------------------------------------------------------- the whole run


@dataclass
class Distribution:
    """Which share of the work this process does (accelerate's PartialState in the stage)."""

    process_index: int = 0
    num_processes: int = 1
    barrier: Callable[[], None] = lambda: None
    gather: Callable[[list], list] = lambda items: items  # all processes' items, in every one

    @property
    def is_main(self) -> bool:
        return self.process_index == 0


def provenance(spec: ImageSpec, subject: SubjectPlan, outcome: dict) -> dict:
    final = outcome["attempts"][outcome["attempt"]]
    return {
        "key": spec.key,
        "subject": spec.subject,
        "index": spec.index,
        "prompt": spec.prompt,
        "base_seed": spec.seed,
        "seed": final["seed"],
        "source": spec.source.name if spec.source else None,
        **outcome,
        **{k: subject.identity[k] for k in sorted(subject.identity)},
    }


def generate_missing(
    plans: Sequence[SubjectPlan],
    units: dict[str, list[list[ImageSpec]]],
    out: Path,
    load_engine: Callable[[SubjectPlan], Callable[..., tuple[np.ndarray, list[bool]]]],
    seed: int,
    filters: GenerateFilterParams,
    distribution: Distribution,
    on_image: Callable[[], None] = lambda: None,
) -> GenerationStats:
    """Generate this process's share of the units with missing or stale images into pending/."""
    import time

    started = time.perf_counter()
    store = scan_store(out)
    work = []
    for subject in plans:
        for unit in units[subject.name]:
            needed = {
                spec.index
                for spec in unit
                if spec.in_range
                and not any(
                    valid_entry(record, spec, filters) for _, record in store.get(spec.file, [])
                )
            }
            if needed:
                work.append((subject, unit, needed))
    # Whole units go round-robin to processes: a unit is computed the same way in any process.
    mine = work[distribution.process_index :: distribution.num_processes]
    stats = GenerationStats()
    for subject in plans:
        subject_work = [(unit, needed) for s, unit, needed in mine if s is subject]
        if not subject_work:
            continue
        engine = load_engine(subject)
        read = prompt_reader(engine)
        if distribution.is_main:  # count the tokens of every template before the first image
            for number, template in enumerate(subject.templates):
                prompt = template.format(
                    identifier=subject.identifier, class_noun=subject.class_noun
                )
                seen, tokens, limit = read(prompt)
                if seen != prompt:
                    warn(truncation_warning(subject, number, tokens, limit, seen))
                    stats.warned.add((subject.name, number))
        for unit, needed in subject_work:
            for spec, pixels, outcome in generate_unit(engine, unit, needed, seed, filters, stats):
                seen, tokens, _ = read(spec.prompt)
                outcome = {**outcome, "prompt_seen": seen, "prompt_tokens": tokens}
                write_png(out / PENDING / spec.file, pixels, provenance(spec, subject, outcome))
                stats.generated += 1
                on_image()
        del engine
    stats.seconds = time.perf_counter() - started
    return stats


def manifest_row(record: dict, result: FilterResult, file: str, extra: dict) -> dict:
    row = {
        "file": file,
        "subject": record["subject"],
        "index": record["index"],
        "prompt": record["prompt"],
        # what the text encoder read: the prompt, or its first tokens when it was longer than the
        # encoder's limit; None for an image generated before synthdet recorded it
        "prompt_seen": record.get("prompt_seen"),
        "seed": record["seed"],
        "base_seed": record["base_seed"],
        "attempt": record["attempt"],
        "source": record["source"],
        "kept": result.kept[file],
        "drop_reason": result.reasons[file],
        "scores": result.scores[file],
        "key": record["key"],
    }
    for name in ("base_model", "base_revision", "adapter_sha256", "adapter_method", "family"):
        row[name] = record.get(name)
    row.update(extra)
    return row


def finish(
    plans: Sequence[SubjectPlan],
    units: dict[str, list[list[ImageSpec]]],
    out: Path,
    settings: GenerateParams,
    seed: int,
    real_images: Sequence[Path],
    features: nn.Module | None = None,
    warned: set[tuple[str, int]] | None = None,
) -> tuple[list[dict], dict]:
    """Filter, place kept / dropped images, and return the manifest rows and metrics. Warns of
    truncated prompt templates not `warned` of at the start (e.g. all of their images reused)."""
    filters = settings.filters
    store = scan_store(out)
    records: dict[str, dict] = {}
    paths: dict[str, Path] = {}
    generated_now = 0
    for subject in plans:
        for unit in units[subject.name]:
            for spec in unit:
                if not spec.in_range:
                    continue
                entries = [
                    (path, record)
                    for path, record in store.get(spec.file, [])
                    if valid_entry(record, spec, filters)
                ]
                if not entries:
                    raise DataError(
                        f"{out}: {spec.file} was not generated (did a process of the run fail?)"
                    )
                paths[spec.file], records[spec.file] = entries[0]
                generated_now += entries[0][0].parent.name == PENDING
    cache = FeatureCache(out / FEATURES_FILE, features)
    real_features = {
        subject.name: cache.get(list(subject.sources))
        for subject in plans
        if filters.outliers == "realism"
    }
    result, generated_features = apply_filters(
        records, paths, plans, real_features, cache, filters, settings.resolution, seed
    )
    warned = set(warned or ())
    truncated = 0
    for subject in plans:
        for record in (r for r in records.values() if r["subject"] == subject.name):
            seen = record.get("prompt_seen")
            if seen is None or seen == record["prompt"]:
                continue
            truncated += 1
            number = record["index"] % len(subject.templates)
            if (subject.name, number) not in warned:
                warned.add((subject.name, number))
                warn(truncation_warning(subject, number, record.get("prompt_tokens"), None, seen))
    extra = engine_record(settings)
    rows = []
    for file in sorted(records, key=lambda f: (records[f]["subject"], records[f]["index"])):
        place(out, file, paths[file], result.kept[file])
        rows.append(manifest_row(records[file], result, file, extra))
    remove_unplanned(out, set(records))
    real = cache.get(list(real_images))
    before = np.stack(list(generated_features.values())) if generated_features else real[:0]
    kept_files = [f for f in generated_features if result.kept[f]]
    after = np.stack([generated_features[f] for f in kept_files]) if kept_files else real[:0]
    cache.save()
    reasons = count_reasons(result.reasons)
    metrics: dict[str, Any] = {
        "images": len(records),
        "kept": sum(result.kept.values()),
        "dropped_blank": reasons["blank"],
        "dropped_memorized": reasons["memorized"],
        "dropped_off_distribution": reasons["off_distribution"],
        "blank_retried": sum(1 for r in records.values() if r["attempt"] > 0),
        "generated": generated_now,  # from pending/: this run's and a killed run's images
        "reused": len(records) - generated_now,
        "fid_before_filters": frechet_distance(real, before),
        "fid_after_filters": frechet_distance(real, after),
        "fid_real_images": len(real),
        "prompts_truncated": truncated,  # images whose prompt the text encoder read in part
        "subjects": {},
    }
    for subject in plans:
        mine = [f for f in records if records[f]["subject"] == subject.name]
        counted = Counter(result.reasons[f] for f in mine if result.reasons[f])
        metrics["subjects"][subject.name] = {
            "images": len(mine),
            "kept": sum(result.kept[f] for f in mine),
            **{f"dropped_{reason}": counted[reason] for reason in sorted(counted)},
        }
    return rows, metrics


def generate_dataset(
    plans: Sequence[SubjectPlan],
    settings: GenerateParams,
    seed: int,
    out: Path,
    load_engine: Callable[[SubjectPlan], Callable[..., tuple[np.ndarray, list[bool]]]],
    real_images: Sequence[Path],
    identity: dict,
    distribution: Distribution | None = None,
    on_image: Callable[[], None] = lambda: None,
    features: nn.Module | None = None,
) -> tuple[GenerationStats, list[dict] | None, dict | None]:
    """Plan, generate what is missing (this process's share), then, in the main process only,
    filter, place the files and write `manifest.jsonl`. Returns (stats, rows, metrics); rows and
    metrics are None in the other processes."""
    from synthdet.data import write_jsonl

    distribution = distribution or Distribution()
    units = {p.name: plan_units(p, settings, seed, identity) for p in plans}
    for note in setting_warnings(settings, plans) if distribution.is_main else ():
        warn(note)
    stats = generate_missing(
        plans, units, out, load_engine, seed, settings.filters, distribution, on_image
    )
    generated = sum(distribution.gather([stats.generated]))  # a collective: every process
    distribution.barrier()
    if not distribution.is_main:
        return stats, None, None
    rows, metrics = finish(
        plans, units, out, settings, seed, real_images, features, warned=stats.warned
    )
    # pending/ also held the images of a killed run: they count as resumed, not generated.
    metrics["resumed"] = metrics.pop("generated") - generated
    metrics["generated"] = generated
    write_jsonl(out / "manifest.jsonl", rows)
    return stats, rows, metrics
