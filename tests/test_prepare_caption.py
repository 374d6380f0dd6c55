import dataclasses
import json
import re

import pytest
import yaml

from synthdet.artifacts.metrics import PREPARE_METRICS, SplitCounts, read_prepare_metrics
from synthdet.core.data import DataError, draw_seed, read_jsonl, read_yolo_folder, subject_images
from synthdet.params import SubjectParams
from synthdet.stages import caption, handful, prepare


def with_prepare(params, **changes):
    return dataclasses.replace(params, prepare=dataclasses.replace(params.prepare, **changes))


def with_subjects(params, **subjects):
    shared = dataclasses.replace(params.shared, subjects=subjects)
    # no real-image curve: its counts must lie above the (here larger) handful
    few_shot = dataclasses.replace(params.few_shot, real_image_counts=())
    return dataclasses.replace(params, shared=shared, few_shot=few_shot)


def with_method(params, method):
    # class images only for the methods with prior preservation (params refuse unused ones)
    prior = method in ("dreambooth", "dreambooth_lora")
    return dataclasses.replace(
        params,
        personalize=dataclasses.replace(params.personalize, method=method),
        class_images=dataclasses.replace(
            params.class_images, count=params.class_images.count if prior else 0
        ),
    )


@pytest.fixture
def small_params(params):
    """The test params (1 val and 1 test group, a handful of 3) without a real-image curve."""
    return with_subjects(params, apple_tree=SubjectParams("sks", "apple tree", 3, ".*"))


def test_prepare_writes_splits_yaml_and_stats(small_params, tiny_yolo_folder, tmp_path):
    out, metrics = tmp_path / "prepared", tmp_path / "metrics" / "prepare.json"
    stats = prepare.run(small_params, tiny_yolo_folder, out, metrics)
    assert json.loads(metrics.read_text()) == stats
    assert stats["train.images"] + stats["val.images"] + stats["test.images"] == 18
    assert not any(key.startswith("personalize") for key in stats)  # the handful@ stages' now
    for split in ("train", "val", "test"):
        images = sorted(p.stem for p in (out / split / "images").iterdir())
        labels = sorted(p.stem for p in (out / split / "labels").iterdir())
        assert images == labels and len(images) == stats[f"{split.replace('/', '.')}.images"]
    assert sorted(p.name for p in out.iterdir()) == ["dataset.yaml", "test", "train", "val"]
    dataset = yaml.safe_load((out / "dataset.yaml").read_text())
    assert dataset == {
        "train": "train/images",
        "val": "val/images",
        "test": "test/images",
        "names": {0: "apple"},
    }


def test_prepare_metrics_read_back_typed(small_params, tiny_yolo_folder, tmp_path):
    """What the report reads of prepare.json: `artifacts.metrics.PrepareMetrics`."""
    path = tmp_path / PREPARE_METRICS
    stats = prepare.run(small_params, tiny_yolo_folder, tmp_path / "out", path)
    read = read_prepare_metrics(path)
    assert list(read.splits()) == ["train", "val", "test"]
    for split, counts in read.splits().items():
        assert counts == SplitCounts(stats[f"{split}.images"], stats[f"{split}.boxes"])


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
    handful.run(small_params, 0, out / "train", out / "handful", tmp_path / "handful.json")
    rows = caption.run(small_params, out / "handful", tmp_path / "captions")["apple_tree"]
    assert rows == read_jsonl(tmp_path / "captions" / "apple_tree.jsonl")
    assert len(rows) == 3
    for row in rows:
        label = (out / "handful/apple_tree/labels" / row["file"]).with_suffix(".txt")
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
    handful.run(blip_params, 0, out / "train", out / "handful", tmp_path / "handful.json")
    rows = caption.run(blip_params, out / "handful", tmp_path / "captions")["apple_tree"]
    assert len(rows) == 3
    for row in rows:
        assert row["caption"].startswith("a photo of sks apple tree, apple")


def test_blip_model_missing_says_how_to_fix():
    from synthdet.core.errors import ModelNotAvailableError
    from synthdet.personalization.captioning import BlipCaptioner

    with pytest.raises(ModelNotAvailableError, match="caption.captioner=template"):
        BlipCaptioner("no-such-org/no-such-blip", 5)


def test_subjects_draw_from_train_only_and_independently(params, tiny_yolo_folder, tmp_path):
    """Each subject gets its own train images (stem_pattern), never a val/test image, and its
    draw does not depend on the other subjects (the test params: 1 val and 1 test group); each
    handful draw is another handful, draw 0 the one of seed shared.seed."""
    red = SubjectParams("sks", "apple tree", 2, ".*")
    green = SubjectParams("zwx", "apple tree", 2, r"tree_[01]$")
    out = tmp_path / "prepared"
    both = with_subjects(params, red=red, green=green)
    prepare.run(both, tiny_yolo_folder, out, tmp_path / "m")

    def drawn(params, draw: int, folder: str) -> dict[str, list[str]]:
        metrics = handful.run(params, draw, out / "train", tmp_path / folder, tmp_path / "h.json")
        found = {
            name: sorted(p.stem for p in (tmp_path / folder / name / "images").iterdir())
            for name in params.shared.subjects
        }
        assert metrics["images"] == sum(len(stems) for stems in found.values())
        return found

    stems = drawn(both, 0, "draw0")
    train = {p.stem for p in (out / "train" / "images").iterdir()}
    held_out = {p.stem for split in ("val", "test") for p in (out / split / "images").iterdir()}
    for chosen in stems.values():
        assert len(chosen) == 2 and set(chosen) <= train and not set(chosen) & held_out
    assert all(stem.endswith(("tree_0", "tree_1")) for stem in stems["green"])
    assert drawn(with_subjects(params, red=red), 0, "alone")["red"] == stems["red"]
    records = read_yolo_folder(out / "train", 1)
    seed = draw_seed(params.shared.seed, 1)
    assert seed == params.shared.seed + 1
    other = [s.image.stem for s in subject_images(records, "red", ".*", 2, seed)]
    assert drawn(both, 1, "draw1")["red"] == sorted(other)
    too_many = with_subjects(params, green=SubjectParams("zwx", "apple tree", 50, ".*"))
    with pytest.raises(DataError, match=r"shared.subjects.green: images=50"):
        handful.run(too_many, 0, out / "train", tmp_path / "x", tmp_path / "h.json")


def test_textual_inversion_captions_use_the_placeholder_not_the_concept(
    small_params, tiny_yolo_folder, tmp_path
):
    out = tmp_path / "prepared"
    prepare.run(small_params, tiny_yolo_folder, out, tmp_path / "prepare.json")
    params = with_method(small_params, "textual_inversion")
    handful.run(params, 0, out / "train", out / "handful", tmp_path / "handful.json")
    rows = caption.run(params, out / "handful", tmp_path / "captions")["apple_tree"]
    for row in rows:
        assert row["caption"].startswith("a photo of <sks> with ")
        assert "tree" not in row["caption"]
    from synthdet.params.methods import subject_caption

    text = subject_caption("{identifier}", "sks", "apple tree", "", "textual_inversion", "a tree")
    assert text == "<sks>, a <sks>"
    assert subject_caption("{identifier} {class_noun}", "sks", "apple tree", "", "lora") == (
        "sks apple tree"
    )


# ---------------------------------------------------------------- users' datasets (issue 15)


def write_voc_web_photos(root, count=12, size=(64, 48), boxed=lambda i: True):
    """A VOC set of web photos as they come: name-<i>.jpg, XML in a lower-case annotations/."""
    from PIL import Image, ImageDraw

    for i in range(1, count + 1):
        image = Image.new("RGB", size, (40, 100 + 10 * i, 40))
        ImageDraw.Draw(image).ellipse((10, 10, 30, 30), fill=(200, 30, 30))
        (root / "images").mkdir(parents=True, exist_ok=True)
        image.save(root / "images" / f"name-{i}.jpg", quality=95)
        objects = (
            "<object><name>apple</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>30</xmax>"
            "<ymax>30</ymax></bndbox></object>"
            if boxed(i)
            else ""
        )
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"name-{i}.xml").write_text(
            f"<annotation><filename>name-{i}.jpg</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{objects}</annotation>"
        )
    return root


def test_prepare_new_users_voc_with_each_image_its_own_group(small_params, tmp_path, capsys):
    raw = write_voc_web_photos(tmp_path / "raw")
    params = with_prepare(small_params, group_pattern=None, val_groups=2, test_groups=3)
    stats = prepare.run(params, raw, tmp_path / "out", tmp_path / "prepare.json")
    assert (stats["train.images"], stats["val.images"], stats["test.images"]) == (7, 2, 3)
    assert stats["train.boxes"] == 7 and stats["repairs.background_images"] == 0
    printed = capsys.readouterr()
    assert printed.out.startswith(
        "prepare: 12 images read as images + Annotations/<stem>.xml (Pascal VOC)\n"
        "  train 7 images (7 groups), 7 boxes | val 2 images (2 groups), 2 boxes | test 3 images "
        "(3 groups), 3 boxes\n"
        "  repaired: nothing\n"
        "  dropped: nothing\n"
    )
    # 64 px images at imgsz 192: the apples (20 px) are seen at 60 px, in the detector's range,
    # so no imgsz warning (warnings go to stderr)
    assert "imgsz" not in printed.err


def test_prepare_default_sized_images_print_no_imgsz_warning(
    small_params, tiny_yolo_folder, capsys
):
    # 4-10 px apples in 32 px tiles: a median of 6 px at imgsz 32 (warned), 12 px at 64
    yolo = dict(small_params.train_detector.yolo, imgsz=64)
    params = dataclasses.replace(
        small_params, train_detector=dataclasses.replace(small_params.train_detector, yolo=yolo)
    )
    out = tiny_yolo_folder.parent / "out"
    prepare.run(params, tiny_yolo_folder, out, out.parent / "prepare.json")
    assert "warning" not in capsys.readouterr().err


def test_prepare_stops_without_any_box(small_params, tmp_path):
    raw = write_voc_web_photos(tmp_path / "raw", boxed=lambda i: False)
    params = with_prepare(small_params, group_pattern=None)
    message = (
        f"{raw}: no box in the whole dataset (12 images read as images + Annotations/<stem>.xml "
        "(Pascal VOC), all background)"
    )
    with pytest.raises(DataError, match=re.escape(message)):
        prepare.run(params, raw, tmp_path / "out", tmp_path / "prepare.json")
    assert not (tmp_path / "out").exists()


def test_prepare_stops_when_a_held_out_split_has_no_box(small_params, tmp_path):
    raw = write_voc_web_photos(tmp_path / "raw", count=6, boxed=lambda i: i > 2)
    params = with_prepare(small_params, group_pattern=None)  # 1 val and 1 test group
    split = {}
    for seed in range(50):  # a seed whose val or test split draws only box-free images
        params = dataclasses.replace(
            params,
            shared=dataclasses.replace(params.shared, seed=seed),
            train_detector=dataclasses.replace(params.train_detector, seeds=(seed,)),
        )
        try:
            prepare.run(params, raw, tmp_path / "out", tmp_path / "prepare.json")
        except DataError as exc:
            split[seed] = str(exc)
            break
    (message,) = split.values()
    assert re.search(
        r"the (val|test) split \(1 images\) has no box, so the detector cannot be measured on "
        r"it; prepare.val_groups and test_groups count groups \(photos\), not images: raise "
        r"prepare.(val|test)_groups",
        message,
    )


def test_prepare_counts_policies_in_metrics(small_params, tiny_yolo_folder, tmp_path):
    label = tiny_yolo_folder / "labels" / "DSC_0000_tree_0.txt"
    label.write_text(label.read_text() + label.read_text().splitlines()[0] + "\n")
    (tiny_yolo_folder / "README.md").write_text("my orchard\n")
    stats = prepare.run(small_params, tiny_yolo_folder, tmp_path / "out", tmp_path / "m.json")
    assert stats["dropped.duplicate_boxes"] == 1 and stats["skipped_files"] == 1
    assert {key for key in stats if key.startswith(("repairs.", "dropped."))} == {
        "repairs.background_images",
        "repairs.clipped_boxes",
        "repairs.polygon_boxes",
        "repairs.reencoded_images",
        "repairs.voc_size_from_image",
        "repairs.coco_size_from_image",
        "repairs.label_stem_case",
        "repairs.label_named_after_image",
        "repairs.coco_file_name_resolved",
        "dropped.coco_crowd_regions",
        "dropped.voc_difficult_objects",
        "dropped.duplicate_boxes",
        "dropped.tiny_images",
        "dropped.duplicate_images",
    }
