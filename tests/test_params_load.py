"""params.yaml as DVC reads it (YAML 1.2), shared / prepare ranges, cross-section checks."""

import re

import pytest
import yaml

from synthdet import data
from synthdet.params import ParamsError, load_params, parse_params
from tests.conftest import REPO


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def write_params(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_yaml_1_2_numbers_as_dvc_reads_them(tmp_path):
    """`1e-4` is a float in YAML 1.2 (DVC, ruamel.yaml) though a string in PyYAML's 1.1."""
    text = (REPO / "params.yaml").read_text()
    text = re.sub(r"(?m)^(  vae_kl_weight:) \S+", r"\1 1e-6", text)
    text = re.sub(r"(?m)^(  mlflow_experiment:) \S+", r"\1 yes", text)
    params = load_params(write_params(tmp_path, text))
    assert params.base.vae_kl_weight == 1e-6
    assert params.shared.mlflow_experiment == "yes"  # a string in YAML 1.2, not True


def test_repeated_key_and_bom(tmp_path):
    text = (REPO / "params.yaml").read_text()
    assert load_params(write_params(tmp_path, "\ufeff" + text)).shared.seed == 42
    path = write_params(tmp_path, "shared:\n  seed: 1\n  seed: 2\n")
    message = (
        f'params: {path} is not valid YAML: found duplicate key "seed" with value "2" '
        '(original value: "1") (line 3, column 3)'
    )
    with pytest.raises(ParamsError, match=re.escape(message)):
        load_params(path)


def test_seed_must_be_a_detector_seed_at_load(raw):
    """-S shared.seed=1 alone used to pass prepare and stop the run at annotate."""
    raw["shared"]["seed"] = 1
    message = (
        "params: 'shared.seed' (1) must be one of 'train_detector.seeds' [42]: the real "
        "detector of shared.seed is the annotator; e.g. -S shared.seed=42"
    )
    with pytest.raises(ParamsError, match=re.escape(message)):
        parse_params(raw)


def test_generate_subjects_checked_at_load(raw):
    raw["generate"]["subjects"] = {"apple_tre": {"num_images": 3}}
    with pytest.raises(ParamsError, match=r"'generate.subjects.apple_tre' names no subject"):
        parse_params(raw)


def test_group_pattern_null_makes_each_image_its_own_group(raw, tiny_yolo_folder):
    raw["prepare"]["group_pattern"] = None
    params = parse_params(raw)
    assert params.prepare.group_pattern is None
    samples = data.read_yolo_folder(tiny_yolo_folder, 1)
    split = data.split_by_group(samples, None, 2, 3, seed=0)
    assert (len(split["val"]), len(split["test"]), len(split["train"])) == (2, 3, 13)


def test_group_pattern_mismatch_suggests_null(tiny_yolo_folder):
    samples = data.read_yolo_folder(tiny_yolo_folder, 1)
    with pytest.raises(data.DataError, match=r"or to null if every image is its own photo"):
        data.split_by_group(samples, r"IMG_(\d+)", 1, 1, seed=0)
