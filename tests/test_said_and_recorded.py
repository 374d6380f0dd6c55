"""Results that would silently train on nothing are said and recorded (issue 16, kind 2):
an annotation pass that labels no box (annotate-with-baseline, pseudo-label), a detector variant
whose labels (or extra images' labels) hold no box, and a textual-inversion caption without the
placeholder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthdet.analysis import report
from synthdet.artifacts.class_images import ClassImagesInfo
from synthdet.artifacts.evaluation import EVALUATION, Evaluation
from synthdet.artifacts.metrics import (
    AnnotateMetrics,
    ExtraImagesMetrics,
    PrepareMetrics,
    read_extra_images_metrics,
)
from synthdet.core.data import DataError
from synthdet.detectors import detection, variants
from synthdet.diffusion.vocabulary import long_text_warning
from synthdet.params.methods import subject_caption
from synthdet.personalization.examples import captions_seen
from synthdet.stages import annotate_with_baseline, class_images, pseudo_label, train_detector
from tests.conftest import REPO, write_tiny_yolo_folder
from tests.tiny_models import tiny_sd_pipeline


def warnings(capsys) -> list[str]:
    """Our warning lines on stderr (not MLflow's or the libraries' logging)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]


def nothing_found(detector, images, imgsz, confidence, iou) -> list[detection.Detections]:
    """A detector that finds nothing, as the real baseline does on the offline default's images."""
    found = []
    for image in images:
        with Image.open(image) as opened:
            width, height = opened.size
        empty = np.zeros((0, 4))
        found.append(detection.Detections(Path(image), width, height, empty, empty[:, 0], []))
    return found


def test_an_annotation_pass_without_boxes_is_said_and_flagged(
    params, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(detection, "load_detector", lambda folder, names: object())
    monkeypatch.setattr(detection, "predict", nothing_found)
    annotator_only = dataclasses.replace(params.annotate_with_baseline, source_boxes=False)
    params = dataclasses.replace(params, annotate_with_baseline=annotator_only)
    val = write_tiny_yolo_folder(tmp_path / "val", photos=1, tiles=2)
    generated = tmp_path / "generated" / "images"
    generated.mkdir(parents=True)
    for index, image in enumerate(sorted((val / "images").iterdir())):
        Image.open(image).save(generated / f"apple_tree_{index:06d}.png")
    metrics = annotate_with_baseline.run(
        params, generated.parent, tmp_path / "baseline", val, tmp_path / "out", tmp_path / "a.json"
    )
    assert metrics["boxes"] == 0 and metrics["empty_label_set"] is True
    assert json.loads((tmp_path / "a.json").read_text())["empty_label_set"] is True
    assert warnings(capsys) == [
        "warning: annotate-with-baseline labelled no box in any of the 2 generated images "
        "(annotate_with_baseline.confidence=0.25): the synthetic variant trains on background "
        "only, and metrics/draws/draw<d>/annotate.json says empty_label_set: true. Lower "
        "annotate_with_baseline.confidence, label by construction with generate.mode=img2img "
        "and annotate_with_baseline.source_boxes=true, or look at the images "
        "(metrics/synthetic_grid.png)."
    ]


@pytest.fixture
def no_training(monkeypatch):
    """detection.train_detector replaced: what matters here is what happens before it."""
    seen = []

    def train(**kwargs):
        seen.append(kwargs)
        return detection.TrainingResult(4, [{"epoch": 1, "metrics/mAP50-95(B)": 0.0}], {})

    monkeypatch.setattr(detection, "train_detector", train)
    return seen


def test_a_variant_without_boxes_is_said_and_flagged(params, tmp_path, no_training, capsys):
    real = write_tiny_yolo_folder(tmp_path / "real", photos=2, tiles=2)
    synthetic = write_tiny_yolo_folder(tmp_path / "synthetic", photos=1, tiles=3)
    for label in (synthetic / "labels").iterdir():
        label.write_text("")  # the annotator found nothing

    def run(variant: variants.Variant) -> dict:
        folders = {"real": real, "extra": synthetic}
        out = tmp_path / variant.name
        return train_detector.run(
            params,
            "train",
            variant,
            42,
            folders,
            real,
            out,
            tmp_path / "r.csv",
            draw=0 if variant.drawn else None,
        )

    metrics = run(variants.generated("synthetic"))
    assert (metrics["extra_boxes"], metrics["real_boxes"]) == (0, 0)
    assert metrics["empty_label_set"] == 1
    assert warnings(capsys) == [
        "warning: detector variant synthetic (seed 42) trains on 3 images whose labels hold no "
        "box: it can only learn that there is nothing to find (its metrics say "
        "empty_label_set: 1). For auto-labelled images lower annotate_with_baseline.confidence, "
        "or label by construction with generate.mode=img2img and "
        "annotate_with_baseline.source_boxes=true."
    ]
    # With the real images' boxes the set is not empty, but the extra images teach background.
    metrics = run(variants.generated("mixed"))
    real_boxes = sum(len(p.read_text().splitlines()) for p in (real / "labels").iterdir())
    assert (metrics["real_boxes"], metrics["extra_boxes"]) == (real_boxes, 0)
    assert (metrics["empty_label_set"], metrics["empty_extra_labels"]) == (0, 1)
    assert warnings(capsys) == [
        "warning: detector variant mixed (seed 42): its 3 extra images (synthetic) hold no box, "
        "so it learns their objects as background (its metrics say empty_extra_labels: 1; the "
        "report flags it). For auto-labelled images lower annotate_with_baseline.confidence, or "
        "label by construction with generate.mode=img2img and "
        "annotate_with_baseline.source_boxes=true."
    ]
    assert detection.empty_extra_labels_warning("handful-pseudo", 42, "pseudo", 64) == (
        "detector variant handful-pseudo (seed 42): its 64 extra images (pseudo) hold no box, so "
        "it learns their objects as background (its metrics say empty_extra_labels: 1; the "
        "report flags it). Lower annotate_with_baseline.confidence (pseudo-label's annotator), "
        "or drop pseudo from few_shot.sources."
    )
    # Real images only: nothing to say.
    metrics = run(variants.REAL)
    assert (metrics["empty_label_set"], metrics["empty_extra_labels"]) == (0, 0)
    assert warnings(capsys) == []
    assert len(no_training) == 3


def test_a_pseudo_label_pass_without_boxes_is_said_flagged_and_reported(
    params, tmp_path, monkeypatch, capsys
):
    """The committed default: pseudo-label finds no box on its 64 images at confidence 0.25."""
    monkeypatch.setattr(detection, "load_detector", lambda folder, names: object())
    monkeypatch.setattr(detection, "predict", nothing_found)
    params = dataclasses.replace(
        params, few_shot=dataclasses.replace(params.few_shot, extra_images=2)
    )
    train = write_tiny_yolo_folder(tmp_path / "train", photos=1, tiles=3)
    handful = tmp_path / "handful" / "apple_tree" / "images"
    handful.mkdir(parents=True)
    first = sorted((train / "images").iterdir())[0]
    (handful / first.name).write_bytes(first.read_bytes())
    metrics_file = tmp_path / "pseudo.json"
    metrics = pseudo_label.run(
        params, train / "images", tmp_path / "handful", tmp_path, tmp_path / "out", metrics_file
    )
    assert metrics["boxes"] == 0 and metrics["empty_label_set"] is True
    assert warnings(capsys) == [
        "warning: pseudo-label labelled no box in any of its 2 real images (the handful "
        "annotator at annotate_with_baseline.confidence=0.25): handful-pseudo trains on them as "
        "background, and pseudo.json says empty_label_set: true. Lower "
        "annotate_with_baseline.confidence, or drop pseudo from few_shot.sources."
    ]
    # the report reads the flag through the typed artifact
    extra = read_extra_images_metrics(metrics_file)
    assert extra == ExtraImagesMetrics(images=2, boxes=0, empty_label_set=True)
    evaluation = Evaluation.read(REPO / "metrics" / EVALUATION)
    lines = report.limits(
        params, evaluation, {}, PrepareMetrics.from_dict({}), AnnotateMetrics(), {"pseudo": extra}
    )
    assert (
        "**No box in any of the 2 pseudo images** (`empty_label_set` in their metrics): the "
        "annotator found nothing at annotate_with_baseline.confidence 0.25, so the variant "
        "trained on them learned their objects as background."
    ) in lines
    pseudo = dataclasses.replace(evaluation.variant("handful-pseudo"), empty_extra_labels=True)
    flagged = dataclasses.replace(
        evaluation, variants={**evaluation.variants, "handful-pseudo": pseudo}
    )
    table = report.detection_table(flagged, ["handful", "handful-pseudo"])
    assert [row.split(" | ")[0] for row in table[2:4]] == [
        "| `handful`",
        "| `handful-pseudo` **⚠ its extra images hold no box**",
    ]


def test_a_textual_inversion_caption_without_the_placeholder_stops_the_caption_stage():
    # BLIP's description can hold the class noun (it becomes the placeholder) or not
    assert subject_caption("a photo", "sks", "apple tree", "", "textual_inversion", "a tree") == (
        "a photo, a <sks>"
    )
    with pytest.raises(DataError) as caught:
        subject_caption("a photo", "sks", "apple tree", "", "textual_inversion", "a red fruit")
    assert str(caught.value) == (
        "textual inversion caption 'a photo, a red fruit' does not contain the placeholder "
        "<sks>, the only token the method trains, so this image would teach it nothing; add "
        "{identifier} to caption.template"
    )
    assert subject_caption("a photo", "sks", "apple tree", "", "lora", "a red fruit") == (
        "a photo, a red fruit"
    )


def test_a_caption_longer_than_the_text_encoder_reads_is_said_and_recorded():
    pipeline = tiny_sd_pipeline()
    short = "a photo of sks apple tree with 3 apples"
    long = "a photo of sks apple tree" + " in a green orchard" * 20
    rows, warning = captions_seen(pipeline, [Path("a.png"), Path("b.png")], [short, long])
    seen = "a photo of sks apple tree" + " in a green orchard" * 17 + " in"  # 75 tokens
    assert rows == [
        {"file": "a.png", "caption": short, "tokens": 11, "seen": short},
        {"file": "b.png", "caption": long, "tokens": 88, "seen": seen},
    ]
    assert warning == (
        "1 of 2 captions are longer than the text encoder reads (77 tokens with its start and "
        f"end tokens), e.g. b.png: 88 tokens, of which the model trains on {seen!r}. Shorten "
        "caption.template (BLIP: caption.max_new_tokens); captions.jsonl next to the metrics "
        "records the text seen."
    )
    assert captions_seen(pipeline, [Path("a.png")], [short]) == (rows[:1], None)


def test_a_preset_over_yolo_values_is_said(params, tmp_path, no_training, capsys):
    config = dataclasses.replace(params.train_detector, preset="genfusion")
    params = dataclasses.replace(params, train_detector=config)
    real = write_tiny_yolo_folder(tmp_path / "real", photos=2, tiles=2)
    folders = {"real": real}
    train_detector.run(
        params, "t", variants.REAL, 42, folders, real, tmp_path / "d", tmp_path / "r.csv"
    )
    assert warnings(capsys) == [
        "warning: train_detector.preset=genfusion overrides train_detector.yolo (optimizer: "
        "'AdamW' -> 'SGD'; lr0: 0.002 -> 0.01; close_mosaic: 2 -> 0); the MLflow run's yolo "
        "param records what was used."
    ]
    assert no_training[0]["yolo_args"]["optimizer"] == "SGD"


def test_class_images_say_and_record_the_ignored_negative_prompt_and_a_long_prompt(
    params, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(class_images, "load_pipeline", lambda *a, **k: tiny_sd_pipeline())
    long = "a photo of {class_noun}" + " in a green orchard" * 20
    settings = dataclasses.replace(
        params.class_images, count=1, guidance_scale=1.0, num_inference_steps=1, prompt=long
    )
    shared = dataclasses.replace(params.shared, resolution=32)
    base = dataclasses.replace(params.base, vae_crop=16, unet_crop=16)
    params = dataclasses.replace(params, shared=shared, base=base, class_images=settings)
    class_images.run(params, "apple_tree", tmp_path, tmp_path / "out")
    prompt = long.format(class_noun="apple tree")
    seen = "a photo of apple tree" + " in a green orchard" * 17 + " in a"  # 75 tokens
    assert warnings(capsys) == [
        "warning: class_images.guidance_scale=1.0 is <= 1: classifier-free guidance is off, so "
        "class_images.negative_prompt ('blurry, low quality') is ignored; class_images.json "
        "records negative_prompt: null. Set it above 1 (e.g. 5) to use guidance.",
        f"warning: class_images.prompt gives {prompt!r}, 87 tokens, more than the text encoder "
        f"reads (77 with its start and end tokens): the model sees only {seen!r}. Shorten it; "
        "class_images.json records that text as prompt_seen.",
    ]
    info = ClassImagesInfo.read(tmp_path / "out")
    assert (info.negative_prompt, info.guidance_scale) == (None, 1.0)
    assert (info.prompt, info.prompt_seen) == (prompt, seen)
    assert len(ClassImagesInfo.images(tmp_path / "out")) == 1


def test_the_base_prompt_read_in_part_is_said_naming_the_template():
    pipeline = tiny_sd_pipeline()
    prompt = "a photo of apple tree" + " in a green orchard" * 20
    seen, note = long_text_warning(
        pipeline, prompt, "the base prompt (class_images.prompt)", "the MLflow run"
    )
    assert seen == "a photo of apple tree" + " in a green orchard" * 17 + " in a"
    assert note == (
        f"the base prompt (class_images.prompt) gives {prompt!r}, 87 tokens, more than the text "
        f"encoder reads (77 with its start and end tokens): the model sees only {seen!r}. "
        "Shorten it; the MLflow run records that text as prompt_seen."
    )
    assert long_text_warning(pipeline, "a photo of apple tree", "k", "r") == (
        "a photo of apple tree",
        None,
    )
