"""Personalisation methods (`personalize.method`): the one place a method is named.

Each entry says what the method trains (its weight format: the setup, save and apply live in
`synthdet.personalization.adapters`, one implementation per format), whether it uses DreamBooth's
prior preservation, and how prompts and captions name the subject. Adding a method is one entry
here (and a weight format there if it trains something new). No torch: params reads it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from synthdet.core.data import DataError


class Weights(enum.Enum):
    """What a method trains and writes."""

    LORA_LAYERS = "LoRA layers"  # peft LoRA on the UNet (optionally the text encoders)
    FULL = "full weights"  # the whole UNet (optionally the text encoders), diffusers folders
    EMBEDDINGS = "token embeddings"  # a new placeholder token's vectors (textual inversion)


@dataclass(frozen=True)
class Method:
    name: str
    weights: Weights
    uses_prior: bool  # DreamBooth's prior-preservation loss on class images
    # The subject is a new placeholder token `<identifier>` that stands for the whole concept:
    # prompts and captions drop the class noun, and only the token's vectors train.
    new_token: bool

    def concept_token(self, identifier: str) -> str:
        """What names the subject in prompts: the identifier, or the new placeholder token
        `<identifier>` (a token the tokenizer does not have yet)."""
        if not self.new_token or (identifier.startswith("<") and identifier.endswith(">")):
            return identifier
        return f"<{identifier}>"

    def prompt_class_noun(self, class_noun: str) -> str:
        """The class noun as prompts and captions carry it: none beside a new token."""
        return "" if self.new_token else class_noun

    def instance_prompt(self, identifier: str, class_noun: str) -> str:
        """'a photo of sks apple tree', or 'a photo of <sks>' for a new token."""
        noun = self.prompt_class_noun(class_noun)
        return f"a photo of {self.concept_token(identifier)}" + (f" {noun}" if noun else "")


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("lora", Weights.LORA_LAYERS, uses_prior=False, new_token=False),
        Method("dreambooth", Weights.FULL, uses_prior=True, new_token=False),
        Method("dreambooth_lora", Weights.LORA_LAYERS, uses_prior=True, new_token=False),
        Method("textual_inversion", Weights.EMBEDDINGS, uses_prior=False, new_token=True),
    )
}
METHOD_NAMES = tuple(METHODS)
PRIOR_METHODS = tuple(name for name, m in METHODS.items() if m.uses_prior)


def method(name: str) -> Method:
    """The registry entry of `personalize.method` (params has checked the name)."""
    if name not in METHODS:
        raise ValueError(f"unknown personalisation method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


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
    method_name: str,
    description: str = "",
    check: bool = True,
) -> str:
    """The training caption of one image of a subject; `description` is BLIP's text, if any.

    DreamBooth / LoRA: 'a photo of sks apple tree with 12 apples'. A method with a new token
    (textual inversion): the placeholder stands for the whole concept, so the class noun never
    appears: 'a photo of <sks> with 12 apples'. Such a caption without the placeholder (it is all
    the method trains) is an error unless `check` is False.
    """
    entry = method(method_name)
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
