import dataclasses
import json

import pytest
import yaml

from synthdet.data import DataError, read_jsonl
from synthdet.params import SubjectParams
from synthdet.stages import caption, prepare


def with_prepare(params, **changes):
    return dataclasses.replace(params, prepare=dataclasses.replace(params.prepare, **changes))


def with_subjects(params, **subjects):
    shared = dataclasses.replace(params.shared, subjects=subjects)
    return dataclasses.replace(params, shared=shared)


def with_method(params, method):
    return dataclasses.replace(
        params, personalize=dataclasses.replace(params.personalize, method=method)
    )


@pytest.fixture
def small_params(params):
    params = with_prepare(params, val_groups=1, test_groups=1)
    return with_subjects(params, apple_tree=SubjectParams("sks", "apple tree", 3, ".*"))


def test_prepare_writes_splits_yaml_and_stats(small_params, tiny_yolo_folder, tmp_path):
    out, metrics = tmp_path / "prepared", tmp_path / "metrics" / "prepare.json"
    stats = prepare.run(small_params, tiny_yolo_folder, out, metrics)
    assert json.loads(metrics.read_text()) == stats
    assert stats["train.images"] + stats["val.images"] + stats["test.images"] == 18
    assert stats["personalize.images"] == stats["personalize.apple_tree.images"] == 3
    for split in ("train", "val", "test", "personalize/apple_tree"):
        images = sorted(p.stem for p in (out / split / "images").iterdir())
        labels = sorted(p.stem for p in (out / split / "labels").iterdir())
        assert images == labels and len(images) == stats[f"{split.replace('/', '.')}.images"]
    assert sorted(p.name for p in (out / "personalize").iterdir()) == ["apple_tree"]
    dataset = yaml.safe_load((out / "dataset.yaml").read_text())
    assert dataset == {
        "train": "train/images",
        "val": "val/images",
        "test": "test/images",
        "names": {0: "apple"},
    }


def test_prepare_bad_label_keeps_previous_outputs(small_params, tiny_yolo_folder, tmp_path):
    out, metrics = tmp_path / "prepared", tmp_path / "prepare.json"
    prepare.run(small_params, tiny_yolo_folder, out, metrics)
    before = sorted(p.name for p in (out / "train" / "images").iterdir())
    (tiny_yolo_folder / "labels" / "DSC_0003_tree_1.txt").write_text("0 0.5 0.5 0 0.1\n")
    with pytest.raises(DataError, match="DSC_0003_tree_1.txt:1"):
        prepare.run(small_params, tiny_yolo_folder, out, metrics)
    assert sorted(p.name for p in (out / "train" / "images").iterdir()) == before


def test_template_captions_count_objects(small_params, tiny_yolo_folder, tmp_path):
    out = tmp_path / "prepared"
    prepare.run(small_params, tiny_yolo_folder, out, tmp_path / "prepare.json")
    rows = caption.run(small_params, out / "personalize", tmp_path / "captions")["apple_tree"]
    assert rows == read_jsonl(tmp_path / "captions" / "apple_tree.jsonl")
    assert len(rows) == 3
    for row in rows:
        label = (out / "personalize/apple_tree/labels" / row["file"]).with_suffix(".txt")
        n = len(label.read_text().splitlines())
        noun = "apple" if n == 1 else "apples"
        assert row["caption"] == f"a photo of sks apple tree with {n} {noun}"


def save_tiny_blip(folder):
    """A randomly initialised BLIP captioner, saved like a hub model (no download)."""
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "apple", "tree"]
    folder.mkdir()
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(words)})
    tokenizer.bos_token = "[CLS]"
    config = BlipConfig(
        text_config={
            "vocab_size": len(words),
            "hidden_size": 16,
            "encoder_hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "bos_token_id": 2,
            "sep_token_id": 3,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    model = BlipForConditionalGeneration(config)
    # Random weights mostly emit [SEP] at once; bias the head towards "apple" so there is text.
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[words.index("apple")] = 100.0
    model.save_pretrained(folder)
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    processor.save_pretrained(folder)


def test_blip_captioner_appends_description(small_params, tiny_yolo_folder, tmp_path):
    out = tmp_path / "prepared"
    prepare.run(small_params, tiny_yolo_folder, out, tmp_path / "prepare.json")
    save_tiny_blip(tmp_path / "blip")
    blip_params = dataclasses.replace(
        small_params,
        caption=dataclasses.replace(
            small_params.caption,
            captioner="blip",
            blip_model=str(tmp_path / "blip"),
            count_objects=False,
            max_new_tokens=4,
        ),
    )
    rows = caption.run(blip_params, out / "personalize", tmp_path / "captions")["apple_tree"]
    assert len(rows) == 3
    for row in rows:
        assert row["caption"].startswith("a photo of sks apple tree, apple")


def test_blip_model_missing_says_how_to_fix():
    from synthdet.captioning import BlipCaptioner
    from synthdet.errors import ModelNotAvailableError

    with pytest.raises(ModelNotAvailableError, match="caption.captioner=template"):
        BlipCaptioner("no-such-org/no-such-blip", 5)


def test_subjects_draw_from_train_only_and_independently(params, tiny_yolo_folder, tmp_path):
    """Each subject gets its own train images (stem_pattern), never a val/test image, and its
    draw does not depend on the other subjects."""
    params = with_prepare(params, val_groups=1, test_groups=1)
    red = SubjectParams("sks", "apple tree", 2, ".*")
    green = SubjectParams("zwx", "apple tree", 2, r"tree_[01]$")
    out = tmp_path / "prepared"
    prepare.run(with_subjects(params, red=red, green=green), tiny_yolo_folder, out, tmp_path / "m")
    stems = {
        name: sorted(p.stem for p in (out / "personalize" / name / "images").iterdir())
        for name in ("red", "green")
    }
    train = {p.stem for p in (out / "train" / "images").iterdir()}
    held_out = {p.stem for split in ("val", "test") for p in (out / split / "images").iterdir()}
    for chosen in stems.values():
        assert len(chosen) == 2 and set(chosen) <= train and not set(chosen) & held_out
    assert all(stem.endswith(("tree_0", "tree_1")) for stem in stems["green"])
    alone = tmp_path / "alone"
    prepare.run(with_subjects(params, red=red), tiny_yolo_folder, alone, tmp_path / "m2")
    assert sorted(p.stem for p in (alone / "personalize/red/images").iterdir()) == stems["red"]
    too_many = SubjectParams("zwx", "apple tree", 50, ".*")
    with pytest.raises(DataError, match=r"shared.subjects.green: images=50"):
        prepare.run(with_subjects(params, green=too_many), tiny_yolo_folder, alone, tmp_path / "m")


def test_textual_inversion_captions_use_the_placeholder_not_the_concept(
    small_params, tiny_yolo_folder, tmp_path
):
    out = tmp_path / "prepared"
    prepare.run(small_params, tiny_yolo_folder, out, tmp_path / "prepare.json")
    params = with_method(small_params, "textual_inversion")
    rows = caption.run(params, out / "personalize", tmp_path / "captions")["apple_tree"]
    for row in rows:
        assert row["caption"].startswith("a photo of <sks> with ")
        assert "tree" not in row["caption"]
    from synthdet.captioning import subject_caption

    text = subject_caption("{identifier}", "sks", "apple tree", "", "textual_inversion", "a tree")
    assert text == "<sks>, a <sks>"
    assert subject_caption("{identifier} {class_noun}", "sks", "apple tree", "", "lora") == (
        "sks apple tree"
    )
