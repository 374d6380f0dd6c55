import dataclasses
import json

import pytest
import yaml

from synthdet.data import DataError, read_jsonl
from synthdet.stages import caption, prepare


def with_prepare(params, **changes):
    return dataclasses.replace(params, prepare=dataclasses.replace(params.prepare, **changes))


@pytest.fixture
def small_params(params):
    return with_prepare(params, val_groups=1, test_groups=1, personalize_images=3)


def test_prepare_writes_splits_yaml_and_stats(small_params, tiny_yolo_folder, tmp_path):
    out, metrics = tmp_path / "prepared", tmp_path / "metrics" / "prepare.json"
    stats = prepare.run(small_params, tiny_yolo_folder, out, metrics)
    assert json.loads(metrics.read_text()) == stats
    assert stats["train.images"] + stats["val.images"] + stats["test.images"] == 18
    assert stats["personalize.images"] == 3
    for split in ("train", "val", "test", "personalize"):
        images = sorted(p.stem for p in (out / split / "images").iterdir())
        labels = sorted(p.stem for p in (out / split / "labels").iterdir())
        assert images == labels and len(images) == stats[f"{split}.images"]
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
    rows = caption.run(small_params, out / "personalize", tmp_path / "captions.jsonl")
    assert rows == read_jsonl(tmp_path / "captions.jsonl")
    assert len(rows) == 3
    for row in rows:
        label = (out / "personalize" / "labels" / row["file"]).with_suffix(".txt")
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
    rows = caption.run(blip_params, out / "personalize", tmp_path / "captions.jsonl")
    assert len(rows) == 3
    for row in rows:
        assert row["caption"].startswith("a photo of sks apple tree, apple")


def test_blip_model_missing_says_how_to_fix():
    from synthdet.captioning import BlipCaptioner
    from synthdet.errors import ModelNotAvailableError

    with pytest.raises(ModelNotAvailableError, match="caption.captioner=template"):
        BlipCaptioner("no-such-org/no-such-blip", 5)
