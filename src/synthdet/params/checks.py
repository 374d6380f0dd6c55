"""Checks across sections, run whenever a `Params` is made (parsed, or changed with
dataclasses.replace): combinations a later stage could not run, or settings with no effect."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from synthdet.params import methods
from synthdet.params.methods import subject_caption
from synthdet.params.parsing import _fields, _require

if TYPE_CHECKING:
    from synthdet.params import Params


def _names_subject(template: str, token: str) -> bool:
    """Whether a prompt template names the subject: its {identifier} field, or the token itself."""
    return "identifier" in _fields(template) or (
        re.search(rf"(?<![\w<]){re.escape(token)}(?![\w>])", template) is not None
    )


def _check_settings_take_effect(params: Params) -> None:
    """Settings of different sections that together would produce nothing or have no effect."""
    method_name = params.personalize.method
    subjects = params.shared.subjects
    generate = params.generate
    for name, subject in subjects.items():
        token = methods.method(method_name).concept_token(subject.identifier)
        own = generate.subjects.get(name)
        key = (
            f"generate.subjects.{name}.prompts"
            if own is not None and own.prompts is not None
            else "generate.prompts"
        )
        for i, template in enumerate(generate.templates(name)):
            _require(
                _names_subject(template, token),
                f"{key}[{i}]",
                f"{template!r} never names the subject (no {{identifier}}), so its images "
                f"would not show the personalised {name}; add {{identifier}}, e.g. "
                "'a photo of {identifier} {class_noun}'",
            )
    _require(
        sum(generate.count(name) for name in subjects) > 0,
        "generate.num_images",
        "is 0 for every subject, so generate would make no image and the synthetic and mixed "
        "detectors would have nothing to train on; set generate.num_images >= 1",
    )
    if methods.method(method_name).new_token and params.caption.captioner == "template":
        for name, subject in subjects.items():
            token = methods.method(method_name).concept_token(subject.identifier)
            caption = subject_caption(
                params.caption.template,
                subject.identifier,
                subject.class_noun,
                "",
                method_name,
                check=False,
            )
            _require(
                token in caption,
                "caption.template",
                f"{params.caption.template!r} gives captions without the placeholder {token} "
                f"(subject {name}: {caption!r}), and personalize.method textual_inversion "
                "trains only that token, so nothing would be learned; add {identifier}, e.g. "
                "'a photo of {identifier}{objects}'",
            )
    filters = generate.filters
    if filters.outliers == "realism" and generate.sources == "handful":
        for name, subject in subjects.items():
            _require(
                filters.realism_k < subject.images,
                "generate.filters.realism_k",
                f"({filters.realism_k}) is not below shared.subjects.{name}.images "
                f"({subject.images}): the realism filter measures generated images against the "
                "subject's handful (generate.sources handful), and its k-NN manifold needs more "
                "than k real images, so generate would stop after making every image; lower "
                "realism_k (e.g. 3), or set generate.sources=train",
            )
    _require(
        not params.annotate_with_baseline.source_boxes or generate.mode != "txt2img",
        "annotate_with_baseline.source_boxes",
        "is true, but generate.mode is 'txt2img': txt2img images have no source train image, "
        "so no source box would ever be offered; set generate.mode=img2img (or controlnet), or "
        "annotate_with_baseline.source_boxes=false",
    )
    count = params.class_images.count
    if count > 0:
        personalize = params.personalize
        _require(
            method_name in methods.PRIOR_METHODS,
            "class_images.count",
            f"is {count}, but personalize.method {method_name!r} uses no class images (prior "
            "preservation belongs to dreambooth and dreambooth_lora), so they would be drawn "
            "for nothing; set class_images.count=0",
        )
        for key in ("prior_loss_weight", "class_batch_size"):
            _require(
                getattr(personalize, key) > 0,
                f"personalize.{key}",
                f"is 0, so the {count} class images per subject (class_images.count) never "
                "reach the loss; set class_images.count=0 to train without prior preservation, "
                f"or personalize.{key} > 0",
            )


def _check_base_scale(params: Params) -> None:
    """builtin:tiny's levels and training crops against the one image scale, shared.resolution."""
    base, resolution = params.base, params.shared.resolution
    latent_size = resolution // 2 ** (len(base.vae_channels) - 1)
    _require(
        latent_size % 2 ** (len(base.unet_channels) - 1) == 0,
        "base.unet_channels",
        f"has too many levels for {latent_size} px latents (shared.resolution {resolution} / "
        "2**(len(base.vae_channels) - 1) must divide by 2**(levels - 1)); drop a level or "
        "raise shared.resolution",
    )
    for key, unit in (("vae_crop", 8), ("unet_crop", base.crop_unit)):
        crop = getattr(base, key)
        _require(
            crop <= resolution,
            f"base.{key}",
            f"({crop}) is larger than the images it is cut from (shared.resolution "
            f"{resolution}); set it to at most {resolution // unit * unit}",
        )


def _check_detector_classes(params: Params) -> None:
    """The detectors' classes are shared.class_names: ultralytics' `single_cls` would make them
    one 'item', and its `classes` keeps only the labels of those ids (one that shared.class_names
    lacks keeps nothing)."""
    args, names = params.train_detector.train_args(), params.shared.class_names
    _require(
        not args.get("single_cls"),
        "train_detector.yolo.single_cls",
        f"is set, but ultralytics then trains one class 'item' instead of shared.class_names "
        f"{list(names)}, so annotate and evaluate would refuse the trained detectors; remove "
        "it (shared.class_names lists the classes)",
    )
    classes = args.get("classes")
    if classes is None:
        return
    ids = classes if isinstance(classes, list | tuple) else [classes]
    for class_id in ids:
        _require(
            isinstance(class_id, int)
            and not isinstance(class_id, bool)
            and 0 <= class_id < len(names),
            "train_detector.yolo.classes",
            f"holds {class_id!r}, but the class ids are 0..{len(names) - 1} "
            f"(shared.class_names {list(names)}), so it would keep no label; use those ids, or "
            "remove train_detector.yolo.classes to train on every class",
        )


def check_across_sections(params: Params) -> None:
    """Checks that involve two sections; run whenever a `Params` is made (parsed, or changed with
    dataclasses.replace), so every stage, the first one included, refuses a combination that a
    later stage could not run."""
    _require(
        params.shared.seed in params.train_detector.seeds,
        "shared.seed",
        f"({params.shared.seed}) must be one of 'train_detector.seeds' "
        f"{list(params.train_detector.seeds)}: the real detector of shared.seed is the annotator; "
        f"e.g. -S shared.seed={params.train_detector.seeds[0]}",
    )
    params.generate.check_subjects(list(params.shared.subjects))
    _check_base_scale(params)
    _check_detector_classes(params)
    _check_settings_take_effect(params)
    _check_few_shot(params)


def _check_few_shot(params: Params) -> None:
    """The few-shot variants can be composed: enough generated images, counts above the handful."""
    handful = sum(subject.images for subject in params.shared.subjects.values())
    few_shot = params.few_shot
    for count in few_shot.real_image_counts:
        _require(
            count > handful,
            "few_shot.real_image_counts",
            f"holds {count}, but the handful (shared.subjects.*.images) is already {handful} "
            "images (the variant `handful`); use counts above it, e.g. "
            f"{[handful * 2, handful * 4]}",
        )
    if "synthetic" in few_shot.sources:
        generated = sum(params.generate.count(name) for name in params.shared.subjects)
        _require(
            generated >= few_shot.extra_images,
            "few_shot.extra_images",
            f"({few_shot.extra_images}) is more than the {generated} images generate makes "
            "(generate.num_images, per subject): handful-synthetic would get fewer images than "
            "the other sources; raise generate.num_images or lower few_shot.extra_images",
        )
