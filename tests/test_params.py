import copy

import pytest
import yaml

from synthdet.params import ParamsError, load_params, parse_params
from tests.conftest import REPO


@pytest.fixture
def raw() -> dict:
    """The repo's params, on txt2img with the annotator only (the cases below change one key
    from there; test_repo_params_parse covers the repo's own img2img default)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["generate"]["mode"] = "txt2img"
    params["annotate_with_baseline"]["source_boxes"] = False
    params["generate"]["vae_residual"] = False
    return params


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


@pytest.mark.parametrize("section", ["annotate_with_baseline", "evaluate"])
def test_imgsz_is_train_detectors_only(raw, section):
    """One input size: annotate and evaluate read train_detector.yolo.imgsz; an old params.yaml
    that still sets their own copy fails like any unknown key."""
    params = parse_params(copy.deepcopy(raw))
    assert params.train_detector.imgsz == raw["train_detector"]["yolo"]["imgsz"]
    raw[section]["imgsz"] = 192
    with pytest.raises(ParamsError, match=rf"unknown key '{section}.imgsz'"):
        parse_params(raw)


def test_imgsz_defaults_to_ultralytics(raw):
    del raw["train_detector"]["yolo"]["imgsz"]
    assert parse_params(raw).train_detector.imgsz == 640


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
        ("shared", "seed", -1, r"'shared.seed' must be in \[0, 2\*\*32 - 1\]"),
        (
            "shared",
            "class_names",
            ["apple", "pear", "apple"],
            r"'shared.class_names' names 'apple' more than once; each class needs its own name",
        ),
        ("shared", "class_names", ["apple", " pear"], r"'shared.class_names\[1\]' must be a non"),
        ("shared", "mlflow_experiment", " ", r"'shared.mlflow_experiment' must not be empty"),
        ("prepare", "raw_dir", "", r"'prepare.raw_dir' must name the dataset folder"),
        ("prepare", "test_groups", 0, r"'prepare.test_groups' must be >= 1"),
        ("prepare", "format", "kitti", r"'prepare.format' must be one of"),
        ("base", "vae_kl_weight", float("inf"), r"'base.vae_kl_weight' must be a finite number"),
        ("few_shot", "draws", [], r"'few_shot.draws' must list handful draw indices >= 0"),
        ("few_shot", "draws", [0, -1], r"'few_shot.draws' must list handful draw indices >= 0"),
        ("few_shot", "draws", [0, 1, 0], r"'few_shot.draws' holds 0 more than once"),
        ("few_shot", "draws", 2, r"'few_shot.draws' must be a list"),
        ("few_shot", "draws", ["1"], r"'few_shot.draws\[0\]' must be an integer"),
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


# ---------------------------------------------------------------- settings that cannot work


def changed(raw: dict, changes: dict) -> dict:
    """A copy of `raw` with dotted keys ('generate.filters.clusters') set, as `-S` would."""
    result = copy.deepcopy(raw)
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = result
        for part in path:
            node = node[part]
        node[last] = value
    return result


def message(changes: dict, raw: dict) -> str:
    with pytest.raises(ParamsError) as caught:
        parse_params(changed(raw, changes))
    return str(caught.value)


def test_img2img_without_a_denoising_step_names_both_keys_and_the_fix(raw):
    # diffusers: RuntimeError "The size of tensor a (0) must match the size of tensor b (8)"
    img2img = {"generate.mode": "img2img", "generate.num_inference_steps": 20}
    assert message({**img2img, "generate.strength": 0.04}, raw) == (
        "params: 'generate.strength' x 'generate.num_inference_steps' (0.04 x 20) must be >= 1 "
        "with generate.mode img2img: img2img denoises int(strength x steps) steps, and this "
        "leaves none; raise generate.strength to at least 0.05, or "
        "generate.num_inference_steps to at least 25"
    )
    for strength in (0.05, 0.3, 0.6, 1.0):  # one step and more: fine
        parse_params(changed(raw, {**img2img, "generate.strength": strength}))
    # txt2img and ControlNet do not use the strength
    parse_params(changed(raw, {"generate.strength": 0.01}))


def test_the_planned_img2img_default_is_valid(raw):
    parse_params(
        changed(
            raw,
            {
                "generate.mode": "img2img",
                "generate.strength": 0.3,
                "annotate_with_baseline.source_boxes": True,
            },
        )
    )


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"annotate_with_baseline.confidence": 1.0},
            "params: 'annotate_with_baseline.confidence' is 1: no detector score is above 1, so "
            "the baseline would label no box at all; lower it (e.g. 0.25), or label by "
            "construction only with annotate_with_baseline.source_boxes=true (img2img / "
            "controlnet)",
        ),
        (
            {"evaluate.confidence": 1.0},
            "params: 'evaluate.confidence' must be in [0, 1): no box scores above 1, so every "
            "detector would find nothing; keep it low (0.001) so mAP and the PR curve see the "
            "whole ranking",
        ),
        (
            {"evaluate.grid_confidence": 1.0},
            "params: 'evaluate.grid_confidence' must be in [0, 1): no box scores 1, so the test "
            "grid would draw no predicted box",
        ),
        (
            {"generate.filters.blank_max_std": 127.5},
            "params: 'generate.filters.blank_max_std' must be in [0, 127.5): no image has a "
            "pixel std above 127.5, so every image would be blank and dropped (0 keeps all but "
            "perfectly flat images)",
        ),
        (
            {"generate.num_images": 0},
            "params: 'generate.num_images' is 0 for every subject, so generate would make no "
            "image and the synthetic and mixed detectors would have nothing to train on; set "
            "generate.num_images >= 1",
        ),
        (
            {"train_detector.yolo.epochs": 0},
            "params: 'train_detector.yolo.epochs' must be an integer >= 1 (0 epochs trains "
            "nothing), got 0",
        ),
        (
            {"train_detector.yolo.imgsz": 0},
            "params: 'train_detector.yolo.imgsz' must be a positive multiple of 32, got 0",
        ),
    ],
)
def test_settings_under_which_a_stage_produces_nothing(raw, changes, expected):
    assert message(changes, raw) == expected


def test_label_by_construction_only_is_allowed(raw):
    parse_params(
        changed(
            raw,
            {
                "generate.mode": "img2img",
                "annotate_with_baseline.source_boxes": True,
                "annotate_with_baseline.confidence": 1.0,
            },
        )
    )


def test_a_subject_with_images_is_enough(raw):
    raw["generate"]["num_images"] = 0
    raw["generate"]["subjects"] = {"apple_tree": {"num_images": 4}}
    raw["few_shot"]["extra_images"] = 4
    assert parse_params(raw).generate.count("apple_tree") == 4


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"annotate_with_baseline.source_boxes": True},
            "params: 'annotate_with_baseline.source_boxes' is true, but generate.mode is "
            "'txt2img': txt2img images have no source train image, so no source box would ever "
            "be offered; set generate.mode=img2img (or controlnet), or "
            "annotate_with_baseline.source_boxes=false",
        ),
        (
            {"generate.vae_residual": True},
            "params: 'generate.vae_residual' is true, but generate.mode is 'txt2img': only "
            "img2img starts from the real image's latents, so only its output differs from the "
            "source's VAE round trip by what the denoiser changed; set generate.mode=img2img or "
            "generate.vae_residual=false",
        ),
        (
            {"generate.controlnet_model": "lllyasviel/sd-controlnet-canny"},
            "params: 'generate.controlnet_model' is set, but generate.mode is 'txt2img', so no "
            "ControlNet is used; set generate.mode=controlnet, or generate.controlnet_model=null",
        ),
        (
            {"caption.blip_model": "Salesforce/blip-image-captioning-base"},
            "params: 'caption.blip_model' is set, but caption.captioner is 'template', so BLIP "
            "is never run; set caption.captioner=blip, or caption.blip_model=null",
        ),
        (
            {"caption.template": "a photo of {identifier} {class_noun}"},
            "params: 'caption.count_objects' is true, but caption.template has no {objects} "
            "field, so the counts never reach a caption; add {objects} to the template or set "
            "caption.count_objects=false",
        ),
        (
            {"personalize.method": "lora"},
            "params: 'class_images.count' is 8, but personalize.method 'lora' uses no class "
            "images (prior preservation belongs to dreambooth and dreambooth_lora), so they "
            "would be drawn for nothing; set class_images.count=0",
        ),
        (
            {"personalize.prior_loss_weight": 0.0},
            "params: 'personalize.prior_loss_weight' is 0, so the 8 class images per subject "
            "(class_images.count) never reach the loss; set class_images.count=0 to train "
            "without prior preservation, or personalize.prior_loss_weight > 0",
        ),
        (
            {"personalize.class_batch_size": 0},
            "params: 'personalize.class_batch_size' is 0, so the 8 class images per subject "
            "(class_images.count) never reach the loss; set class_images.count=0 to train "
            "without prior preservation, or personalize.class_batch_size > 0",
        ),
        (
            {
                "generate.mode": "controlnet",
                "generate.controlnet_model": "lllyasviel/sd-controlnet-canny",
                "generate.controlnet_conditioning_scale": 0.0,
            },
            "params: 'generate.controlnet_conditioning_scale' is 0.0, but must be > 0 with "
            "generate.mode controlnet: the ControlNet's residuals are scaled by it, so at 0 the "
            "control map has no effect (plain txt2img at the cost of a ControlNet); set it to "
            "1.0, or generate.mode=txt2img",
        ),
        (
            {"generate.sources": "train"},
            "params: 'generate.sources' is 'train', but generate.mode txt2img starts from noise, "
            "not from a real image, so no source is used; set generate.mode=img2img (or "
            "controlnet), or generate.sources=handful",
        ),
        (
            {"train_detector.mix_real_shares": [], "train_detector.mix_synthetic_fractions": [0.1]},
            "params: 'train_detector.mix_synthetic_fractions' is [0.1], but "
            "train_detector.mix_real_shares is empty, so no mix variant would be trained; add a "
            "real share, e.g. -S 'train_detector.mix_real_shares=[1.0]'",
        ),
        (
            {"personalize.lora.lora_alpha": 0},
            "params: 'personalize.lora.lora_alpha' must be > 0, got 0: the LoRA update is scaled "
            "by lora_alpha / r, so at 0 the trained adapter changes nothing; set it to "
            "personalize.lora.r (e.g. 8)",
        ),
        (
            {"personalize.lora.r": 0},
            "params: 'personalize.lora.r' must be an integer >= 1 (the LoRA rank), got 0",
        ),
        (
            {"personalize.train_text_encoder": True, "personalize.text_encoder_lora_modules": []},
            "params: 'personalize.text_encoder_lora_modules' is empty, but "
            "personalize.train_text_encoder is true with dreambooth_lora, so no text-encoder "
            "layer would get a LoRA and it would not train; list modules (e.g. [q_proj, k_proj, "
            "v_proj, out_proj]) or set personalize.train_text_encoder=false",
        ),
        (
            {"personalize.lr_warmup_steps": 60, "personalize.lr_scheduler": "constant_with_warmup"},
            "params: 'personalize.lr_warmup_steps' (60) must be below personalize.max_train_steps "
            "(60): the learning rate would still be warming up when training ends; lower it",
        ),
        (
            {"personalize.checkpointing_steps": 61},
            "params: 'personalize.checkpointing_steps' (61) is above personalize.max_train_steps "
            "(60), so no resumable state would ever be saved; lower it (e.g. to half the steps) "
            "or set it to 0 to save none",
        ),
        (
            {"base.unet_steps": 10},
            "params: 'base.lr_warmup_steps' (20) must be below base.unet_steps (10): the "
            "learning rate would still be warming up when training ends; lower it",
        ),
        (
            {"personalize.lr_warmup_steps": 10},
            "params: 'personalize.lr_warmup_steps' is 10, but personalize.lr_scheduler constant "
            "has no warm-up (diffusers ignores it), so it would do nothing; set "
            "personalize.lr_scheduler=constant_with_warmup, or personalize.lr_warmup_steps=0",
        ),
        (
            {"base.lr_scheduler": "cosine_annealing"},
            "params: 'base.lr_scheduler' must be one of ['linear', 'cosine', "
            "'cosine_with_restarts', 'polynomial', 'constant', 'constant_with_warmup'], got "
            "'cosine_annealing'",
        ),
        (
            {"personalize.textual_inversion.initializer_token": "apple tree"},
            "params: 'personalize.textual_inversion.initializer_token' must be one word (a single "
            "token), got 'apple tree'; e.g. 'tree'",
        ),
        (
            {"personalize.vae": "madebyollin/sdxl-vae-fp16-fix"},
            "params: 'personalize.vae' is 'madebyollin/sdxl-vae-fp16-fix', but "
            "personalize.base_model is builtin:tiny, whose UNet learned the latents of its own "
            "VAE (the base stage): another VAE's latents mean nothing to it; set "
            "personalize.vae=null (a replacement VAE is for a Stable Diffusion base model)",
        ),
        (
            {"train_detector.yolo.lr0": 0},
            "params: 'train_detector.yolo.lr0' must be a number > 0 (at 0 the detector's weights "
            "never change), got 0",
        ),
        (
            {"personalize.textual_inversion.num_vectors": 4},
            "params: 'personalize.textual_inversion.num_vectors' is 4, but personalize.method "
            "dreambooth_lora adds no placeholder token, so it would have no effect; set "
            "personalize.method=textual_inversion, or personalize.textual_inversion.num_vectors=1",
        ),
        (
            {"personalize.textual_inversion.initializer_token": "tree"},
            "params: 'personalize.textual_inversion.initializer_token' is 'tree', but "
            "personalize.method dreambooth_lora adds no placeholder token, so it would have no "
            "effect; set personalize.method=textual_inversion, or "
            "personalize.textual_inversion.initializer_token=null",
        ),
        (  # the default close_mosaic 2 with a 2-epoch run: mosaic is off from epoch 0
            {"train_detector.yolo.epochs": 2},
            "params: 'train_detector.yolo.close_mosaic' (2) is not below "
            "train_detector.yolo.epochs (2): the last close_mosaic epochs run without mosaic, so "
            "no epoch would use it and train_detector.yolo.mosaic (1.0) would have no effect; "
            "lower close_mosaic to at most 1, or set train_detector.yolo.mosaic=0",
        ),
        (  # ultralytics: ZeroDivisionError scaling the weight decay
            {"train_detector.yolo.nbs": 0},
            "params: 'train_detector.yolo.nbs' must be an integer >= 1 (ultralytics divides the "
            "weight decay by this nominal batch size), got 0; e.g. 8",
        ),
        (
            {"train_detector.yolo.batch": -1},
            "params: 'train_detector.yolo.batch' must be an integer >= 1 (below 1 ultralytics' "
            "AutoBatch picks the batch from free GPU memory (16 on a CPU), so the variants would "
            "train at a batch params.yaml does not say), got -1; e.g. 8",
        ),
        (
            {"train_detector.yolo.time": 0.1},
            "params: 'train_detector.yolo.time' is 0.1, but with it ultralytics trains for that "
            "many hours and re-estimates the epochs from the first epoch's speed, so "
            "train_detector.yolo.epochs would be ignored and each variant's epochs would depend "
            "on the machine; remove it and set train_detector.yolo.epochs",
        ),
        (
            {"train_detector.yolo.classes": [5]},
            "params: 'train_detector.yolo.classes' holds 5, but the class ids are 0..0 "
            "(shared.class_names ['apple']), so it would keep no label; use those ids, or remove "
            "train_detector.yolo.classes to train on every class",
        ),
        (  # filters.py's DataError, but only after every image is generated
            {"generate.filters.outliers": "realism", "generate.filters.realism_k": 8},
            "params: 'generate.filters.realism_k' (8) is not below "
            "shared.subjects.apple_tree.images (8): the realism filter measures generated images "
            "against the subject's handful (generate.sources handful), and its k-NN manifold "
            "needs more than k real images, so generate would stop after making every image; "
            "lower realism_k (e.g. 3), or set generate.sources=train",
        ),
        (
            {"train_detector.mix_synthetic_fractions": [0.0, 0.1]},
            "params: 'train_detector.mix_synthetic_fractions' holds 0 with "
            "train_detector.mix_real_shares 1.0: mix-r1.0-f0.0 is every real train image and no "
            "generated one, the variant `real` trained again; drop the 0 (`real` is that point "
            "of the curve), or use real shares below 1",
        ),
        (  # ultralytics renames the classes; annotate's load_detector refused them after training
            {"train_detector.yolo.single_cls": True},
            "params: 'train_detector.yolo.single_cls' is set, but ultralytics then trains one "
            "class 'item' instead of shared.class_names ['apple'], so annotate and evaluate would "
            "refuse the trained detectors; remove it (shared.class_names lists the classes)",
        ),
        (  # validation is the stage's: train_detector.val_every says which epochs
            {"train_detector.yolo.val": True},
            "params: 'train_detector.yolo.val' is set by train_detector.val_every (0: the last "
            "epoch only, 1: every epoch, k: every k-th epoch and the last); remove it",
        ),
        (
            {"train_detector.yolo.patience": 3},
            "params: 'train_detector.yolo.patience' stops training after that many epochs "
            "without a better validation, so it needs every epoch validated, but "
            "train_detector.val_every is 0; set train_detector.val_every=1 or remove patience",
        ),
        (
            {"train_detector.yolo.save": True},
            "params: 'train_detector.yolo.save' is true, which keeps the epoch best on "
            "validation, but train_detector.val_every is 0 (the last epoch only), so the last "
            "epoch would always be kept; set train_detector.val_every (1: every epoch), or save "
            "false",
        ),
        (
            {"train_detector.val_every": -1},
            "params: 'train_detector.val_every' must be an integer >= 0 (0: validate the last "
            "epoch only), got -1",
        ),
    ],
)
def test_settings_that_would_have_no_effect(raw, changes, expected):
    assert message(changes, raw) == expected


def test_the_fixes_those_messages_name_load(raw):
    for changes in (
        {"train_detector.yolo.epochs": 2, "train_detector.yolo.close_mosaic": 1},
        {"train_detector.yolo.epochs": 2, "train_detector.yolo.mosaic": 0.0},
        {"train_detector.preset": "genfusion", "train_detector.yolo.epochs": 1},  # no mosaic
        {"train_detector.yolo.classes": [0]},
        {"train_detector.mix_real_shares": [0.5], "train_detector.mix_synthetic_fractions": [0.0]},
        {"generate.filters.outliers": "realism", "generate.filters.realism_k": 7},
        {
            "personalize.method": "textual_inversion",
            "class_images.count": 0,
            "personalize.textual_inversion.num_vectors": 4,
            "personalize.textual_inversion.initializer_token": "tree",
        },
    ):
        parse_params(changed(raw, changes))


def test_switching_the_prior_off(raw):
    for method in ("lora", "textual_inversion", "dreambooth"):
        parse_params(
            changed(
                raw,
                {
                    "personalize.method": method,
                    "class_images.count": 0,
                    "personalize.prior_loss_weight": 0.0 if method == "dreambooth" else 1.0,
                },
            )
        )


def test_prompt_templates_must_name_the_subject(raw):
    prompts = ["a photo of {identifier} {class_noun}", "a photo of an orchard"]
    assert message({"generate.prompts": prompts}, raw) == (
        "params: 'generate.prompts[1]' 'a photo of an orchard' never names the subject (no "
        "{identifier}), so its images would not show the personalised apple_tree; add "
        "{identifier}, e.g. 'a photo of {identifier} {class_noun}'"
    )
    own = {"apple_tree": {"prompts": ["a photo of {class_noun}"]}}
    assert message({"generate.subjects": own}, raw).startswith(
        "params: 'generate.subjects.apple_tree.prompts[0]' 'a photo of {class_noun}' never names"
    )
    # the identifier written out names it too; for textual inversion that is the placeholder
    parse_params(changed(raw, {"generate.prompts": ["a photo of sks apple tree"]}))
    ti = {"personalize.method": "textual_inversion", "class_images.count": 0}
    parse_params(changed(raw, {**ti, "generate.prompts": ["a photo of <sks>"]}))
    assert "'generate.prompts[0]' 'a photo of sks' never names" in message(
        {**ti, "generate.prompts": ["a photo of sks"]}, raw
    )


def test_textual_inversion_captions_must_hold_the_placeholder(raw):
    ti = {"personalize.method": "textual_inversion", "class_images.count": 0}
    assert message({**ti, "caption.template": "a photo of {class_noun}{objects}"}, raw) == (
        "params: 'caption.template' 'a photo of {class_noun}{objects}' gives captions without "
        "the placeholder <sks> (subject apple_tree: 'a photo of'), and personalize.method "
        "textual_inversion trains only that token, so nothing would be learned; add "
        "{identifier}, e.g. 'a photo of {identifier}{objects}'"
    )
    # the class noun written out becomes the placeholder, as in the default template
    parse_params(changed(raw, {**ti, "caption.template": "a photo of apple tree{objects}"}))
    parse_params(changed(raw, ti))
    # the other methods train more than the token: a caption without it is allowed
    parse_params(changed(raw, {"caption.template": "a photo of {class_noun}{objects}"}))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"personalize.validation_prompts": []},
            "params: 'personalize.validation_prompts' must hold at least one prompt",
        ),
        (
            {"personalize.validation_seeds": []},
            "params: 'personalize.validation_seeds' must hold at least one seed (the validation "
            "grid draws one image per prompt and seed)",
        ),
        (
            {"personalize.train_text_encoder": True},
            "params: 'personalize.train_text_encoder' is true, but personalize.method "
            "textual_inversion trains only the placeholder token's embedding vectors, never "
            "the text encoder; set it to false (or use lora, dreambooth or dreambooth_lora)",
        ),
        (
            {"personalize.validation_prompts": ["a photo of {class_noun}"]},
            "params: 'personalize.validation_prompts' never name the subject ({identifier}), "
            "and textual_inversion changes nothing else, so the base and personalised images "
            "would be identical; add a prompt with {identifier}, e.g. 'a photo of {identifier}'",
        ),
    ],
)
def test_textual_inversion_and_validation_settings(raw, changes, expected):
    ti = {"personalize.method": "textual_inversion", "class_images.count": 0}
    assert message({**ti, **changes}, raw) == expected


def test_a_preset_names_the_yolo_values_it_replaces(raw):
    assert parse_params(raw).train_detector.overridden_by_preset() == []
    raw["train_detector"]["preset"] = "genfusion"
    assert parse_params(raw).train_detector.overridden_by_preset() == [
        "optimizer: 'AdamW' -> 'SGD'",
        "lr0: 0.002 -> 0.01",
        "close_mosaic: 2 -> 0",
    ]
