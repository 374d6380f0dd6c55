"""The whole run: generate what is missing, filter, place the files, write the manifest."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from synthdet.artifacts.manifest import ManifestRow, write_manifest
from synthdet.core.data import DataError
from synthdet.core.errors import warn
from synthdet.diffusion.hashing import derive_seed
from synthdet.diffusion.vocabulary import long_text_message
from synthdet.generation.filters import (
    FEATURES_FILE,
    OUTLIER_FILTERS,
    FeatureCache,
    FilterResult,
    apply_filters,
    count_reasons,
)
from synthdet.generation.modes import engine_record, guided
from synthdet.generation.plan import ImageSpec, SubjectPlan, plan_units
from synthdet.generation.store import (
    PENDING,
    is_blank,
    place,
    remove_unplanned,
    scan_store,
    valid_entry,
    write_png,
)
from synthdet.image_checks.metrics import frechet_distance
from synthdet.params import GenerateFilterParams, GenerateParams


@dataclass
class GenerationStats:
    generated: int = 0  # images written by this process in this run
    computed: int = 0  # images the model computed (units are full batches, retries included)
    retried: int = 0  # images redone because they came out blank
    seconds: float = 0.0
    warned: set[tuple[str, int]] = field(default_factory=set)  # (subject, template) truncated
    negative_warned: bool = False  # the truncated negative prompt was said


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def truncation_warning(
    subject: SubjectPlan, template: int, tokens: int | None, limit: int | None, seen: str
) -> str:
    return long_text_message(
        f"{subject.templates_key}[{template}] (subject {subject.name})",
        subject.templates[template],
        seen,
        "the manifest",
        tokens=tokens,
        limit=limit,
    )


def negative_truncation_warning(
    negative: str, tokens: int | None, limit: int | None, seen: str
) -> str:
    return long_text_message(
        "generate.negative_prompt",
        negative,
        seen,
        "the manifest",
        tokens=tokens,
        limit=limit,
        field="negative_prompt_seen",
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
    counts = {p.name: p.count for p in plans}
    note = OUTLIER_FILTERS[settings.filters.outliers].warning(settings.filters, counts)
    return notes + ([note] if note else [])


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
    negative_prompt: str | None = None,
) -> GenerationStats:
    """Generate this process's share of the units with missing or stale images into pending/.
    `negative_prompt`: the one the model reads (None without classifier-free guidance)."""
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
        # recorded (and said once) only when truncated: other images' provenance is unchanged
        negative = {}
        if negative_prompt:
            seen, tokens, limit = read(negative_prompt)
            if seen != negative_prompt:
                negative = {"negative_prompt_seen": seen}
                if distribution.is_main and not stats.negative_warned:
                    warn(negative_truncation_warning(negative_prompt, tokens, limit, seen))
                    stats.negative_warned = True
        for unit, needed in subject_work:
            for spec, pixels, outcome in generate_unit(engine, unit, needed, seed, filters, stats):
                seen, tokens, _ = read(spec.prompt)
                outcome = {**outcome, "prompt_seen": seen, "prompt_tokens": tokens, **negative}
                write_png(out / PENDING / spec.file, pixels, provenance(spec, subject, outcome))
                stats.generated += 1
                on_image()
        del engine
    stats.seconds = time.perf_counter() - started
    return stats


def manifest_row(record: dict, result: FilterResult, file: str, engine: dict) -> ManifestRow:
    """The manifest row of a planned image from its provenance and the filters' decision."""
    return ManifestRow(
        file=file,
        subject=record["subject"],
        index=record["index"],
        prompt=record["prompt"],
        prompt_seen=record.get("prompt_seen"),
        seed=record["seed"],
        base_seed=record["base_seed"],
        attempt=record["attempt"],
        source=record["source"],
        kept=result.kept[file],
        drop_reason=result.reasons[file],
        scores=result.scores[file],
        key=record["key"],
        base_model=record.get("base_model"),
        base_revision=record.get("base_revision"),
        adapter_sha256=record.get("adapter_sha256"),
        adapter_method=record.get("adapter_method"),
        family=record.get("family"),
        engine={**engine, **{k: record[k] for k in ("negative_prompt_seen",) if k in record}},
    )


def finish(
    plans: Sequence[SubjectPlan],
    units: dict[str, list[list[ImageSpec]]],
    out: Path,
    settings: GenerateParams,
    resolution: int,
    seed: int,
    real_images: Sequence[Path],
    features: nn.Module | None = None,
    warned: set[tuple[str, int]] | None = None,
    negative_warned: bool = False,
) -> tuple[list[ManifestRow], dict]:
    """Filter, place kept / dropped images, and return the manifest rows and metrics. Warns of
    truncated prompt templates (and negative prompt) not `warned` of at the start (e.g. all of
    their images reused)."""
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
        if OUTLIER_FILTERS[filters.outliers].needs_real
    }
    result, generated_features = apply_filters(
        records, paths, plans, real_features, cache, filters, resolution, seed
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
    negative_seen = [
        r["negative_prompt_seen"] for r in records.values() if "negative_prompt_seen" in r
    ]
    if negative_seen and not negative_warned:
        warn(negative_truncation_warning(settings.negative_prompt, None, None, negative_seen[0]))
    extra = engine_record(settings, resolution)
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
        "fid_before_filters": _rounded(frechet_distance(real, before)),
        "fid_after_filters": _rounded(frechet_distance(real, after)),
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
    resolution: int,
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
    filter, place the files and write the manifest (synthdet.artifacts.manifest). `resolution`
    is shared.resolution (the real images are compared at it). Returns (stats, rows, metrics);
    rows and metrics are None in the other processes."""
    distribution = distribution or Distribution()
    units = {p.name: plan_units(p, settings, seed, identity) for p in plans}
    for note in setting_warnings(settings, plans) if distribution.is_main else ():
        warn(note)
    stats = generate_missing(
        plans,
        units,
        out,
        load_engine,
        seed,
        settings.filters,
        distribution,
        on_image,
        settings.negative_prompt if guided(settings) else None,
    )
    generated = sum(distribution.gather([stats.generated]))  # a collective: every process
    distribution.barrier()
    if not distribution.is_main:
        return stats, None, None
    rows, metrics = finish(
        plans,
        units,
        out,
        settings,
        resolution,
        seed,
        real_images,
        features,
        warned=stats.warned,
        negative_warned=stats.negative_warned,
    )
    # pending/ also held the images of a killed run: they count as resumed, not generated.
    metrics["resumed"] = metrics.pop("generated") - generated
    metrics["generated"] = generated
    write_manifest(out, rows)
    return stats, [row.to_json() for row in rows], metrics
