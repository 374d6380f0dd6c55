"""Training examples: latents of the instance and class images (flipped copies included) and,
when no text encoder trains, prompt embeddings, computed once; SDXL size/crop conditioning."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from synthdet.artifacts.class_images import ClassImagesInfo
from synthdet.diffusion.images import crop_box, load_images, with_flips
from synthdet.diffusion.loading import family_of, tokenizers_and_encoders
from synthdet.diffusion.training import encode_latent_distributions
from synthdet.diffusion.vocabulary import text_seen
from synthdet.params import PersonalizeParams, SubjectParams, methods


def load_images_with_crops(
    paths: Sequence[Path], resolution: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images resized (shorter side) and centre-cropped to `resolution` in [-1, 1], with SDXL's
    size/crop conditioning per image: (original height, width, crop top, left, target h, w)."""
    pixels = load_images(paths, resolution)
    conditions = []
    for path in paths:
        with Image.open(path) as image:
            width, height = image.size
        _, _, left, top = crop_box(width, height, resolution)
        conditions.append((height, width, top, left, resolution, resolution))
    return pixels, torch.tensor(conditions, dtype=torch.float32)


def flip_conditions(conditions: torch.Tensor, resolution: int) -> torch.Tensor:
    """Size/crop conditions of the mirrored images (the crop's left edge mirrors too)."""
    flipped = conditions.clone()
    resized_width = conditions[:, 1] * resolution / conditions[:, :2].min(dim=1).values
    flipped[:, 3] = (resized_width.round() - resolution - conditions[:, 3]).clamp(min=0)
    return torch.cat([conditions, flipped])


@dataclass
class Examples:
    """Training examples with what is cached: latent distributions, and prompt embeddings
    (None while a text encoder trains; then the token ids are encoded every step)."""

    latent_distributions: torch.Tensor  # (n, 2 * latent channels, h, w): mean and log-variance
    time_ids: torch.Tensor  # (n, 6) SDXL size/crop conditioning (unused by SD)
    token_ids: list[torch.Tensor]  # per text encoder, (n, 77)
    embeddings: torch.Tensor | None = None  # (n, 77, dim)
    pooled: torch.Tensor | None = None  # (n, dim) SDXL pooled text embedding

    def __len__(self) -> int:
        return len(self.latent_distributions)

    def take(self, index: torch.Tensor) -> Examples:
        return Examples(
            self.latent_distributions[index],
            self.time_ids[index],
            [ids[index] for ids in self.token_ids],
            None if self.embeddings is None else self.embeddings[index],
            None if self.pooled is None else self.pooled[index],
        )

    @staticmethod
    def cat(parts: Sequence[Examples]) -> Examples:
        def joined(values):
            return None if values[0] is None else torch.cat(values)

        return Examples(
            torch.cat([p.latent_distributions for p in parts]),
            torch.cat([p.time_ids for p in parts]),
            [torch.cat(ids) for ids in zip(*(p.token_ids for p in parts), strict=True)],
            joined([p.embeddings for p in parts]),
            joined([p.pooled for p in parts]),
        )


CAPTIONS_SEEN = "captions.jsonl"  # in metrics/personalize/draw<d>/<subject>/: what the model read


def captions_seen(
    pipeline: DiffusionPipeline, paths: Sequence[Path], captions: Sequence[str]
) -> tuple[list[dict], str | None]:
    """Each caption as the text encoder reads it (with the method's tokens added): rows
    {file, caption, tokens, seen} for CAPTIONS_SEEN, and a warning naming caption.template
    when a caption is longer than the encoder reads, so that training sees it truncated."""
    rows, limit = [], None
    for path, caption in zip(paths, captions, strict=True):
        seen, tokens, limit = text_seen(pipeline, caption)
        rows.append({"file": Path(path).name, "caption": caption, "tokens": tokens, "seen": seen})
    long = [row for row in rows if row["seen"] != row["caption"]]
    if not long:
        return rows, None
    first = long[0]
    return rows, (
        f"{len(long)} of {len(rows)} captions are longer than the text encoder reads ({limit} "
        f"tokens with its start and end tokens), e.g. {first['file']}: {first['tokens']} tokens, "
        f"of which the model trains on {first['seen']!r}. Shorten caption.template (BLIP: "
        f"caption.max_new_tokens); {CAPTIONS_SEEN} next to the metrics records the text seen."
    )


def tokenize(pipeline: DiffusionPipeline, prompts: Sequence[str]) -> list[torch.Tensor]:
    """Token ids per tokenizer; multi-vector placeholders are expanded ('<sks>' -> '<sks>
    <sks>_1 ...') exactly as the pipeline does at inference, so every vector trains."""
    ids = []
    for tokenizer, _ in tokenizers_and_encoders(pipeline):
        expanded = pipeline.maybe_convert_prompt(list(prompts), tokenizer)
        ids.append(
            tokenizer(
                expanded,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
        )
    return ids


def encode_tokens(
    text_encoders: Sequence[torch.nn.Module], token_ids: Sequence[torch.Tensor], family: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompt embeddings as the pipelines compute them: SD the last hidden state, SDXL the
    penultimate hidden states of both encoders side by side plus the pooled projection."""
    if family == "sd":
        encoder = text_encoders[0]
        return encoder(token_ids[0].to(encoder.device))[0], None
    states, pooled = [], None
    for encoder, ids in zip(text_encoders, token_ids, strict=True):
        output = encoder(ids.to(encoder.device), output_hidden_states=True)
        states.append(output.hidden_states[-2])
        pooled = output[0]  # text_embeds of CLIPTextModelWithProjection (the last encoder)
    return torch.cat(states, dim=-1), pooled


@torch.no_grad()
def make_examples(
    pipeline: DiffusionPipeline,
    image_paths: Sequence[Path],
    prompts: Sequence[str],
    resolution: int,
    cache_text: bool,
    batch_size: int = 8,
) -> Examples:
    """Examples of the images and their mirror images (same prompt), latents encoded once."""
    pixels, conditions = load_images_with_crops(image_paths, resolution)
    vae = pipeline.vae
    latents = encode_latent_distributions(vae, with_flips(pixels).to(vae.dtype), batch_size).float()
    prompts = list(prompts) * 2
    examples = Examples(
        latents, flip_conditions(conditions, resolution), tokenize(pipeline, prompts)
    )
    if cache_text:
        encoders = [encoder for _, encoder in tokenizers_and_encoders(pipeline)]
        embeddings, pooled = encode_tokens(encoders, examples.token_ids, family_of(pipeline))
        examples.embeddings = embeddings.float().cpu()
        examples.pooled = None if pooled is None else pooled.float().cpu()
    return examples


def prior_examples(
    pipeline,
    class_dir: Path,
    subject: SubjectParams,
    settings: PersonalizeParams,
    resolution: int,
    cache_text: bool,
) -> tuple[Examples | None, dict]:
    """The class examples (`resolution` px) when the method uses prior preservation and class
    images exist."""
    uses_prior = (
        methods.method(settings.method).uses_prior
        and settings.prior_loss_weight > 0
        and settings.class_batch_size > 0
    )
    if not uses_prior:
        return None, {"prior_preservation": False}
    info = ClassImagesInfo.read(class_dir)
    info.verify(class_dir, subject.class_noun, settings.base_model)
    paths = ClassImagesInfo.images(class_dir)
    if not paths:
        return None, {"prior_preservation": False}
    prompts = [info.prompt] * len(paths)
    examples = make_examples(pipeline, paths, prompts, resolution, cache_text)
    return examples, {
        "prior_preservation": True,
        "class_prompt": info.prompt,
        "class_images": len(paths),
        "prior_loss_weight": settings.prior_loss_weight,
        "class_batch_size": settings.class_batch_size,
    }
