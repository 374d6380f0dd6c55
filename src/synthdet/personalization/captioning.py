"""Captions for the personalisation images: what the label boxes show, optionally BLIP's text (the
caption itself, per method: `synthdet.params.methods.subject_caption`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from synthdet.core.data import Box
from synthdet.core.errors import ModelNotAvailableError


def objects_phrase(boxes: Sequence[Box], class_names: Sequence[str]) -> str:
    """' with 12 apples and 1 pear' from the label boxes ('' for a background image)."""
    counts = Counter(box.class_id for box in boxes)
    parts = [
        f"{n} {class_names[class_id]}{'' if n == 1 else 's'}"
        for class_id, n in sorted(counts.items())
    ]
    return f" with {' and '.join(parts)}" if parts else ""


class BlipCaptioner:
    """Image captions from a BLIP model (hub id or local folder) through transformers."""

    def __init__(self, model_name: str, max_new_tokens: int) -> None:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        try:
            self.processor = BlipProcessor.from_pretrained(model_name)
            self.model = BlipForConditionalGeneration.from_pretrained(
                model_name, use_safetensors=True
            ).eval()
        except OSError as exc:
            raise ModelNotAvailableError(
                f"caption.blip_model {model_name!r} cannot be loaded here ({exc}). Use a local "
                "folder saved with save_pretrained, set HF_HUB_OFFLINE=1 with the model in the "
                "Hugging Face cache, or caption.captioner=template."
            ) from exc
        self.max_new_tokens = max_new_tokens

    def __call__(self, image_paths: Sequence[Path]) -> list[str]:
        import torch

        images = [Image.open(path).convert("RGB") for path in image_paths]
        inputs = self.processor(images=images, return_tensors="pt")
        with torch.inference_mode():
            tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        return [
            text.strip() for text in self.processor.batch_decode(tokens, skip_special_tokens=True)
        ]
