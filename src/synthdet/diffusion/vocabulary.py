"""The CLIP BPE tokenizer, built offline from the vocabulary open-clip-torch ships."""

from __future__ import annotations

import gzip
import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Any

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from synthdet.core.errors import ModelNotAvailableError

CLIP_CONTEXT_LENGTH = 77  # every CLIP text encoder, SD 1.5's included


def _open_clip_vocabulary() -> Path:
    # find_spec locates the package without importing it (importing open_clip takes seconds).
    spec = importlib.util.find_spec("open_clip")
    path = (
        Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
        if spec and spec.submodule_search_locations
        else None
    )
    if path is None or not path.is_file():
        raise ModelNotAvailableError(
            "the CLIP BPE vocabulary (open_clip/bpe_simple_vocab_16e6.txt.gz) was not found; "
            "install open-clip-torch, which ships it"
        )
    return path


def write_clip_vocabulary(folder: Path) -> tuple[Path, Path]:
    """Write CLIP's `vocab.json` and `merges.txt` from open-clip's BPE file into `folder`.

    Same construction as OpenAI's CLIP tokenizer: 256 byte symbols, the same with the end-of-word
    marker `</w>`, one token per merge, then the two special tokens (49408 in all).
    """
    with gzip.open(_open_clip_vocabulary(), "rt", encoding="utf-8") as bpe_file:
        lines = bpe_file.read().split("\n")
    # Line 0 is a version header; CLIP uses the first 49152 - 256 - 2 merges.
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_symbols = list(bytes_to_unicode().values())
    tokens = [
        *byte_symbols,
        *(symbol + "</w>" for symbol in byte_symbols),
        *("".join(merge.split()) for merge in merges),
        "<|startoftext|>",
        "<|endoftext|>",
    ]
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def build_clip_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = write_clip_vocabulary(Path(folder))
        return CLIPTokenizer(
            str(vocab_file), str(merges_file), model_max_length=CLIP_CONTEXT_LENGTH
        )


def text_seen(pipeline: Any, prompt: str) -> tuple[str, int, int]:
    """(the text the pipeline's text encoder reads of `prompt`, its length in tokens with the
    start and end tokens, the encoder's limit, 77 for CLIP). diffusers and the training loop
    truncate a longer prompt to the start token, the first limit - 2 tokens and the end token;
    textual-inversion placeholders count with all their vectors."""
    tokenizer = pipeline.tokenizer
    text = prompt
    if hasattr(pipeline, "maybe_convert_prompt"):
        text = pipeline.maybe_convert_prompt(prompt, tokenizer)
    ids = tokenizer(text, truncation=False, verbose=False).input_ids
    limit = tokenizer.model_max_length
    if len(ids) <= limit:
        return prompt, len(ids), limit
    return tokenizer.decode(ids[1 : limit - 1]).strip(), len(ids), limit


def long_text_message(
    key: str,
    text: str,
    seen: str,
    record: str,
    *,
    tokens: int | None = None,
    limit: int | None = None,
    field: str = "prompt_seen",
) -> str:
    """The one warning for a text the text encoder reads only in part: the param `key` giving
    `text`, what the model sees, and where (`record`, `field`) that text is recorded. `tokens`
    and `limit` are said when known (an image reused from an earlier run has no tokenizer)."""
    counted = f", {tokens} tokens," if tokens else ","
    reads = f" ({limit} with its start and end tokens)" if limit else ""
    return (
        f"{key} gives {text!r}{counted} more than the text encoder reads{reads}: the model sees "
        f"only {seen!r}. Shorten it; {record} records that text as {field}."
    )


def long_text_warning(pipeline: Any, text: str, key: str, record: str) -> tuple[str, str | None]:
    """(the text seen, a warning naming the param `key` and where the text seen is recorded
    when the text encoder reads only part of `text`, else None)."""
    seen, tokens, limit = text_seen(pipeline, text)
    if seen == text:
        return text, None
    return seen, long_text_message(key, text, seen, record, tokens=tokens, limit=limit)
