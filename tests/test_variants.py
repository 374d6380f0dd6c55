"""Detector variants x seeds: names, training compositions, params and presets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from synthdet import variants
from synthdet.data import DataError, read_yolo_folder
from synthdet.params import DETECTOR_PRESETS, ParamsError, TrainDetectorParams, parse_section
from synthdet.stages.train_detector import training_folders
from tests.conftest import write_tiny_yolo_folder


def images(count: int, prefix: str) -> list[Path]:
    return [Path(f"{prefix}/{prefix}_{index:03d}.png") for index in range(count)]


def test_names_round_trip_and_dvc_spellings_match() -> None:
    assert variants.parse("real") == variants.Variant("real", 1.0, 0.0)
    assert variants.parse("synthetic").synthetic_fraction is None
    assert variants.parse("mixed") == variants.Variant("mixed", 1.0, None)
    # DVC writes the params' numbers with str(): an integer share must mean the same variant.
    assert variants.parse("mix-r1-f0.1") == variants.parse("mix-r1.0-f0.1")
    assert variants.parse("mix-r0.5-f0.25") == variants.Variant("mix-r0.5-f0.25", 0.5, 0.25)
    for bad in ("realistic", "mix-r0-f0.1", "mix-r1.0-f1.0", "mix-r1.0-fx"):
        with pytest.raises(ParamsError):
            variants.parse(bad)


def test_configured_variants_cross_real_shares_with_fractions(params) -> None:
    config = dataclasses.replace(
        params.train_detector, mix_real_shares=(1.0, 0.5), mix_synthetic_fractions=(0.1, 0.3)
    )
    configured = variants.configured(dataclasses.replace(params, train_detector=config))
    names = [variant.name for variant in configured]
    assert names == [
        "real",
        "synthetic",
        "mixed",
        "mix-r1.0-f0.1",
        "mix-r1.0-f0.3",
        "mix-r0.5-f0.1",
        "mix-r0.5-f0.3",
    ]


def test_compositions_count_nest_and_ignore_the_detector_seed() -> None:
    real, synthetic = images(116, "real"), images(32, "gen")
    full = variants.compose(variants.parse("mixed"), real, synthetic, seed=42)
    assert (len(full.real), len(full.synthetic)) == (116, 32)
    mix = variants.compose(variants.parse("mix-r1.0-f0.1"), real, synthetic, seed=42)
    assert (len(mix.real), len(mix.synthetic)) == (116, 13)  # round(0.1 / 0.9 * 116)
    assert mix.synthetic_share == pytest.approx(13 / 129)
    half = variants.compose(variants.parse("mix-r0.5-f0.2"), real, synthetic, seed=42)
    assert (len(half.real), len(half.synthetic)) == (58, 14)  # round(0.25 * 58)
    # nested: a smaller share is a prefix of the same order, so a subset of the larger one
    assert set(half.real) <= set(mix.real) and set(mix.synthetic) <= set(full.synthetic)
    assert variants.compose(variants.parse("mix-r0.5-f0.2"), real, synthetic, seed=42) == half
    assert variants.compose(variants.parse("synthetic"), real, synthetic, seed=42).real == ()
    assert variants.compose(variants.parse("real"), real, [], seed=42).synthetic == ()


def test_a_fraction_beyond_the_generated_images_names_the_keys() -> None:
    with pytest.raises(DataError, match=r"needs 116 auto-labelled.*generate\.num_images"):
        variants.compose(variants.parse("mix-r1.0-f0.5"), images(116, "r"), images(32, "g"), 0)


def test_training_folders_link_exactly_the_composition(tmp_path: Path) -> None:
    real = write_tiny_yolo_folder(tmp_path / "real", photos=4, tiles=3)  # 12 images
    synthetic = write_tiny_yolo_folder(tmp_path / "synthetic", photos=2, tiles=3)  # 6 images
    folders, composition = training_folders(
        variants.parse("mix-r0.5-f0.25"), real, synthetic, 0, tmp_path / "scratch"
    )
    assert (len(composition.real), len(composition.synthetic)) == (6, 2)
    linked = [read_yolo_folder(folder, 1) for folder in folders]
    assert [len(samples) for samples in linked] == [6, 2]
    assert {s.image.name for s in linked[0]} == {p.name for p in composition.real}
    for samples, source in zip(linked, (real, synthetic), strict=True):  # labels come along
        labels = {s.image.name: s.boxes for s in read_yolo_folder(source, 1)}
        assert all(sample.boxes == labels[sample.image.name] for sample in samples)
    # a variant using a whole source trains on the source folder itself
    folders, _ = training_folders(variants.parse("mixed"), real, synthetic, 0, tmp_path / "s2")
    assert folders == [real, synthetic]
    with pytest.raises(DataError, match="--synthetic"):
        training_folders(variants.parse("mixed"), real, None, 0, tmp_path / "s3")


def detector_params(**changes) -> TrainDetectorParams:
    raw = {
        "family": "yolov8",
        "size": "n",
        "model": None,
        "seeds": [42],
        "mix_real_shares": [1.0],
        "mix_synthetic_fractions": [0.1],
        "preset": None,
        "yolo": {"epochs": 10, "optimizer": "AdamW", "lr0": 0.002, "mosaic": 1.0},
    }
    raw.update(changes)
    return parse_section(TrainDetectorParams, raw, "train_detector")


def test_family_and_size_name_the_model_and_the_preset_wins() -> None:
    assert detector_params().model_source == "yolov8n.yaml"
    assert detector_params(family="yolo11", size="s").model_source == "yolo11s.yaml"
    assert detector_params(family="yolov5", size="x").model_source == "yolov5x.yaml"
    assert detector_params(model="yolov8n.pt").model_source == "yolov8n.pt"
    args = detector_params(preset="genfusion").train_args()
    assert args["epochs"] == 10  # kept from yolo
    assert {k: args[k] for k in ("optimizer", "lr0", "momentum", "weight_decay", "batch")} == {
        "optimizer": "SGD",
        "lr0": 0.01,
        "momentum": 0.937,
        "weight_decay": 0.0005,
        "batch": 8,
    }
    assert args["mosaic"] == 0.0 and args["fliplr"] == 0.0 and args["hsv_v"] == 0.0
    assert set(DETECTOR_PRESETS["genfusion"]) <= set(args)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"family": "yolov9"}, "train_detector.family"),
        ({"size": "xl"}, "train_detector.size"),
        ({"model": "yolov8s.pt"}, "train_detector.model"),
        ({"seeds": []}, "train_detector.seeds"),
        ({"seeds": [1, 1]}, "train_detector.seeds"),
        ({"mix_real_shares": [0.0]}, "train_detector.mix_real_shares"),
        ({"mix_synthetic_fractions": [1.0]}, "train_detector.mix_synthetic_fractions"),
        ({"preset": "yolo-default"}, "train_detector.preset"),
        ({"yolo": {"seed": 3}}, "train_detector.yolo.seed"),
        ({"n_seeds": 5}, "train_detector.n_seeds"),
    ],
)
def test_bad_detector_params_name_the_key(changes: dict, key: str) -> None:
    with pytest.raises(ParamsError, match=rf"'{key}'"):
        detector_params(**changes)


def test_the_annotator_seed_must_be_trained(params) -> None:
    other = dataclasses.replace(params.train_detector, seeds=(1, 2))
    with pytest.raises(ParamsError, match=r"'shared.seed' \(42\).*'train_detector.seeds'"):
        dataclasses.replace(params, train_detector=other)
