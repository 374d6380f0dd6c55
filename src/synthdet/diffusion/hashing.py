"""Content hashes and derived seeds: the one implementation of each.

Files are identified by sha256 (`sha256_of`), folders and file sets by one sha256 over relative
paths and file hashes, settings by the sha256 of their sorted JSON. Seeds for an image, a retry or
a training step are mixed from their parts by numpy's SeedSequence, so they do not depend on
batching, process count or order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def sha256_of(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_sha256(folder: Path, files: Sequence[str]) -> str:
    """One hash over several files (relative paths and contents), e.g. all weights of an adapter."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{sha256_of(Path(folder) / name)}\n".encode())
    return digest.hexdigest()


def folder_sha256(folder: Path) -> str:
    """sha256 over a folder's files (relative path and content; hidden files are not part of a
    model)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_of(path)}\n".encode())
    return digest.hexdigest()


def json_sha256(value: Any) -> str:
    """sha256 of `value` as sorted JSON (non-JSON values by their str): a key for settings."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def derive_seed(*parts: int | str, bits: int = 63) -> int:
    """A well-mixed seed from integers and names (a name counts as the first 8 bytes of its
    sha256): the state of numpy's SeedSequence over the parts, as a 32-bit seed (`bits=32`), a
    63-bit one (low word first, `bits=63`) or a 64-bit one (high word first, `bits=64`)."""
    words = [
        int.from_bytes(hashlib.sha256(part.encode()).digest()[:8], "little")
        if isinstance(part, str)
        else part
        for part in parts
    ]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    low, high = int(state[0]), int(state[1])
    if bits == 32:
        return low
    if bits == 63:
        return low | (high & 0x7FFFFFFF) << 32
    if bits == 64:
        return low << 32 | high
    raise ValueError(f"bits must be 32, 63 or 64, got {bits}")
