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


def test_subjects_parse_into_dataclasses(raw):
    raw["shared"]["subjects"]["green"] = {
        "identifier": "zwx",
        "class_noun": "apple tree",
        "images": 4,
        "stem_pattern": "green",
    }
    subjects = parse_params(raw).shared.subjects
    assert list(subjects) == ["apple_tree", "green"]
    assert subjects["green"].identifier == "zwx" and subjects["green"].images == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"idenitfier": "sks"},
            r"unknown key 'shared.subjects.apple_tree.idenitfier'.*"
            r"'shared.subjects.apple_tree.identifier'",
        ),
        ({"images": 0}, r"'shared.subjects.apple_tree.images' must be >= 1"),
        ({"images": "8"}, r"'shared.subjects.apple_tree.images' must be an integer"),
        ({"identifier": "two words"}, r"'shared.subjects.apple_tree.identifier' must be one"),
        ({"stem_pattern": "("}, r"'shared.subjects.apple_tree.stem_pattern' is not a valid"),
    ],
)
def test_bad_subject_names_the_key(raw, change, message):
    raw["shared"]["subjects"]["apple_tree"].update(change)
    with pytest.raises(ParamsError, match=message):
        parse_params(raw)


def test_subject_name_and_missing_subject_key(raw):
    broken = copy.deepcopy(raw)
    broken["shared"]["subjects"]["a b"] = broken["shared"]["subjects"]["apple_tree"]
    with pytest.raises(ParamsError, match=r"'shared.subjects.a b' is not a valid subject name"):
        parse_params(broken)
    del raw["shared"]["subjects"]["apple_tree"]["class_noun"]
    with pytest.raises(ParamsError, match=r"'shared.subjects.apple_tree.class_noun' is missing"):
        parse_params(raw)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("method", "hypernetwork", r"'personalize.method' must be one of"),
        ("optimizer", "sgd", r"'personalize.optimizer' must be one of"),
        ("snr_gamma", 0, r"'personalize.snr_gamma' must be > 0"),
        ("validation_prompts", ["a {subject}"], r"'personalize.validation_prompts\[0\]'"),
        ("textual_inversion", {"num_vectors": 0, "initializer_token": None}, "num_vectors"),
    ],
)
def test_bad_personalize_values_name_the_key(raw, key, value, message):
    raw["personalize"][key] = value
    with pytest.raises(ParamsError, match=message):
        parse_params(raw)
