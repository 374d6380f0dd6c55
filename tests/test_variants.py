"""Detector variants x seeds: names, training compositions, params and presets."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from synthdet.artifacts.metrics import PREPARE_METRICS
from synthdet.core.data import DataError, read_yolo_folder, write_json
from synthdet.detectors import detection, variants
from synthdet.params import (
    DETECTOR_PRESETS,
    ParamsError,
    TrainDetectorParams,
    load_params,
    parse_section,
)
from synthdet.stages import prepare, train_detector
from tests.conftest import REPO, write_tiny_yolo_folder


def images(count: int, prefix: str) -> list[Path]:
    return [Path(f"{prefix}/images/{prefix}_{index:03d}.png") for index in range(count)]


def count(n: int) -> variants.Variant:
    return variants.Variant(variants.RealImages(variants.RealKind.COUNT, count=n))


def named(name: str, params) -> variants.Variant:
    """The configured variant called `name` (the params here ask for every kind but mix)."""
    config = dataclasses.replace(
        params.train_detector,
        variants=("synthetic", "mixed"),
        mix_real_shares=(1.0, 0.5),
        mix_synthetic_fractions=(0.1, 0.2, 0.5),
    )
    few_shot = dataclasses.replace(params.few_shot, real_image_counts=(16, 32, 64, 200))
    configured = variants.configured(
        dataclasses.replace(params, train_detector=config, few_shot=few_shot)
    )
    return {variant.name: variant for variant in configured}[name]


def test_names_are_derived_from_the_typed_fields(params) -> None:
    assert variants.REAL.name == "real" and variants.HANDFUL.name == "handful"
    assert count(16).name == "real-n16"
    assert variants.few_shot("copy-paste", 64).name == "handful-copy-paste"
    assert variants.generated("synthetic") == variants.Variant(variants.NO_REAL, "synthetic")
    assert variants.generated("synthetic").name == "synthetic"
    assert variants.generated("mixed").name == "mixed"
    assert variants.mix(0.5, 0.25).name == "mix-r0.5-f0.25"
    # DVC passes the share 1.0 as "1" (--real-share 1): the same variant, the same name
    assert variants.mix(float("1"), 0.1) == variants.mix(1.0, 0.1)
    assert variants.mix(1, 0.1).name == "mix-r1.0-f0.1"
    assert variants.RealImages.from_arg("16") == count(16).real
    assert variants.RealImages.from_arg("handful") == variants.HANDFUL_ONLY


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: variants.mix(0.0, 0.1), r"real share must be in \(0, 1\]"),
        (lambda: variants.mix(1.0, 1.0), r"synthetic fraction must be in \[0, 1\)"),
        (lambda: variants.few_shot("gan", 4), r"unknown extra source 'gan'"),
        (lambda: variants.Variant(variants.NO_REAL), "is none of real, handful"),
        (lambda: variants.Variant(variants.ALL, "pseudo"), "is none of real, handful"),
        (lambda: variants.generated("handful"), r"train_detector.variants: 'handful'"),
        (lambda: variants.RealImages.from_arg("realistic"), r"--real 'realistic': expected"),
        (lambda: variants.RealImages.from_arg("0"), "count of real images must be >= 1"),
    ],
)
def test_a_variant_no_stage_trains_is_refused(make, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        make()


def test_configured_variants_cover_the_few_shot_question_and_the_mixes(params) -> None:
    config = dataclasses.replace(
        params.train_detector,
        variants=("synthetic", "mixed"),
        mix_real_shares=(1.0, 0.5),
        mix_synthetic_fractions=(0.1,),
    )
    configured = variants.configured(dataclasses.replace(params, train_detector=config))
    assert [variant.name for variant in configured] == [
        "real",
        "handful",
        "real-n64",
        "handful-synthetic",
        "handful-copy-paste",
        "handful-pseudo",
        "synthetic",
        "mixed",
        "mix-r1.0-f0.1",
        "mix-r0.5-f0.1",
    ]


def test_compositions_nest_the_handful_first_and_ignore_the_detector_seed(params) -> None:
    real, generated = images(116, "real"), images(64, "gen")
    handful = [real[i] for i in (3, 50, 7, 90, 11, 12, 13, 100)]

    def compose(name: str):
        return variants.compose(named(name, params), real, handful, generated, 42)

    assert compose("handful").real == tuple(sorted(handful))
    curve = [compose(name).real for name in ("real-n16", "real-n32", "real-n64", "real")]
    assert [len(c) for c in curve] == [16, 32, 64, 116]
    for smaller, larger in zip([tuple(sorted(handful)), *curve], curve, strict=False):
        assert set(smaller) <= set(larger)  # nested, the handful first
    few = compose("handful-synthetic")
    assert (few.real, len(few.extra)) == (tuple(sorted(handful)), 64)
    mix = compose("mix-r1.0-f0.1")
    assert (len(mix.real), len(mix.extra)) == (116, 13)  # round(0.1 / 0.9 * 116)
    assert mix.extra_share == pytest.approx(13 / 129)
    half = compose("mix-r0.5-f0.2")
    assert (len(half.real), len(half.extra)) == (58, 14)  # round(0.25 * 58)
    assert set(half.real) <= set(mix.real) and set(mix.extra) <= set(compose("mixed").extra)
    assert compose("synthetic").real == () and compose("real").extra == ()


def test_asking_for_more_images_than_exist_names_the_keys(params) -> None:
    real, handful = images(116, "r"), images(116, "r")[:8]
    with pytest.raises(DataError, match=r"needs 116 synthetic.*generate\.num_images"):
        variants.compose(variants.mix(1.0, 0.5), real, handful, images(32, "g"), 0)
    with pytest.raises(DataError, match=r"needs 64 pseudo.*few_shot\.extra_images"):
        variants.compose(named("handful-pseudo", params), real, handful, images(9, "p"), 0)
    with pytest.raises(DataError, match=r"200 labelled images.*few_shot\.real_image_counts"):
        variants.compose(count(200), real, handful, [], 0)
    with pytest.raises(DataError, match=r"handful images x\.png are not among"):
        variants.compose(count(16), real, [Path("p/images/x.png")], [], 0)


def test_training_folders_link_exactly_the_composition(params, tmp_path: Path) -> None:
    real = write_tiny_yolo_folder(tmp_path / "real", photos=8, tiles=3)  # 24 images
    generated = write_tiny_yolo_folder(tmp_path / "gen", photos=2, tiles=3)  # 6 images
    personalize = tmp_path / "personalize" / "apple_tree"
    for sub in ("images", "labels"):
        (personalize / sub).mkdir(parents=True)
    for image in sorted((real / "images").iterdir())[:8]:
        shutil.copy(image, personalize / "images" / image.name)
        label = real / "labels" / f"{image.stem}.txt"
        shutil.copy(label, personalize / "labels" / label.name)
    few_shot = dataclasses.replace(params.few_shot, extra_images=4)
    params = dataclasses.replace(params, few_shot=few_shot)

    def handful_synthetic(scratch: str, per_epoch: int) -> variants.TrainingSet:
        variant = variants.few_shot("synthetic", params.few_shot.extra_images)
        personalize = tmp_path / "personalize"
        return variants.training_folders(
            params, variant, None, personalize, generated, tmp_path / scratch, per_epoch
        )

    training = handful_synthetic("scratch", 0)  # 0 images per epoch: plain epochs
    composition = training.composition
    assert (len(composition.real), len(composition.extra), training.repeats) == (8, 4, 1)
    linked = [read_yolo_folder(folder, 1) for folder in training.folders]
    assert [len(samples) for samples in linked] == [8, 4]
    for samples, source in zip(linked, (personalize, generated), strict=True):  # labels along
        labels = {s.image.name: s.boxes for s in read_yolo_folder(source, 1)}
        assert all(sample.boxes == labels[sample.image.name] for sample in samples)
    # below the images per epoch the set repeats and is topped up to exactly it:
    # 12 images -> 2 copies + 6 of them once more = 30 an epoch
    repeated = handful_synthetic("scratch-repeat", 30)
    assert (repeated.repeats, repeated.top_up) == (2, 6)
    folders = [read_yolo_folder(folder, 1) for folder in repeated.folders]
    assert [len(samples) for samples in folders[:4]] == [8, 4, 8, 4]
    topped = [[s.image.name for s in samples] for samples in folders[4:]]  # [real, extra]
    assert sum(map(len, topped)) == 6 and all(len(set(part)) == len(part) for part in topped)
    for part, whole in zip(topped, (composition.real, composition.extra), strict=True):
        assert set(part) <= {p.name for p in whole}
    assert sum(len(samples) for samples in folders) == 30
    # the top-up is fixed by shared.seed, not drawn anew: another call picks the same images
    again = handful_synthetic("scratch-again", 30)
    assert [[s.image.name for s in read_yolo_folder(f, 1)] for f in again.folders[4:]] == topped
    assert variants.epoch_plan(12, 0) == (1, 0)  # plain epochs
    assert variants.epoch_plan(12, 30) == (2, 6)
    assert variants.epoch_plan(40, 30) == (1, 0)
    with pytest.raises(DataError, match="--extra-folder"):
        variants.training_folders(
            params, variants.generated("mixed"), real, None, None, tmp_path / "s3", 0
        )


def test_the_handful_trains_the_train_splits_images_an_epoch_unless_set(
    params, tmp_path, monkeypatch
) -> None:
    """train_detector.min_images_per_epoch: null reads the train split's size from prepare's
    metrics (a 135-image split: 135 images an epoch, params untouched); a number still wins."""
    train = write_tiny_yolo_folder(tmp_path / "train", photos=45, tiles=3)  # 135 images
    handful = tmp_path / "personalize" / "apple_tree"
    for sub in ("images", "labels"):
        (handful / sub).mkdir(parents=True)
    for image in sorted((train / "images").iterdir())[:8]:
        shutil.copy(image, handful / "images" / image.name)
        shutil.copy(train / "labels" / f"{image.stem}.txt", handful / "labels")
    metrics = tmp_path / PREPARE_METRICS
    write_json(metrics, prepare.split_statistics({"train": read_yolo_folder(train, 1)}))
    seen = []

    def no_training(**kwargs):
        seen.append(sum(len(list((f / "images").iterdir())) for f in kwargs["train_folders"]))
        return detection.TrainingResult(len(seen), [{"epoch": 1}], {})

    monkeypatch.setattr(detection, "train_detector", no_training)

    def trained(min_images_per_epoch, prepare_metrics=metrics) -> dict:
        detector = dataclasses.replace(
            params.train_detector, min_images_per_epoch=min_images_per_epoch
        )
        settings = dataclasses.replace(params, train_detector=detector)
        folders = {"handful": tmp_path / "personalize"}
        out = tmp_path / f"out{len(seen)}"
        return train_detector.run(
            settings,
            "t",
            variants.HANDFUL,
            42,
            folders,
            train,
            out,
            out / "r.csv",
            prepare_metrics,
            draw=0,
        )

    default = load_params(REPO / "params.yaml").train_detector.min_images_per_epoch
    assert default is None
    first = trained(default)
    assert (first["repeats"], first["top_up_images"], seen[-1]) == (16, 7, 135)  # 8 x 16 + 7
    trained(30)  # an explicit number wins over the split's size
    assert seen[-1] == 30
    trained(0, prepare_metrics=None)  # plain epochs: no metrics file needed
    assert seen[-1] == 8
    # the embedded data: 116, the number params.yaml held before null
    embedded = train_detector.images_per_epoch(
        load_params(REPO / "params.yaml").train_detector, REPO / "metrics" / PREPARE_METRICS
    )
    assert embedded == 116
    with pytest.raises(ParamsError, match=r"no --prepare-metrics file.*-S 'train_detector\."):
        trained(None, prepare_metrics=None)
    write_json(metrics, {"val.images": 25})
    with pytest.raises(DataError, match=r"prepare.json: no train.images count.*dvc repro prepare"):
        trained(None)


def detector_params(**changes) -> TrainDetectorParams:
    raw = {
        "family": "yolov8",
        "size": "n",
        "model": None,
        "seeds": [42],
        "mix_real_shares": [1.0],
        "mix_synthetic_fractions": [0.1],
        "min_images_per_epoch": 0,
        "variants": ["synthetic"],
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
        ({"variants": ["mixed", "mixed"]}, "train_detector.variants"),
        ({"variants": ["handful"]}, "train_detector.variants\\[0\\]"),
    ],
)
def test_bad_detector_params_name_the_key(changes: dict, key: str) -> None:
    with pytest.raises(ParamsError, match=rf"'{key}'"):
        detector_params(**changes)


def test_the_annotator_seed_must_be_trained(params) -> None:
    other = dataclasses.replace(params.train_detector, seeds=(1, 2))
    with pytest.raises(ParamsError, match=r"'shared.seed' \(42\).*'train_detector.seeds'"):
        dataclasses.replace(params, train_detector=other)


def test_few_shot_params_are_checked_against_the_handful_and_generate(params) -> None:
    handful, generated = params.shared.subjects["apple_tree"].images, params.generate.num_images
    few_shot = dataclasses.replace(params.few_shot, real_image_counts=(handful, 16))
    with pytest.raises(
        ParamsError, match=rf"'few_shot.real_image_counts' holds {handful}.*already {handful}"
    ):
        dataclasses.replace(params, few_shot=few_shot)
    few_shot = dataclasses.replace(params.few_shot, extra_images=generated + 1)
    with pytest.raises(
        ParamsError,
        match=rf"'few_shot.extra_images' \({generated + 1}\).*{generated} images generate",
    ):
        dataclasses.replace(params, few_shot=few_shot)
