"""params.yaml as DVC reads it (YAML 1.2), shared / prepare ranges, cross-section checks."""

import re

import pytest
import yaml

from synthdet.core import data
from synthdet.core.cli import run_stage
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


# ---------------------------------------------------------------- issue 15, section 6


def test_learning_rate_written_as_1e_4_is_the_number_dvc_reads(tmp_path):
    """`1e-4` by hand: PyYAML (YAML 1.1) reads the string '1e-4', DVC (ruamel, YAML 1.2) 0.0001."""
    text = (REPO / "params.yaml").read_text()
    text = re.sub(r"(?m)^(  learning_rate:) \S+", r"\1 1e-4", text)
    assert yaml.safe_load(text)["personalize"]["learning_rate"] == "1e-4"
    assert load_params(write_params(tmp_path, text)).personalize.learning_rate == 0.0001


@pytest.mark.parametrize("resolution", [0, -64, 100])
def test_resolution_must_be_a_positive_multiple_of_8(raw, resolution):
    raw["shared"]["resolution"] = resolution
    message = (
        "params: 'shared.resolution' must be a positive multiple of 8 (the VAE halves the image "
        f"3 times in SD), got {resolution}"
    )
    with pytest.raises(ParamsError, match=re.escape(message)):
        parse_params(raw)


def test_repeated_class_name_at_load(tmp_path):
    text = (REPO / "params.yaml").read_text()
    text = text.replace("class_names: [apple]", "class_names: [apple, pear, apple]")
    message = "params: 'shared.class_names' names 'apple' more than once"
    with pytest.raises(ParamsError, match=re.escape(message)):
        load_params(write_params(tmp_path, text))


def test_every_stage_loads_its_params_through_run_stage(tmp_path, capsys):
    """Every stage's command parses the whole params.yaml (all cross-section checks) before
    any work: -S shared.seed=1 stops prepare, not annotate after the diffusion stages."""
    stages = sorted((REPO / "src/synthdet/stages").glob("[a-z]*.py"))
    assert len(stages) > 10
    for stage in stages:
        called = r"run_stage\(\s*lambda params: run\(\s*params\b"
        assert re.search(called, stage.read_text()), stage.name
    text = (REPO / "params.yaml").read_text().replace("  seed: 42", "  seed: 1", 1)
    started = []
    with pytest.raises(SystemExit) as exited:
        run_stage(started.append, str(write_params(tmp_path, text)))
    assert exited.value.code == 2 and started == []
    assert capsys.readouterr().err.startswith(
        "error: params: 'shared.seed' (1) must be one of 'train_detector.seeds' [42]"
    )


# ---------------------------------------------------------------- issue 13: one value lives once


def test_one_resolution_and_a_base_prompt_from_the_subjects(raw):
    """The default resolves to exactly what the four copies and base.class_prompt said."""
    params = parse_params(raw)
    assert params.shared.resolution == 192
    assert params.base_prompt == "a photo of apple tree"
    for section in ("base", "class_images", "personalize", "generate"):
        assert "resolution" not in raw[section]
    assert "class_prompt" not in raw["base"]
    # several subjects: every distinct class noun, in shared.subjects order
    pear = {"identifier": "zwx", "class_noun": "pear tree", "images": 2, "stem_pattern": "p"}
    raw["shared"]["subjects"]["pear"] = pear
    raw["shared"]["subjects"]["apple_2"] = {**pear, "class_noun": "apple tree"}
    raw["class_images"]["prompt"] = "an orchard photo of {class_noun}"
    raw["few_shot"]["real_image_counts"] = [64]
    assert parse_params(raw).base_prompt == "an orchard photo of apple tree and pear tree"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"base": {"vae_crop": 48}, "shared": {"resolution": 32}},
            "params: 'base.vae_crop' (48) is larger than the images it is cut from "
            "(shared.resolution 32); set it to at most 32",
        ),
        (
            {"base": {"vae_crop": 16, "unet_crop": 64}, "shared": {"resolution": 48}},
            "params: 'base.unet_crop' (64) is larger than the images it is cut from "
            "(shared.resolution 48); set it to at most 48",
        ),
        (
            {"shared": {"resolution": 200}},
            "params: 'base.unet_channels' has too many levels for 50 px latents "
            "(shared.resolution 200 / 2**(len(base.vae_channels) - 1) must divide by "
            "2**(levels - 1)); drop a level or raise shared.resolution",
        ),
        (
            {"base": {"unet_crop": 40}},
            "params: 'base.unet_crop' must be a positive multiple of 16 (the VAE's and UNet's "
            "downsampling), got 40",
        ),
        (
            {"class_images": {"prompt": "a photo of a tree"}},
            "params: 'class_images.prompt' 'a photo of a tree' never names the class "
            "({class_noun}), so neither the class images nor the base model's training prompt "
            "would say what the subject is; add {class_noun}, e.g. 'a photo of {class_noun}'",
        ),
    ],
)
def test_base_against_the_one_resolution(raw, changes, expected):
    for section, values in changes.items():
        raw[section].update(values)
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    assert str(caught.value) == expected
