"""The plan: every image of every subject with its prompt, seed, source image and key."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthdet.artifacts.adapter import AdapterInfo
from synthdet.core.data import DataError, list_images
from synthdet.diffusion.hashing import derive_seed, json_sha256, sha256_of
from synthdet.diffusion.loading import model_revision
from synthdet.generation.modes import MODES, engine_description
from synthdet.params import GenerateParams, Params

# Bump when the engine changes how pixels are computed: every cached image is then redone.
ENGINE_VERSION = 1


def image_file(subject: str, index: int) -> str:
    return f"{subject}_{index:06d}.png"


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


def engine_identity(
    settings: GenerateParams, resolution: int, controlnet_revision: str | None
) -> dict:
    """The generate params (and shared.resolution) that decide an image's pixels (filters do
    not)."""
    identity = {
        "engine_version": ENGINE_VERSION,
        **engine_description(settings, resolution),
        "batch_size": settings.batch_size,
        "dtype": settings.dtype,
        "channels_last": settings.channels_last,
        "compile": settings.compile,
    }
    identity.update(MODES[settings.mode].identity(settings, controlnet_revision))
    return identity


def plan_units(
    subject: SubjectPlan, settings: GenerateParams, seed: int, identity: dict
) -> list[list[ImageSpec]]:
    """The subject's images as units: aligned batches, the last one padded to batch_size."""
    mode = MODES[settings.mode]
    if mode.uses_source and not subject.sources:
        raise DataError(
            f"subject {subject.name}: generate.mode={settings.mode} needs real train images "
            "matching its stem_pattern, found none"
        )
    source_hashes = {path: sha256_of(path) for path in subject.sources}
    size = settings.batch_size
    units = []
    for first in range(0, subject.count, size):
        unit = []
        for index in range(first, first + size):
            template = subject.templates[index % len(subject.templates)]
            prompt = template.format(identifier=subject.identifier, class_noun=subject.class_noun)
            source = subject.sources[index % len(subject.sources)] if mode.uses_source else None
            image_seed = derive_seed(seed, subject.name, index, 0)  # attempt 0
            description = {
                **identity,
                **subject.identity,
                "subject": subject.name,
                "index": index,
                "prompt": prompt,
                "seed": image_seed,
                "source_sha256": source_hashes[source] if source else None,
            }
            key = json_sha256(description)
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
    settings = params.generate  # params checked its subjects against shared.subjects
    plans = []
    for name, subject in params.shared.subjects.items():
        info = AdapterInfo.read(adapters / name)
        info.check_base(adapters / name, params.personalize.base_model)
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
                identifier=info.identifier,
                class_noun=info.class_noun,
                count=settings.count(name),
                templates=settings.templates(name),
                # generate.sources: the handful (few-shot) or every train image
                sources=references
                if settings.sources == "handful"
                else subject_images(train, subject.stem_pattern),
                references=references,
                identity={
                    "base_model": info.base_model,
                    "base_revision": info.base_fingerprint
                    or model_revision(info.base_model, builtin_base),
                    "adapter_sha256": info.sha256,
                    "adapter_method": info.method,
                    "family": info.family,
                },
                templates_key=templates_key,
            )
        )
    return plans
