"""params.yaml is the one source of the values: a key it lacks is an error, and the few code
defaults that remain are exactly the committed params.yaml's values."""

import copy
import dataclasses
import typing

import pytest
import yaml

from synthdet.params import Params, ParamsError, load_params, parse_params
from tests.conftest import REPO


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _default(spec: dataclasses.Field) -> typing.Any:
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def _has_default(spec: dataclasses.Field) -> bool:
    return _default(spec) is not dataclasses.MISSING


def _sections(cls: type, raw: dict, parsed: typing.Any, path: str):
    """(class, field, raw mapping, parsed section, dotted key) for every field of `cls` and of
    the sections under it, as params.yaml holds them."""
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        key = f"{path}.{spec.name}" if path else spec.name
        yield cls, spec, raw, parsed, key
        hint, value = hints[spec.name], getattr(parsed, spec.name)
        if dataclasses.is_dataclass(hint):
            yield from _sections(hint, raw[spec.name], value, key)
        elif typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
            for name, section in value.items():
                inner = typing.get_args(hint)[1]
                yield from _sections(inner, raw[spec.name][name], section, f"{key}.{name}")


def test_every_code_default_is_params_yamls_value(raw):
    """So a key removed with `-S '~key'` either stops the run or takes the value params.yaml
    has: no default can drift from it."""
    params = load_params(REPO / "params.yaml")
    checked = []
    for _, spec, section_raw, parsed, key in _sections(Params, raw, params, ""):
        assert spec.name in section_raw, f"params.yaml lacks {key}"
        if _has_default(spec):
            assert _default(spec) == getattr(parsed, spec.name), key
            checked.append(key)
    assert "personalize.textual_inversion" in checked and "generate.sources" in checked


def test_per_subject_overrides_default_to_unset():
    """generate.subjects.<name> entries are optional overrides (params.yaml has none): their
    defaults are None, 'use the section's value', never a value of their own."""
    from synthdet.params import GenerateSubjectParams

    for spec in dataclasses.fields(GenerateSubjectParams):
        assert _default(spec) is None, spec.name


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("train_detector", "yolo"),
        ("annotate_with_baseline", "source_boxes"),
        ("personalize", "lora"),
    ],
)
def test_a_key_whose_code_default_differed_is_now_missing(raw, section, key):
    del raw[section][key]
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    assert str(caught.value) == (
        f"params: '{section}.{key}' is missing; params.yaml sets every value: restore it there "
        f"(e.g. from git), or set it with -S '{section}.{key}=<value>'"
    )


def test_min_images_per_epoch_removed_is_params_yamls_null(raw):
    """Its code default is params.yaml's null (the train split's image count, resolved when the
    detectors train), so `-S '~train_detector.min_images_per_epoch'` changes nothing."""
    assert raw["train_detector"]["min_images_per_epoch"] is None
    del raw["train_detector"]["min_images_per_epoch"]
    assert parse_params(raw).train_detector.min_images_per_epoch is None


def test_every_missing_and_unknown_key_at_once(raw):
    for section, key in (
        ("train_detector", "yolo"),
        ("annotate_with_baseline", "source_boxes"),
        ("personalize", "lora"),
    ):
        del raw[section][key]
    raw["evaluate"]["iuo"] = 0.5
    raw["shared"]["seed"] = "42"
    lines = [line.split(";")[0] for line in _message(raw).splitlines()]
    assert lines == [
        "params: 'shared.seed' must be an integer, got str '42'",
        "params: 'personalize.lora' is missing",
        "params: 'annotate_with_baseline.source_boxes' is missing",
        "params: 'train_detector.yolo' is missing",
        "params: unknown key 'evaluate.iuo' (did you mean 'evaluate.iou'?)",
    ]


def test_every_bad_list_item_and_subject_at_once(raw):
    raw["shared"]["class_names"] = ["apple", 1, 2]
    subject = copy.deepcopy(raw["shared"]["subjects"]["apple_tree"])
    raw["shared"]["subjects"]["pear"] = {**subject, "images": "4"}
    del raw["shared"]["subjects"]["apple_tree"]["identifier"]
    assert _message(raw).splitlines() == [
        "params: 'shared.subjects.apple_tree.identifier' is missing; params.yaml sets every "
        "value: restore it there (e.g. from git), or set it with "
        "-S 'shared.subjects.apple_tree.identifier=<value>'",
        "params: 'shared.subjects.pear.images' must be an integer, got str '4'",
        "params: 'shared.class_names[1]' must be str, got int 1",
        "params: 'shared.class_names[2]' must be str, got int 2",
    ]


def _message(raw: dict) -> str:
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    return str(caught.value)
