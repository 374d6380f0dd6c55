"""The library option blocks checked at load against ultralytics' and peft's own schemas, and
the settings ultralytics would silently override or ignore."""

import copy
import dataclasses
import subprocess
import sys

import pytest
import yaml

from synthdet.detectors import detection
from synthdet.params import DETECTOR_PRESETS, ParamsError, parse_params
from synthdet.params.parsing import (
    ULTRALYTICS_KEY_SETS,
    lora_config_fields,
    ultralytics_schema,
)
from tests.conftest import REPO


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def changed(raw: dict, section: str, block: str, **values) -> dict:
    result = copy.deepcopy(raw)
    result[section][block].update(values)
    return result


def message(raw: dict) -> str:
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    return str(caught.value)


def test_schemas_read_without_importing_are_the_libraries_own():
    """What synthdet reads from the installed files is what the imported libraries hold."""
    import peft

    detection._ultralytics()  # ultralytics imported only as synthdet configures it
    import ultralytics.cfg as cfg
    from ultralytics.utils import DEFAULT_CFG_DICT

    defaults, key_sets, int_min = ultralytics_schema()
    assert defaults == DEFAULT_CFG_DICT
    assert key_sets == {name: getattr(cfg, name) for name in ULTRALYTICS_KEY_SETS}
    assert int_min == cfg.CFG_INT_MIN
    assert lora_config_fields() == {f.name for f in dataclasses.fields(peft.LoraConfig)}


def test_loading_params_imports_no_library():
    """The checks read files: a stage that needs no torch does not pay for it at load."""
    code = (
        "import sys; from synthdet.params import load_params; load_params(sys.argv[1]); "
        "print(sorted(m for m in ('torch', 'ultralytics', 'peft') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "params.yaml")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_yolo_typo_names_the_key_and_ultralytics_argument(raw):
    assert message(changed(raw, "train_detector", "yolo", epoch=30)) == (
        "params: unknown key 'train_detector.yolo.epoch' (did you mean "
        "'train_detector.yolo.epochs'?); it is no ultralytics train argument"
    )


def test_lora_typo_names_the_key_and_peft_field(raw):
    assert message(changed(raw, "personalize", "lora", rank=4)) == (
        "params: unknown key 'personalize.lora.rank' (did you mean 'personalize.lora.r'?); "
        "it is no peft.LoraConfig argument"
    )
    assert "(did you mean 'personalize.lora.lora_dropout'?)" in message(
        changed(raw, "personalize", "lora", lora_dropuot=0.1)
    )


def test_every_unknown_key_and_bad_type_at_once(raw):
    raw = changed(raw, "train_detector", "yolo", epoch=30, plots="no", hsv_h=2.0, patience=-1)
    raw = changed(raw, "personalize", "lora", rank=4)
    assert message(raw).splitlines() == [
        "params: unknown key 'personalize.lora.rank' (did you mean 'personalize.lora.r'?); it "
        "is no peft.LoraConfig argument",
        "params: 'train_detector.yolo.plots' must be true or false, got str 'no' "
        "(ultralytics' check_cfg)",
        "params: unknown key 'train_detector.yolo.epoch' (did you mean "
        "'train_detector.yolo.epochs'?); it is no ultralytics train argument",
        "params: 'train_detector.yolo.hsv_h' must be in [0, 1], got 2.0 (ultralytics' check_cfg)",
        "params: 'train_detector.yolo.patience' must be >= 0, got -1 (ultralytics' check_cfg)",
    ]


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"warmup_epochs": "1"}, "'train_detector.yolo.warmup_epochs' must be a number, got str"),
        ({"workers": 1.5}, "'train_detector.yolo.workers' must be an integer, got float 1.5"),
        ({"optimizer": 1}, "'train_detector.yolo.optimizer' must be a string, got int 1"),
        ({"iou": None}, "'train_detector.yolo.iou' must not be null (ultralytics' default: 0.7)"),
        ({"lr0": 2}, "'train_detector.yolo.lr0' must be in [0, 1], got 2"),
        ({"batch": "8"}, "'train_detector.yolo.batch' must be a number, got str '8'"),
    ],
)
def test_yolo_value_types_are_ultralytics(raw, values, problem):
    assert problem in message(changed(raw, "train_detector", "yolo", **values))


def test_valid_library_settings_and_siblings_still_load(raw):
    """Any ultralytics argument and LoraConfig field loads; personalize.lora's siblings
    (text_encoder_lora_modules) are synthdet's own keys, not LoraConfig's."""
    raw = changed(raw, "train_detector", "yolo", patience=5, cos_lr=True, conf=None, scale=0.3)
    raw["train_detector"]["val_every"] = 1  # patience compares every epoch's validation
    raw = changed(raw, "personalize", "lora", use_rslora=True, rank_pattern={"^up.*": 4})
    raw["personalize"]["text_encoder_lora_modules"] = ["q_proj", "v_proj"]
    params = parse_params(raw)
    assert params.train_detector.yolo["patience"] == 5
    assert params.personalize.lora["use_rslora"] is True
    assert params.personalize.text_encoder_lora_modules == ("q_proj", "v_proj")


def test_the_presets_are_ultralytics_arguments():
    defaults = ultralytics_schema()[0]
    for name, preset in DETECTOR_PRESETS.items():
        assert set(preset) <= set(defaults), name


@pytest.mark.parametrize(
    ("drop", "named"),
    [(("optimizer",), "lr0"), (("optimizer", "lr0"), "momentum")],
)
def test_auto_optimizer_with_its_ignored_settings_is_refused(raw, drop, named):
    yolo = raw["train_detector"]["yolo"]
    for key in drop:
        del yolo[key]
    yolo["momentum"] = 0.9
    expected = "lr0 and momentum" if named == "lr0" else "momentum"
    assert message(raw) == (
        "params: 'train_detector.yolo.optimizer' is auto (ultralytics' default when unset), "
        "which picks its own optimizer and learning rate and ignores "
        f"train_detector.yolo.{expected} (ultralytics#8400), so params.yaml would not say how "
        "the detectors train; set train_detector.yolo.optimizer (e.g. AdamW or SGD), or "
        f"remove {expected}"
    )
    yolo["optimizer"] = "auto"
    assert "is auto" in message(raw)
    yolo["optimizer"] = "SGD"
    parse_params(raw)


def test_auto_optimizer_alone_loads(raw):
    yolo = raw["train_detector"]["yolo"]
    del yolo["optimizer"], yolo["lr0"]
    assert "optimizer" not in parse_params(raw).train_detector.train_args()


@pytest.mark.parametrize("resume", [True, "runs/train/weights/last.pt"])
def test_resume_is_refused(raw, resume):
    text = message(changed(raw, "train_detector", "yolo", resume=resume))
    assert text.startswith(f"params: 'train_detector.yolo.resume' is {resume!r}, but synthdet ")
    assert "trains every detector from scratch" in text and text.endswith("; remove it")
    parse_params(changed(raw, "train_detector", "yolo", resume=False))


@pytest.fixture
def cuda(monkeypatch):
    """Set how many CUDA devices torch reports (0: none, torch.cuda.is_available() False)."""
    import torch

    def set_count(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return set_count


@pytest.mark.parametrize("device", [0, "0", "cuda", "cuda:0", [0, 1], -1])
def test_device_without_cuda_names_what_torch_sees(raw, cuda, device):
    cuda(0)
    assert message(changed(raw, "train_detector", "yolo", device=device)) == (
        f"params: 'train_detector.yolo.device' is {device!r}, but torch sees no CUDA device "
        "(torch.cuda.is_available() False) on this machine, so ultralytics would stop when the "
        "first detector trains; remove it (ultralytics then uses a GPU if there is one, else "
        "the CPU), or set it to cpu"
    )


def test_device_index_beyond_the_gpus(raw, cuda):
    cuda(1)
    text = message(changed(raw, "train_detector", "yolo", device="0,1"))
    assert "torch sees 1 CUDA device(s)" in text and text.endswith("or to a device index below 1")
    for device in (0, "cuda:0", "cuda", None, "cpu"):
        parse_params(changed(raw, "train_detector", "yolo", device=device))


def test_cpu_device_loads_without_cuda(raw, cuda):
    cuda(0)
    for device in ("cpu", "CPU", None, "", []):
        parse_params(changed(raw, "train_detector", "yolo", device=device))


@pytest.mark.parametrize(
    ("section", "key", "values", "repeated"),
    [
        ("train_detector", "mix_real_shares", [1, 1.0], "1.0"),
        ("train_detector", "mix_synthetic_fractions", [0.1, 0.1], "0.1"),
        ("train_detector", "seeds", [42, 42], "42"),
        ("train_detector", "variants", ["synthetic", "synthetic"], "'synthetic'"),
        ("few_shot", "real_image_counts", [64, 64], "64"),
        ("few_shot", "sources", ["pseudo", "synthetic", "pseudo"], "'pseudo'"),
    ],
)
def test_matrix_lists_hold_each_value_once(raw, section, key, values, repeated):
    raw[section][key] = values
    read = [float(v) if key.startswith("mix_") else v for v in values]
    assert message(raw) == (
        f"params: '{section}.{key}' holds {repeated} more than once (as read: {read}): "
        "dvc.yaml makes one matrix stage per value, so the same detectors would be trained "
        "twice; list each value once"
    )
