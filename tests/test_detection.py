"""Detector training, prediction, annotation and evaluation on a tiny synthetic dataset.

MLflow logs into conftest's per-test throwaway store (autouse `isolated_mlflow`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from synthdet.artifacts.detector import DetectorVariant
from synthdet.artifacts.evaluation import Evaluation
from synthdet.core.data import Box, DataError, format_label, read_yolo_folder
from synthdet.core.errors import ModelNotAvailableError
from synthdet.detectors import detection, variants
from synthdet.extra import annotation
from synthdet.params import Params
from synthdet.stages import (
    annotate_with_baseline,
    check_images,
    evaluate,
    pseudo_label,
    train_detector,
)
from tests.conftest import load_test_params

SIZE = 64


def write_yolo_folder(folder: Path, count: int, seed: int) -> None:
    """`count` 64-px images of red 'apples' (rectangles) on green noise, with YOLO labels."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for index in range(count):
        pixels = np.random.default_rng(seed * 100 + index).integers(0, 60, (SIZE, SIZE, 3))
        pixels[..., 1] += 80
        image = Image.fromarray(pixels.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        boxes = []
        for _ in range(rng.randint(1, 3)):
            w, h = rng.randint(10, 20), rng.randint(10, 20)
            x, y = rng.randint(0, SIZE - w), rng.randint(0, SIZE - h)
            draw.rectangle((x, y, x + w - 1, y + h - 1), fill=(220, 30, 30))
            boxes.append(Box(0, (x + w / 2) / SIZE, (y + h / 2) / SIZE, w / SIZE, h / SIZE))
        image.save(folder / "images" / f"tile_{index}.jpg")
        (folder / "labels" / f"tile_{index}.txt").write_text(format_label(boxes))


def tiny_params() -> Params:
    """The test params with one 64-px epoch of yolov8n and every box the annotator finds."""
    params = load_test_params()
    yolo = {
        "epochs": 1,
        "imgsz": SIZE,
        "batch": 4,
        "nbs": 4,
        "workers": 0,
        "deterministic": True,
        "plots": False,
    }
    return dataclasses.replace(
        params,
        train_detector=dataclasses.replace(params.train_detector, model="yolov8n.yaml", yolo=yolo),
        annotate_with_baseline=dataclasses.replace(
            params.annotate_with_baseline, confidence=0.0, source_boxes=False
        ),
    )


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train the tiny detector once through the stage, with MLflow in a temporary store."""
    root = tmp_path_factory.mktemp("detection")
    write_yolo_folder(root / "train", 8, seed=1)
    write_yolo_folder(root / "val", 4, seed=2)
    before = {name: snapshot(root / name) for name in ("train", "val")}
    # Module-scoped, so conftest's per-test MLflow isolation does not apply: isolate it here.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setenv("DVC_ROOT", str(root))
        metrics = train_detector.run(
            tiny_params(),
            "train-real@42",
            variants.REAL,
            42,
            {"real": root / "train"},
            root / "val",
            root / "models" / "real",
            root / "metrics" / "train" / "real.csv",
        )
    return {"root": root, "before": before, "metrics": metrics}


def test_training_writes_weights_and_leaves_sources_untouched(trained: dict) -> None:
    root = trained["root"]
    for name in ("train", "val"):
        assert snapshot(root / name) == trained["before"][name], f"{name} folder was modified"
    assert sorted(p.name for p in (root / "models" / "real").iterdir()) == [
        "args.yaml",
        "variant.json",
        "weights.safetensors",
        "yolov8n.yaml",
    ]
    assert DetectorVariant.read(root / "models" / "real") == DetectorVariant(variants.REAL, 42)
    # no temporary path in the record: identical trainings give identical folders (DVC hashes)
    train_args = yaml.safe_load((root / "models" / "real" / "args.yaml").read_text())
    assert train_args["data"] == "TMPDIR/data/dataset.yaml"
    assert train_args["save_dir"] == "TMPDIR/runs/train"
    assert trained["metrics"]["train_images"] == 8
    assert (trained["metrics"]["real_images"], trained["metrics"]["extra_images"]) == (8, 0)
    with (root / "metrics" / "train" / "real.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["epoch"] for row in rows] == ["1"]
    assert "metrics/mAP50-95" in rows[0]


def test_ultralytics_settings_are_private() -> None:
    ultralytics = detection._ultralytics()
    from ultralytics.utils import SETTINGS

    assert "synthdet-ultralytics-" in str(SETTINGS.file)
    assert not SETTINGS["mlflow"] and not SETTINGS["sync"] and not SETTINGS["dvc"]
    assert ultralytics.__name__ == "ultralytics"


def test_annotate_writes_one_label_file_per_image(trained: dict, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    generated = tmp_path / "generated" / "images"
    generated.mkdir(parents=True)
    for index, image in enumerate(sorted((trained["root"] / "val" / "images").iterdir())):
        Image.open(image).save(generated / f"{index:05d}.png")
    out = tmp_path / "annotated"
    metrics = annotate_with_baseline.run(
        tiny_params(),
        generated.parent,
        trained["root"] / "models" / "real",
        trained["root"] / "val",
        out,
        tmp_path / "annotate.json",
    )
    samples = read_yolo_folder(out, 1)  # validates every label file
    assert [s.image.name for s in samples] == sorted(p.name for p in generated.iterdir())
    assert sorted(p.name for p in (out / "labels").iterdir()) == [
        f"{index:05d}.txt" for index in range(4)
    ]
    assert metrics["images"] == 4
    assert metrics["boxes"] == sum(len(s.boxes) for s in samples)
    assert json.loads((tmp_path / "annotate.json").read_text()) == metrics
    # The annotator is measured on the real val split before its labels are used.
    assert metrics["annotator.val_images"] == 4
    assert metrics["annotator.val_boxes"] == sum(
        len(s.boxes) for s in read_yolo_folder(trained["root"] / "val", 1)
    )
    for key in ("recall", "map50", "map50_95"):
        assert 0 <= metrics[f"annotator.{key}"] <= 1
    assert metrics["annotator.precision"] is None or 0 <= metrics["annotator.precision"] <= 1
    # The same labels as COCO JSON, for CVAT / Label Studio.
    coco = COCO(str(out / "annotations.json"))
    assert sorted(image["file_name"] for image in coco.dataset["images"]) == sorted(
        p.name for p in (out / "images").iterdir()
    )
    assert len(coco.getAnnIds()) == metrics["boxes"]
    assert [category["name"] for category in coco.loadCats(coco.getCatIds())] == ["apple"]


def test_reviewed_labels_replace_the_auto_labels_of_the_same_image(
    trained: dict, tmp_path: Path
) -> None:
    root = trained["root"]
    generated = tmp_path / "generated" / "images"
    generated.mkdir(parents=True)
    for index, image in enumerate(sorted((root / "val" / "images").iterdir())):
        Image.open(image).save(generated / f"{index:05d}.png")
    corrections = tmp_path / "corrections"
    (corrections / "images").mkdir(parents=True)
    (corrections / "labels").mkdir()
    reviewed = (Box(0, 0.5, 0.5, 0.25, 0.25), Box(0, 0.2, 0.2, 0.1, 0.1))
    # reviewed under another name: matched by content
    shutil.copy(generated / "00001.png", corrections / "images" / "review_a.png")
    (corrections / "labels" / "review_a.txt").write_text(format_label(reviewed))
    # an image that is no longer generated: counted, applied to nothing
    Image.new("RGB", (64, 64), "blue").save(corrections / "images" / "gone.png")
    (corrections / "labels" / "gone.txt").write_text(format_label(reviewed[:1]))
    params = tiny_params()
    metrics = annotate_with_baseline.run(
        params,
        generated.parent,
        root / "models" / "real",
        root / "val",
        tmp_path / "annotated",
        tmp_path / "annotate.json",
        corrections=corrections,
    )
    assert (metrics["corrected_images"], metrics["corrections_unused"]) == (1, 1)
    samples = {s.image.name: s.boxes for s in read_yolo_folder(tmp_path / "annotated", 1)}
    np.testing.assert_allclose(
        [dataclasses.astuple(b) for b in samples["00001.png"]],
        [dataclasses.astuple(b) for b in reviewed],
        atol=1e-6,
    )
    # without the folder's images, the auto-labels stay
    (tmp_path / "empty").mkdir()
    plain = annotate_with_baseline.run(
        params,
        generated.parent,
        root / "models" / "real",
        root / "val",
        tmp_path / "plain",
        tmp_path / "plain.json",
        corrections=tmp_path / "empty",
    )
    assert plain["corrected_images"] == 0
    assert read_yolo_folder(tmp_path / "plain", 1)[1].boxes != samples["00001.png"]


def detections(image: str, rows: list[list[float]], scores: list[float]) -> detection.Detections:
    return detection.Detections(
        image=Path(image),
        width=100,
        height=100,
        xyxy=np.array(rows, dtype=np.float64).reshape(-1, 4),
        scores=np.array(scores, dtype=np.float64),
        class_ids=np.zeros(len(scores), dtype=np.int64),
    )


def test_img2img_source_boxes_are_merged_with_the_predictions(tmp_path: Path) -> None:
    labels = tmp_path / "train" / "labels"
    labels.mkdir(parents=True)
    # the source image's real boxes: one the baseline also found, one it missed
    (labels / "tree_3.txt").write_text(
        format_label([Box(0, 0.25, 0.25, 0.2, 0.2), Box(0, 0.7, 0.7, 0.2, 0.2)])
    )
    manifest = tmp_path / "manifest.jsonl"
    rows = [{"file": "00000.png", "source": "tree_3.jpg"}, {"file": "00001.png", "source": None}]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    found = [
        detections("00000.png", [[16, 15, 36, 35], [80, 5, 95, 20]], [0.9, 0.3]),
        detections("00001.png", [[10, 10, 30, 30]], [0.8]),
    ]
    config = dataclasses.replace(
        tiny_params().annotate_with_baseline, source_boxes=True, source_box_confidence=0.5
    )
    merged, counts = annotation.source_proposals(found, manifest, labels, config, 1)
    assert counts == {"source_images": 1, "source_boxes_offered": 2, "source_boxes_kept": 1}
    # the overlapping pair keeps the baseline's more confident box; the missed apple is added
    np.testing.assert_allclose(
        merged[0].xyxy, [[16, 15, 36, 35], [80, 5, 95, 20], [60, 60, 80, 80]], atol=1e-4
    )
    np.testing.assert_allclose(merged[0].scores, [0.9, 0.3, 0.5])
    assert merged[1] is found[1]  # txt2img: no source, the predictions as they are
    # a source box scored above the prediction replaces it
    config = dataclasses.replace(config, source_box_confidence=0.95)
    merged, counts = annotation.source_proposals(found, manifest, labels, config, 1)
    assert counts["source_boxes_kept"] == 2
    np.testing.assert_allclose(merged[0].scores, [0.3, 0.95, 0.95])
    # a source without labels is an error naming it
    (labels / "tree_3.txt").unlink()
    with pytest.raises(DataError, match=r"tree_3\.jpg.*tree_3\.txt"):
        annotation.source_proposals(found, manifest, labels, config, 1)


def few_shot_project(root: Path, tmp_path: Path) -> dict[str, Path]:
    """The folders evaluate reads, as dvc.yaml lays out handful draw 0: the tiny train split as
    train, its first 2 images as the handful, and one extra folder per few-shot source (copies
    of the train split)."""
    handful = tmp_path / "handfuls" / "draw0" / "apple_tree"
    for sub, suffix in (("images", ".jpg"), ("labels", ".txt")):
        (handful / sub).mkdir(parents=True)
        for index in (0, 1):
            shutil.copy(root / "train" / sub / f"tile_{index}{suffix}", handful / sub)
    for source in ("synthetic", "copy-paste", "pseudo"):
        shutil.copytree(root / "train", tmp_path / "extra" / "draw0" / source)
    return {
        "test": root / "val",
        "detectors": tmp_path / "detectors",
        "real": root / "train",
        "handful": tmp_path / "handfuls",
        "extra": tmp_path / "extra",
    }


def few_shot_params(seeds: tuple[int, ...]) -> Params:
    params = tiny_params()
    subjects = {
        name: dataclasses.replace(subject, images=2)
        for name, subject in params.shared.subjects.items()
    }
    return dataclasses.replace(
        params,
        shared=dataclasses.replace(params.shared, subjects=subjects),
        few_shot=dataclasses.replace(params.few_shot, extra_images=4, real_image_counts=(4,)),
        train_detector=dataclasses.replace(
            params.train_detector, seeds=seeds, variants=("synthetic", "mixed")
        ),
    )


def test_evaluate_scores_every_variant_with_paired_statistics(
    trained: dict, tmp_path: Path
) -> None:
    root = trained["root"]
    params = few_shot_params((42, 7))
    folders = few_shot_project(root, tmp_path)
    names = ["real", "handful", "real-n4", "handful-synthetic", "handful-copy-paste"]
    names += ["handful-pseudo", "synthetic", "mixed"]
    assert [variant.name for variant in variants.configured(params)] == names
    for variant in variants.configured(params):
        for seed in (42, 7):
            folder = folders["detectors"] / variant.name / f"seed{seed}"
            shutil.copytree(root / "models" / "real", folder)
            # the copied real one's, replaced
            DetectorVariant(variant, seed, 0 if variant.drawn else None).write(folder)
    stale = folders["detectors"] / "stale-variant" / "seed42"  # a variant params no longer ask for
    shutil.copytree(root / "models" / "real", stale)
    count = variants.RealImages(variants.RealKind.COUNT, count=2)
    DetectorVariant(variants.Variant(count), 42, 0).write(stale)
    (tmp_path / "draws" / "draw0").mkdir(parents=True)
    (tmp_path / "draws/draw0/images.json").write_text(json.dumps({"fid": 100.0, "kid_mean": 0.2}))
    out = tmp_path / "metrics"
    summary = evaluate.run(params, folders, tmp_path / "draws", out)
    assert Evaluation.read(out / "evaluation.json").to_flat() == summary.to_flat()
    # same weights everywhere: every paired difference is exactly 0, with no spread
    compared = summary.comparison("handful-synthetic", "handful")
    assert compared.diff_map50_95 == 0 and compared.diff_low == 0
    assert summary.comparison("mixed", "real").diff_map50_95 == 0
    assert compared.p_value is None  # no spread: no test
    real = summary.variant("real")
    assert real.map50_95.std == 0 and real.seeds == 2 and summary.test_images == 4
    assert real.margin_over_chance == pytest.approx(
        real.map50_95.mean - summary.chance.map50_95, abs=1e-6
    )
    assert summary.variant("handful-synthetic").train_boxes > 0
    headline = json.loads((out / "evaluate.json").read_text())
    assert len(headline) <= 16 and headline["fid"] == 100.0
    few_shot = summary.variant("handful-synthetic")
    assert headline["handful-synthetic.map50_95"] == few_shot.map50_95.mean
    with (out / "detection_table.csv").open() as file:
        assert [row["variant"] for row in csv.DictReader(file)] == names
    with (out / "real_image_curve.csv").open() as file:
        curve = list(csv.DictReader(file))
    assert [row["real_images"] for row in curve] == ["2", "2", "2", "2", "4", "8"]
    with Image.open(out / "test_grid.png") as grid:
        assert grid.size[0] == (1 + len(names)) * 128 + len(names) * 2  # GT + each variant


def test_pseudo_labels_read_no_label_of_their_images(trained: dict, tmp_path: Path) -> None:
    """The pseudo-labelled images' own labels are withheld: the stage gets only images/, and
    the labels it writes are the annotator's predictions even when the real ones are garbage."""
    root = trained["root"]
    folders = few_shot_project(root, tmp_path)
    train = tmp_path / "train"
    shutil.copytree(root / "train" / "images", train / "images")
    (train / "labels").mkdir()
    for image in (train / "images").iterdir():  # unreadable labels: a read would fail
        (train / "labels" / f"{image.stem}.txt").write_text("not a label\n")
    params = few_shot_params((42,))
    metrics = pseudo_label.run(
        params,
        train / "images",
        folders["handful"] / "draw0",
        root / "models" / "real",
        tmp_path / "pseudo",
        tmp_path / "pseudo.json",
    )
    labelled = read_yolo_folder(tmp_path / "pseudo", 1)
    assert len(labelled) == 4 and metrics["images"] == 4
    assert not {s.image.name for s in labelled} & {"tile_0.jpg", "tile_1.jpg"}  # not the handful
    detector = detection.load_detector(root / "models" / "real", ["apple"])
    for sample in labelled:
        (found,) = detection.predict(
            detector, [sample.image], SIZE, params.annotate_with_baseline.confidence, 0.7
        )
        label = tmp_path / "pseudo" / "labels" / f"{sample.image.stem}.txt"
        assert label.read_text() == format_label(box for box, _ in found.yolo_boxes())
    # val: 4 images, 2 of them named like handful images, so 2 outside it
    with pytest.raises(DataError, match="2 train images outside the handful.*is 4; lower it"):
        pseudo_label.unlabelled_pool(root / "val" / "images", folders["handful"] / "draw0", 4, 0)


@pytest.mark.slow  # the FID alone takes seconds to tens of seconds on 2 CPU cores
def test_check_images_measures_the_generated_images(trained: dict, tmp_path: Path) -> None:
    root = trained["root"]
    generated = tmp_path / "generated"
    shutil.copytree(root / "train" / "images", generated / "images")
    summary = check_images.run(
        tiny_params(),
        generated,
        root / "val",
        root / "val" / "images",
        root / "train",
        root / "val",
        tmp_path / "images.json",
    )
    assert summary["kid_subset_size"] == 4  # min(50, 4 real val images, 8 generated)
    assert summary["clip_score"] is None and "evaluate.clip_model" in summary["clip_score_reason"]
    assert 0 <= summary["real_vs_generated.accuracy"] <= 1
    assert summary["real_vs_generated.tested"] == 8
    # 8 tiny images: too few crops for the subject classifier to beat chance, so the check says
    # it is invalid instead of reporting a share; no generation manifest, no object check.
    assert summary["subject.valid"] == 0 and summary["subject.generated_share"] is None
    assert summary["objects.valid"] == 0


@pytest.mark.parametrize("model", ["yolov8n-missing.pt", "models/yolov8n.pt", "/tmp/best.pt"])
def test_pickles_from_paths_are_refused_naming_the_fix(model: str, tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match=r"never from a path.*synthdet\.export"):
        detection.train_detector(model, [tmp_path], tmp_path, ("apple",), 0, {}, tmp_path / "out")


def test_release_asset_not_downloadable_offline_names_the_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no yolov8n.pt lying around
    with pytest.raises(ModelNotAvailableError, match=r"cannot be downloaded.*\.yaml"):
        detection.train_detector(
            "yolov8n.pt", [tmp_path], tmp_path, ("apple",), 0, {}, tmp_path / "out"
        )


def test_saved_detector_is_pickle_free_and_predicts_like_the_trained_one(trained: dict) -> None:
    from safetensors.torch import load_file

    folder = trained["root"] / "models" / "real"
    state = load_file(str(folder / detection.WEIGHTS_NAME))  # safetensors: tensors only
    assert all(tensor.dtype == torch.float32 for tensor in state.values())
    detector = detection.load_detector(folder, ("apple",))
    images = sorted((trained["root"] / "val" / "images").iterdir())
    first = detection.predict(detector, images, imgsz=64, confidence=0.0, iou=0.7)
    again = detection.predict(
        detection.load_detector(folder, ("apple",)), images, 64, confidence=0.0, iou=0.7
    )
    for a, b in zip(first, again, strict=True):
        np.testing.assert_allclose(a.xyxy, b.xyxy)


def test_training_can_start_from_a_detector_folder(trained: dict, tmp_path: Path) -> None:
    folder = trained["root"] / "models" / "real"
    detector = detection._initial_detector(str(folder))
    loaded = detection.load_detector(folder, ("apple",))
    for (name, a), b in zip(
        detector.model.state_dict().items(), loaded.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert detector.ckpt  # ultralytics seeds train() from the loaded weights only when set


def test_mismatched_weights_are_a_clear_error(trained: dict, tmp_path: Path) -> None:
    folder = tmp_path / "detector"
    shutil.copytree(trained["root"] / "models" / "real", folder)
    (folder / "yolov8n.yaml").rename(folder / "yolov8s.yaml")  # another scale: other shapes
    with pytest.raises(ModelNotAvailableError, match="does not fit yolov8s.yaml"):
        detection.load_detector(folder, ("apple",))


def test_unknown_model_yaml_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="yolov8q-missing.yaml"):
        detection.train_detector(
            "yolov8q-missing.yaml", [tmp_path], tmp_path, ("apple",), 0, {}, tmp_path / "out"
        )


def test_detector_with_other_classes_is_rejected(trained: dict) -> None:
    with pytest.raises(ModelNotAvailableError, match="shared.class_names"):
        detection.load_detector(trained["root"] / "models" / "real", ("pear",))


def test_yolo_boxes_clip_and_drop_degenerate_boxes() -> None:
    found = detection.Detections(
        image=Path("x.png"),
        width=100,
        height=50,
        xyxy=np.array([[-10.0, 0.0, 30.0, 50.0], [99.5, 10.0, 120.0, 20.0]]),
        scores=np.array([0.9, 0.8]),
        class_ids=np.array([0, 0]),
    )
    ((box, score),) = found.yolo_boxes()
    assert score == 0.9
    assert box == Box(0, 0.15, 0.5, 0.3, 1.0)


def test_ultralytics_leaves_pillow_alone(tmp_path):
    # ultralytics patches PIL.Image.open on import to pip-install pi-heif for an unreadable file;
    # in a stage process that imported it, a bad image must still get our message (offline).
    from synthdet.core.data import DataError, verify_image
    from synthdet.detectors import detection

    detection._ultralytics()
    bad = tmp_path / "a.jpg"
    bad.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00")
    with pytest.raises(DataError, match="not an image file Pillow can read"):
        verify_image(bad)


def test_detectors_train_and_predict_with_synthdet_threads(
    trained: dict, tmp_path: Path, monkeypatch, request
) -> None:
    # ultralytics' select_device sets torch to cpu_count - 1 threads; synthdet's rule wins.
    threads = torch.get_num_threads()
    request.addfinalizer(lambda: torch.set_num_threads(threads))  # the worker's later tests
    monkeypatch.setenv("SYNTHDET_TORCH_THREADS", "3")
    seen: dict[str, int] = {}
    initial = detection._initial_detector

    def observed(model: str):
        detector = initial(model)
        for event in ("on_train_epoch_start", "on_val_batch_start"):
            detector.add_callback(
                event, lambda _, event=event: seen.setdefault(event, torch.get_num_threads())
            )
        return detector

    monkeypatch.setattr(detection, "_initial_detector", observed)
    root = trained["root"]
    result = detection.train_detector(
        "yolov8n.yaml",
        [root / "train"],
        root / "val",
        ("apple",),
        0,
        {"epochs": 2, "imgsz": SIZE, "batch": 4, "workers": 0, "plots": False, "val": False},
        tmp_path / "detector",
    )
    assert seen == {"on_train_epoch_start": 3, "on_val_batch_start": 3}

    detector = detection.load_detector(tmp_path / "detector", ("apple",))
    detector.add_callback(
        "on_predict_batch_start", lambda _: seen.setdefault("predict", torch.get_num_threads())
    )
    torch.set_num_threads(1)
    detection.predict(detector, [next((root / "val" / "images").iterdir())], SIZE, 0.25, 0.7)
    assert seen["predict"] == 3

    # yolo.val false: only the last epoch validated, so only its row holds validation numbers.
    first, last = result.epochs
    assert "metrics/mAP50-95" not in first and "metrics/mAP50-95" in last
    detection.write_epochs_csv(result.epochs, tmp_path / "epochs.csv")
    with (tmp_path / "epochs.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == list(last)
    assert rows[0]["metrics/mAP50-95"] == "" and rows[1]["metrics/mAP50-95"] != ""


def test_detectors_trained_in_one_process_are_the_bits_trained_alone(
    trained: dict, tmp_path: Path, monkeypatch
) -> None:
    """`--then`: the units train in turn in one process, each to its own folders; a unit trained
    after another is the bits of the same unit trained first (the fixture's, also seed 42)."""
    root = trained["root"]
    monkeypatch.setattr(train_detector, "run_stage", lambda stage: stage(tiny_params()))

    def unit(seed: int) -> list[str]:
        return [
            *("--stage", f"train-real@{seed}", "--real", "all", "--seed", str(seed)),
            *("--train", str(root / "train"), "--val", str(root / "val")),
            *("--out", str(tmp_path / f"seed{seed}")),
            *("--results", str(tmp_path / f"seed{seed}.csv")),
        ]

    train_detector.main([*unit(7), "--then", *unit(42)])
    weights = {
        seed: (tmp_path / f"seed{seed}" / detection.WEIGHTS_NAME).read_bytes() for seed in (7, 42)
    }
    alone = (root / "models" / "real" / detection.WEIGHTS_NAME).read_bytes()
    assert weights[42] == alone and weights[7] != alone
    assert DetectorVariant.read(tmp_path / "seed7") == DetectorVariant(variants.REAL, 7)
    assert (tmp_path / "seed42.csv").read_text() == (
        root / "metrics" / "train" / "real.csv"
    ).read_text()


def test_validating_fewer_epochs_trains_the_same_weights(trained: dict, tmp_path: Path) -> None:
    """train_detector.val_every: which epochs validate, never what the detector learns (a
    skipped pass draws the random numbers a pass draws, detection._validation_schedule)."""
    root = trained["root"]
    yolo = {**tiny_params().train_detector.train_args(), "epochs": 3}
    validated, weights = {}, {}
    for val_every in (1, 0, 2):
        out = tmp_path / f"every{val_every}"
        result = detection.train_detector(
            "yolov8n.yaml",
            [root / "train"],
            root / "val",
            ("apple",),
            0,
            yolo,
            out,
            val_every=val_every,
        )
        validated[val_every] = [row["epoch"] for row in result.epochs if "metrics/mAP50-95" in row]
        weights[val_every] = (out / detection.WEIGHTS_NAME).read_bytes()
    assert validated == {1: [1, 2, 3], 0: [3], 2: [2, 3]}
    assert weights[0] == weights[1] == weights[2]
