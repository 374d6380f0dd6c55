"""`manifest.jsonl`: one row per generated image, written by generate, read by annotate and
evaluate (as plain dicts, by the keys below)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthdet.core.data import read_jsonl, write_jsonl

MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class ManifestRow:
    file: str
    subject: str
    index: int
    prompt: str
    # what the text encoder read: the prompt, or its first tokens when it was longer than the
    # encoder's limit; None for an image generated before synthdet recorded it
    prompt_seen: str | None
    seed: int
    base_seed: int
    attempt: int
    source: str | None
    kept: bool
    drop_reason: str | None
    scores: dict[str, Any]
    key: str
    base_model: str | None
    base_revision: str | None
    adapter_sha256: str | None
    adapter_method: str | None
    family: str | None
    # the generation settings as used (generation.modes.engine_record), at the top level, and
    # negative_prompt_seen when the text encoder read only the start of the negative prompt
    engine: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        return {**{k: v for k, v in row.items() if k != "engine"}, **self.engine}


def write_manifest(folder: Path, rows: Iterable[ManifestRow]) -> None:
    """Write `folder/manifest.jsonl` atomically, one sorted-key JSON object per image."""
    write_jsonl(Path(folder) / MANIFEST, [row.to_json() for row in rows])


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(folder) / MANIFEST)
