import copy

import pytest
import yaml

from synthdet.params import ParamsError, load_params, parse_params
from tests.conftest import REPO


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_parse(raw):
    params = parse_params(raw)
    assert params.shared.class_names == ("apple",)
    assert isinstance(params.train_detector.yolo, dict)


def test_params_are_frozen(raw):
    params = parse_params(raw)
    with pytest.raises(AttributeError):
        params.shared.seed = 1  # type: ignore[misc]


def test_unknown_key_suggests_closest(raw):
    raw["generate"]["num_imgs"] = 3
    with pytest.raises(
        ParamsError, match=r"unknown key 'generate.num_imgs'.*'generate.num_images'"
    ):
        parse_params(raw)


def test_unknown_section(raw):
    raw["prepar"] = {}
    with pytest.raises(ParamsError, match="unknown key 'prepar'.*'prepare'"):
        parse_params(raw)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("shared", "seed", "42", r"'shared.seed' must be an integer, got str"),
        ("shared", "seed", True, r"'shared.seed' must be an integer, got bool"),
        ("generate", "guidance_scale", "high", r"'generate.guidance_scale' must be a number"),
        ("shared", "class_names", "apple", r"'shared.class_names' must be a list"),
        ("caption", "captioner", "gpt", r"'caption.captioner' must be one of"),
        ("prepare", "val_groups", 0, r"'prepare.val_groups' must be >= 1"),
        ("prepare", "group_pattern", "(", r"'prepare.group_pattern' is not a valid regex"),
        ("prepare", "group_pattern", r"\w+", r"'prepare.group_pattern' needs a capture group"),
        ("caption", "template", "a {subject}", r"'caption.template' has an unknown"),
        ("annotate_with_baseline", "confidence", 1.5, r"confidence' must be in \[0, 1\]"),
    ],
)
def test_bad_values_name_the_key(raw, section, key, value, message):
    broken = copy.deepcopy(raw)
    broken[section][key] = value
    with pytest.raises(ParamsError, match=message):
        parse_params(broken)


def test_missing_key(raw):
    del raw["prepare"]["test_groups"]
    with pytest.raises(ParamsError, match="'prepare.test_groups' is missing"):
        parse_params(raw)


def test_blip_needs_a_model(raw):
    raw["caption"]["captioner"] = "blip"
    raw["caption"]["blip_model"] = None
    with pytest.raises(ParamsError, match="caption.blip_model"):
        parse_params(raw)


def test_missing_and_invalid_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("shared: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
