"""variant.json: the train stages get a variant's fields, record them next to the detector, and
evaluate finds each configured detector by them, whatever its folder is called."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from synthdet.artifacts.detector import VARIANT_INFO, DetectorVariant
from synthdet.core.data import DataError
from synthdet.detectors import variants
from synthdet.params import ParamsError
from synthdet.stages import evaluate, train_detector


def with_mix(params):
    config = dataclasses.replace(
        params.train_detector, mix_real_shares=(1.0,), mix_synthetic_fractions=(0.1,)
    )
    return dataclasses.replace(params, train_detector=config)


def write_detectors(root: Path, params, folder_names: dict[str, str] | None = None) -> None:
    """A folder with only its variant.json per configured variant at seed 42."""
    for variant in variants.configured(params):
        name = (folder_names or {}).get(variant.name, variant.name)
        DetectorVariant(variant, 42, 0 if variant.drawn else None).write(root / name / "seed42")


@pytest.mark.parametrize(
    "variant",
    [
        variants.REAL,
        variants.Variant(variants.RealImages(variants.RealKind.COUNT, count=16)),
        variants.few_shot("pseudo", 64),
        variants.generated("synthetic"),
        variants.mix(0.5, 0.25),
    ],
)
def test_variant_json_round_trips(tmp_path: Path, variant: variants.Variant) -> None:
    draw = 2 if variant.drawn else None
    DetectorVariant(variant, 7, draw).write(tmp_path)
    assert DetectorVariant.read(tmp_path) == DetectorVariant(variant, 7, draw)
    assert json.loads((tmp_path / VARIANT_INFO).read_text())["name"] == variant.name


def test_a_bad_variant_json_names_the_file_and_key(tmp_path: Path) -> None:
    DetectorVariant(variants.few_shot("pseudo", 64), 7, 0).write(tmp_path)
    path = tmp_path / VARIANT_INFO
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in raw.items() if k != "extra_images"}))
    with pytest.raises(DataError, match=rf"{path}: keys extra_images missing, none unknown"):
        DetectorVariant.read(tmp_path)
    path.write_text(json.dumps(raw | {"real": "most"}))
    with pytest.raises(DataError, match=rf"{path}: not a detector variant .*'most'"):
        DetectorVariant.read(tmp_path)
    path.write_text(json.dumps(raw | {"name": "handful-synthetic"}))
    with pytest.raises(DataError, match=r"'name' is 'handful-synthetic', but its fields make"):
        DetectorVariant.read(tmp_path)
    path.write_text(json.dumps(raw | {"draw": None}))
    with pytest.raises(DataError, match=r"trains on a handful draw: give its draw"):
        DetectorVariant.read(tmp_path)
    path.write_text(json.dumps(raw | {"draw": "0"}))
    with pytest.raises(DataError, match=r"key 'draw' is '0', expected an integer"):
        DetectorVariant.read(tmp_path)
    with pytest.raises(DataError, match=r"none.*variant.json: cannot read"):
        DetectorVariant.read(tmp_path / "none")


def test_evaluate_finds_detectors_by_variant_json_not_folder_name(params, tmp_path) -> None:
    params = with_mix(params)
    # an older DVC spelled the share 1.0 as 1 in the folder: the fields still match
    write_detectors(tmp_path, params, {"mix-r1.0-f0.1": "mix-r1-f0.1"})
    (tmp_path / "stale" / "seed42").mkdir(parents=True)  # no variant.json: not a candidate
    found = evaluate.find_detectors(tmp_path, params)
    assert [v.name for v in found] == [v.name for v in variants.configured(params)]
    assert found[variants.mix(1.0, 0.1)] == {(0, 42): tmp_path / "mix-r1-f0.1" / "seed42"}
    assert found[variants.REAL] == {(None, 42): tmp_path / "real" / "seed42"}
    (tmp_path / "real" / "seed42" / VARIANT_INFO).unlink()
    with pytest.raises(DataError, match=r"no detector for real seed 42 \(real/seed42, stale/"):
        evaluate.find_detectors(tmp_path, params)
    DetectorVariant(variants.REAL, 42).write(tmp_path / "real" / "seed42")
    DetectorVariant(variants.REAL, 42).write(tmp_path / "real-copy" / "seed42")
    with pytest.raises(DataError, match=r"real-copy/seed42 both hold real seed 42"):
        evaluate.find_detectors(tmp_path, params)


def test_evaluate_finds_each_draws_detectors_and_names_a_missing_draw(params, tmp_path) -> None:
    """With few_shot.draws [0, 1] every variant but `real` is looked for once per draw, in the
    draw<d>/ folders dvc.yaml writes (found by variant.json, at any depth)."""
    few_shot = dataclasses.replace(params.few_shot, draws=(0, 1))
    params = dataclasses.replace(params, few_shot=few_shot)
    for variant in variants.configured(params):
        for draw in (0, 1) if variant.drawn else (None,):
            folder = tmp_path / ("" if draw is None else f"draw{draw}") / variant.name / "seed42"
            DetectorVariant(variant, 42, draw).write(folder)
    found = evaluate.find_detectors(tmp_path, params)
    assert found[variants.HANDFUL] == {
        (0, 42): tmp_path / "draw0" / "handful" / "seed42",
        (1, 42): tmp_path / "draw1" / "handful" / "seed42",
    }
    assert list(found[variants.REAL]) == [(None, 42)]
    # a detector of the layout before draws (variant.json without a draw) is no candidate
    old = tmp_path / "handful" / "seed42"
    DetectorVariant(variants.HANDFUL, 42, 0).write(old)
    raw = json.loads((old / VARIANT_INFO).read_text())
    (old / VARIANT_INFO).write_text(json.dumps({k: v for k, v in raw.items() if k != "draw"}))
    assert evaluate.find_detectors(tmp_path, params) == found
    (tmp_path / "draw1" / "handful" / "seed42" / VARIANT_INFO).unlink()
    with pytest.raises(DataError, match=r"no detector for handful draw 1 seed 42 \(draw1/handf"):
        evaluate.find_detectors(tmp_path, params)
    with pytest.raises(DataError, match=r", handful/seed42 hold no readable variant.json"):
        evaluate.find_detectors(tmp_path, params)


def command_line_variant(monkeypatch, *flags: str) -> variants.Variant:
    """The variant train_detector's main() hands to run() for `flags`."""
    seen = []
    monkeypatch.setattr(train_detector, "run_stage", lambda fn: fn(None))
    monkeypatch.setattr(train_detector, "run", lambda _p, _s, variant, *rest: seen.append(variant))
    paths = ["--val", "v", "--out", "o", "--results", "r.csv"]
    monkeypatch.setattr(
        sys, "argv", ["train_detector", "--stage", "s", "--seed", "1", *flags, *paths]
    )
    train_detector.main()
    return seen[0]


def seen_draw(monkeypatch, *flags: str) -> int | None:
    """The draw train_detector's main() hands to run() for `flags`."""
    seen = []
    monkeypatch.setattr(train_detector, "run_stage", lambda fn: fn(None))
    monkeypatch.setattr(train_detector, "run", lambda *args: seen.append(args[-1]))
    paths = ["--val", "v", "--out", "o", "--results", "r.csv"]
    monkeypatch.setattr(
        sys, "argv", ["train_detector", "--stage", "s", "--seed", "1", *flags, *paths]
    )
    train_detector.main()
    return seen[0]


def test_a_drawn_variant_needs_its_draw_and_real_has_none() -> None:
    with pytest.raises(ParamsError, match="give its draw"):
        DetectorVariant(variants.HANDFUL, 42)
    with pytest.raises(ParamsError, match="which no draw changes: give no --draw"):
        DetectorVariant(variants.REAL, 42, 0)
    with pytest.raises(ParamsError, match="is not >= 0"):
        DetectorVariant(variants.HANDFUL, 42, -1)
    assert not variants.REAL.drawn
    assert variants.HANDFUL.drawn and variants.mix(1.0, 0.1).drawn


def test_the_train_stage_gets_the_fields_not_a_name(monkeypatch) -> None:
    assert command_line_variant(monkeypatch, "--real", "all") == variants.REAL
    assert command_line_variant(monkeypatch, "--real", "64").name == "real-n64"
    few = command_line_variant(
        monkeypatch, "--real", "handful", "--extra", "pseudo", "--extra-images", "64"
    )
    assert few == variants.few_shot("pseudo", 64)
    mix = ("--real-share", "1", "--extra", "synthetic", "--extra-fraction", "0.1")
    assert command_line_variant(monkeypatch, *mix) == variants.mix(1.0, 0.1)
    assert command_line_variant(monkeypatch, "--generated", "mixed").name == "mixed"
    assert seen_draw(monkeypatch, "--real", "handful", "--draw", "3") == 3
    assert seen_draw(monkeypatch, "--real", "all") is None
    with pytest.raises(ParamsError, match="give one of --real"):
        command_line_variant(monkeypatch, "--extra", "synthetic")
    with pytest.raises(ParamsError, match="--generated stands for the whole variant"):
        command_line_variant(monkeypatch, "--generated", "mixed", "--real", "all")
