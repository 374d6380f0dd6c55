"""Generation modes (`generate.mode`): txt2img, img2img and controlnet, one entry each.

An entry says whether images start from a real train image, which settings it adds to the
manifest and to an image's key, how the txt2img pipeline becomes the mode's pipeline, what the
real image is turned into, and the mode's pipeline arguments. Adding a mode is one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from diffusers import (
    AutoPipelineForImage2Image,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetPipeline,
)
from PIL import Image

from synthdet.core.data import DataError
from synthdet.params import GenerateParams, img2img_steps


def guided(settings: GenerateParams) -> bool:
    """Classifier-free guidance is on: diffusers uses it (and the negative prompt) only above 1."""
    return settings.guidance_scale > 1


def control_map(image: Image.Image, kind: str, low: int = 100, high: int = 200) -> Image.Image:
    """The ControlNet conditioning image: Canny edges or Sobel gradient magnitude (3 channels)."""
    grey = np.asarray(image.convert("L"))
    if kind == "canny":
        edges = cv2.Canny(grey, low, high)
    elif kind == "sobel":
        gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
        magnitude = np.sqrt(gx**2 + gy**2)
        edges = np.clip(255 * magnitude / max(float(magnitude.max()), 1e-6), 0, 255)
        edges = edges.astype(np.uint8)
    else:
        raise ValueError(f"unknown control map {kind!r}")
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def _nothing(*_: Any) -> dict:
    return {}


def _same_pipeline(pipeline: Any, family: str, controlnet: Any) -> Any:
    return pipeline


def _same_image(image: Image.Image, settings: GenerateParams) -> Image.Image:
    return image


def _image_to_image(pipeline: Any, family: str, controlnet: Any) -> Any:
    return AutoPipelineForImage2Image.from_pipe(pipeline)


def _controlnet_pipeline(pipeline: Any, family: str, controlnet: Any) -> Any:
    if controlnet is None:
        raise DataError("generate.mode=controlnet needs a ControlNet model")
    components = dict(pipeline.components)
    if family == "sdxl":
        return StableDiffusionXLControlNetPipeline(**components, controlnet=controlnet)
    return StableDiffusionControlNetPipeline(
        **components,
        controlnet=controlnet,
        requires_safety_checker=components.get("safety_checker") is not None,
    )


def _control_image(image: Image.Image, s: GenerateParams) -> Image.Image:
    return control_map(image, s.control, s.canny_low, s.canny_high)


@dataclass(frozen=True)
class Mode:
    name: str
    uses_source: bool  # every image starts from a real train image of its subject
    description: Callable[[GenerateParams], dict]  # the mode's settings in every manifest row
    record: Callable[[GenerateParams], dict]  # what the manifest adds: the settings as run
    identity: Callable[[GenerateParams, str | None], dict]  # (settings, ControlNet revision)
    pipeline: Callable[[Any, str, Any], Any]  # (txt2img pipeline, family, ControlNet)
    condition: Callable[[Image.Image, GenerateParams], Image.Image]  # real image -> input
    # (settings, conditions, shared.resolution) -> pipeline kwargs
    inputs: Callable[[GenerateParams, list, int], dict]
    uses_controlnet: bool = False  # the engine needs generate.controlnet_model


MODES = {
    m.name: m
    for m in (
        Mode(
            "txt2img",
            uses_source=False,
            description=_nothing,
            record=_nothing,
            identity=_nothing,
            pipeline=_same_pipeline,
            condition=_same_image,
            inputs=lambda s, images, resolution: {"height": resolution, "width": resolution},
        ),
        Mode(
            "img2img",
            uses_source=True,
            # vae_residual named only when on: images made without it keep their keys
            description=lambda s: (
                {"strength": s.strength} | ({"vae_residual": True} if s.vae_residual else {})
            ),
            record=lambda s: {"denoising_steps": img2img_steps(s.strength, s.num_inference_steps)},
            identity=_nothing,
            pipeline=_image_to_image,
            condition=_same_image,
            inputs=lambda s, images, resolution: {"image": images, "strength": s.strength},
        ),
        Mode(
            "controlnet",
            uses_source=True,
            description=lambda s: {"control": s.control, "controlnet_model": s.controlnet_model},
            record=_nothing,
            identity=lambda s, revision: {
                "controlnet_revision": revision,
                "canny": [s.canny_low, s.canny_high],
                "controlnet_conditioning_scale": s.controlnet_conditioning_scale,
            },
            pipeline=_controlnet_pipeline,
            condition=_control_image,
            inputs=lambda s, images, resolution: {
                "image": images,
                "height": resolution,
                "width": resolution,
                "controlnet_conditioning_scale": s.controlnet_conditioning_scale,
            },
            uses_controlnet=True,
        ),
    )
}


def engine_description(settings: GenerateParams, resolution: int) -> dict:
    """The generation settings every manifest row repeats, as used (`resolution`:
    shared.resolution): without classifier-free guidance (guidance_scale <= 1) the negative
    prompt is never encoded, so it is None."""
    return {
        "mode": settings.mode,
        "negative_prompt": settings.negative_prompt if guided(settings) else None,
        "scheduler": settings.scheduler,
        "steps": settings.num_inference_steps,
        "guidance_scale": settings.guidance_scale,
        "resolution": resolution,
        **MODES[settings.mode].description(settings),
    }


def engine_record(settings: GenerateParams, resolution: int) -> dict:
    """What the manifest says of the engine: the description, whether classifier-free guidance
    ran, and for img2img the denoising steps really run (int(strength x steps))."""
    return {
        **engine_description(settings, resolution),
        "classifier_free_guidance": guided(settings),
        **MODES[settings.mode].record(settings),
    }
