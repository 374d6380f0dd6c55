"""The store: generated PNGs with their provenance in images/, dropped/ and pending/."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from synthdet.generation.plan import ImageSpec
from synthdet.params import GenerateFilterParams

PROVENANCE_CHUNK = "synthdet"  # PNG text chunk with the image's provenance (JSON)


IMAGES, DROPPED, PENDING = "images", "dropped", "pending"


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
