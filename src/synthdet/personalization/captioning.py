"""Captions for the personalisation images: an identifier template, optionally BLIP-enriched."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from synthdet import methods
from synthdet.data import Box, DataError
from synthdet.errors import ModelNotAvailableError


def objects_phrase(boxes: Sequence[Box], class_names: Sequence[str]) -> str:
    """' with 12 apples and 1 pear' from the label boxes ('' for a background image)."""
    counts = Counter(box.class_id for box in boxes)
    parts = [
        f"{n} {class_names[class_id]}{'' if n == 1 else 's'}"
        for class_id, n in sorted(counts.items())
    ]
    return f" with {' and '.join(parts)}" if parts else ""


def template_caption(template: str, identifier: str, class_noun: str, objects: str) -> str:
    return template.format(identifier=identifier, class_noun=class_noun, objects=objects)


def replace_concept(text: str, class_noun: str, placeholder: str) -> str:
    """Captions of a new-token method: the class noun (or its head word, 'tree' of 'apple tree') is
    replaced by the placeholder, which is learned to mean the subject; no duplicate placeholder."""
    for word in (class_noun, class_noun.split()[-1]):
        text = re.sub(rf"\b{re.escape(word)}\b", placeholder, text, flags=re.IGNORECASE)
    doubled = rf"{re.escape(placeholder)}(\s+{re.escape(placeholder)})+"
    return re.sub(r"\s+", " ", re.sub(doubled, placeholder, text)).strip()


def subject_caption(
    template: str,
    identifier: str,
    class_noun: str,
    objects: str,
    method: str,
    description: str = "",
    check: bool = True,
) -> str:
    """The training caption of one image of a subject; `description` is BLIP's text, if any.

    DreamBooth / LoRA: 'a photo of sks apple tree with 12 apples'. A method with a new token
    (textual inversion): the placeholder stands for the whole concept, so the class noun never
    appears: 'a photo of <sks> with 12 apples'. Such a caption without the placeholder (it is all
    the method trains) is an error unless `check` is False.
    """
    entry = methods.method(method)
    token = entry.concept_token(identifier)
    caption = template_caption(template, token, entry.prompt_class_noun(class_noun), objects)
    if description:
        caption = f"{caption}, {description}"
    if entry.new_token:
        caption = replace_concept(caption, class_noun, token)
        if check and token not in caption:
            raise DataError(
                f"textual inversion caption {caption!r} does not contain the placeholder {token}, "
                "the only token the method trains, so this image would teach it nothing; add "
                "{identifier} to caption.template"
            )
    return re.sub(r"\s+", " ", caption).strip()


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
