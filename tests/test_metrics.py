"""mAP, PR curve, precision/recall; FID and KID with the Inception network shipped offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthdet.analysis.metrics import detection_metrics, precision_recall
from synthdet.core.data import DataError
from synthdet.image_checks.metrics import (
    FidInceptionFeatures,
    frechet_inception_distance,
    image_realism,
    kernel_inception_distance,
)


def boxes(rows: list[list[float]], scores: list[float] | None = None) -> dict[str, torch.Tensor]:
    entry = {
        "boxes": torch.tensor(rows, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.zeros(len(rows), dtype=torch.int64),
    }
    if scores is not None:
        entry["scores"] = torch.tensor(scores, dtype=torch.float32)
    return entry


TARGETS = [
    boxes([[10, 10, 40, 40], [50, 50, 90, 80]]),
    boxes([[0, 0, 30, 60]]),
]


def test_perfect_predictions_score_one() -> None:
    predictions = [
        boxes([[10, 10, 40, 40], [50, 50, 90, 80]], [0.9, 0.8]),
        boxes([[0, 0, 30, 60]], [0.7]),
    ]
    result = detection_metrics(predictions, TARGETS)
    assert (result.map50_95, result.map50, result.map75) == pytest.approx((1.0, 1.0, 1.0))
    assert len(result.recall) == len(result.precision) == 101
    assert result.precision == pytest.approx((1.0,) * 101)


def test_shifted_boxes_score_less() -> None:
    # Shifted by a quarter of their size: IoU 0.6, so they still count at .5 but not at .75.
    predictions = [
        boxes([[15, 10, 45, 40], [60, 50, 100, 80]], [0.9, 0.8]),
        boxes([[0, 15, 30, 75]], [0.7]),
    ]
    result = detection_metrics(predictions, TARGETS)
    assert result.map50 == pytest.approx(1.0)
    assert result.map75 == pytest.approx(0.0)
    assert 0 < result.map50_95 < 1


def test_missed_boxes_lower_the_pr_curve() -> None:
    predictions = [boxes([[10, 10, 40, 40]], [0.9]), boxes([], [])]
    result = detection_metrics(predictions, TARGETS)
    assert result.map50 < 1
    assert result.precision[-1] == 0  # recall 1 is never reached


def write_images(folder: Path, count: int, size: int, seed: int, mean: int) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        pixels = np.clip(rng.normal(mean, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"{index:05d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def inception() -> FidInceptionFeatures:
    return FidInceptionFeatures()


def test_inception_features_take_uint8_images_of_any_size(inception: FidInceptionFeatures) -> None:
    features = inception(torch.randint(0, 256, (2, 3, 48, 80), dtype=torch.uint8))
    assert features.shape == (2, inception.num_features)
    with pytest.raises(ValueError, match="uint8"):
        inception(torch.rand(1, 3, 64, 64))


# torchmetrics' FID takes the eigenvalues of a 2048x2048 matrix per computation (~20 s on 2 CPU
# cores), so the fast suite computes one FID and the comparison of two is marked slow.
def test_fid_and_kid_run_offline_with_the_shipped_inception(
    tmp_path: Path, inception: FidInceptionFeatures
) -> None:
    real = write_images(tmp_path / "real", 4, 96, seed=0, mean=90)
    generated = write_images(tmp_path / "generated", 3, 64, seed=1, mean=170)
    calls = []
    hook = inception.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    try:
        result = image_realism(real, generated, features=inception, seed=0)
    finally:
        hook.remove()
    assert sum(calls) == 7  # one Inception pass per image feeds both FID and KID
    assert result.fid > 0
    assert result.kid_subset_size == 3  # min(50, 4 real, 3 generated)
    assert result.kid_mean > 0 and result.kid_std >= 0


def test_kid_is_seeded_and_separates_feature_sets() -> None:
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(60, 16, generator=generator)
    same = torch.randn(70, 16, generator=generator)
    shifted = torch.randn(70, 16, generator=generator) + 1
    first = kernel_inception_distance(real, shifted, seed=3)
    assert kernel_inception_distance(real, shifted, seed=3) == first
    assert first[2] == 50  # capped at KID_SUBSET_SIZE
    assert first[0] > 10 * abs(kernel_inception_distance(real, same, seed=3)[0])
    assert kernel_inception_distance(real[:5], shifted, seed=3)[2] == 5


@pytest.mark.slow
def test_fid_separates_image_sets(tmp_path: Path, inception: FidInceptionFeatures) -> None:
    real = write_images(tmp_path / "real", 4, 96, seed=0, mean=90)
    generated = write_images(tmp_path / "generated", 4, 64, seed=1, mean=170)
    same = frechet_inception_distance(real, real, features=inception)
    different = frechet_inception_distance(real, generated, features=inception)
    assert abs(same) < 1.0
    assert different > 10 * max(abs(same), 1.0)


def test_fid_needs_two_images_per_set(tmp_path: Path) -> None:
    (one,) = write_images(tmp_path / "one", 1, 32, seed=0, mean=90)
    with pytest.raises(DataError, match="at least 2 generated"):
        frechet_inception_distance([one, one], [one], features=torch.nn.Identity())


# ---------------------------------------------------------------- cross-check with pycocotools

# Four images with a miss, duplicates, false positives, a low-IoU hit and an empty image.
CROSS_TARGETS = [
    [[10, 10, 50, 50], [60, 60, 100, 90], [5, 70, 35, 95]],
    [[0, 0, 40, 80]],
    [],
    [[20, 20, 60, 60], [70, 10, 95, 40]],
]
CROSS_PREDICTIONS = [
    ([[12, 10, 52, 48], [60, 62, 98, 90], [70, 0, 90, 20], [11, 11, 50, 50]], [0.9, 0.6, 0.5, 0.3]),
    ([[5, 10, 40, 85]], [0.8]),
    ([[30, 30, 60, 60]], [0.95]),
    ([[30, 28, 70, 66], [72, 12, 95, 38], [0, 0, 10, 10]], [0.7, 0.4, 0.2]),
]


def coco_stats(predictions, targets, size: int = 100, stats: int = 3) -> tuple[float, ...]:
    """The first `stats` COCOeval summary numbers, from pycocotools run directly: mAP@[.5:.95],
    @.5, @.75, then mAP@[.5:.95] of small, medium and large objects."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for image_id, (rows, (boxes_, scores)) in enumerate(zip(targets, predictions, strict=True), 1):
        images.append({"id": image_id, "width": size, "height": size})
        for x0, y0, x1, y1 in rows:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
        for (x0, y0, x1, y1), score in zip(boxes_, scores, strict=True):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": score,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "apple"}],
        }
        ground_truth.createIndex()
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return tuple(float(v) for v in evaluation.stats[:stats])


def test_detection_metrics_agree_with_pycocotools() -> None:
    predictions = [boxes(rows, scores) for rows, scores in CROSS_PREDICTIONS]
    targets = [boxes(rows) for rows in CROSS_TARGETS]
    result = detection_metrics(predictions, targets)
    reference = coco_stats(CROSS_PREDICTIONS, CROSS_TARGETS)
    assert 0.2 < reference[1] < 1  # a case with misses and false positives, not a trivial one
    assert (result.map50_95, result.map50, result.map75) == pytest.approx(reference, abs=0.01)


# ---------------------------------------------------------------- precision / recall


def test_precision_recall_matches_greedily_at_iou_half() -> None:
    predictions = [
        # a hit, a duplicate of it (its target is taken), a box on nothing
        boxes([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], [0.9, 0.8, 0.7]),
        boxes([[0, 5, 10, 15]], [0.6]),  # IoU 1/3: a false positive and a miss
        boxes([[0, 0, 5, 5]], [0.5]),  # an image without objects
        boxes([[0, 0, 10, 10]], [0.4]),  # IoU exactly 0.5 counts
    ]
    targets = [
        boxes([[0, 0, 10, 10], [20, 20, 30, 30]]),
        boxes([[0, 0, 10, 10]]),
        boxes([]),
        boxes([[0, 0, 10, 20]]),
    ]
    result = precision_recall(predictions, targets)
    assert (result.true_positives, result.false_positives, result.false_negatives) == (2, 4, 2)
    assert result.precision == pytest.approx(2 / 6)
    assert result.recall == pytest.approx(2 / 4)


def test_precision_recall_takes_the_most_confident_prediction_first() -> None:
    # Both predictions overlap the one target enough; the more confident one takes it even though
    # the other overlaps more, as in COCO.
    predictions = [boxes([[0, 0, 10, 10], [0, 0, 10, 12]], [0.3, 0.9])]
    result = precision_recall(predictions, [boxes([[0, 0, 10, 10]])])
    assert (result.true_positives, result.false_positives) == (1, 1)


def test_precision_recall_classes_do_not_match_each_other() -> None:
    prediction = boxes([[0, 0, 10, 10]], [0.9])
    prediction["labels"] = torch.ones(1, dtype=torch.int64)
    result = precision_recall([prediction], [boxes([[0, 0, 10, 10]])])
    assert (result.precision, result.recall) == (0.0, 0.0)


def test_precision_is_undefined_without_predictions() -> None:
    result = precision_recall([boxes([], [])], [boxes([[0, 0, 10, 10]])])
    assert result.precision is None and result.recall == 0.0


# ---------------------------------------------------------------- mAP by object size

# 300 px images with boxes on both sides of COCO's size limits (32² and 96² px of area).
SIZED_TARGETS = [
    [[10, 10, 30, 30], [50, 50, 100, 100], [120, 120, 240, 250]],
    [[5, 200, 25, 225], [150, 20, 260, 140], [40, 40, 70, 72]],
    [[200, 200, 290, 290], [10, 250, 24, 262]],
]
SIZED_PREDICTIONS = [
    (
        [[11, 10, 31, 31], [55, 52, 104, 100], [130, 125, 245, 250], [0, 0, 9, 9]],
        [0.9, 0.8, 0.4, 0.7],
    ),
    ([[5, 203, 26, 224], [160, 30, 250, 150], [200, 0, 230, 30]], [0.5, 0.85, 0.6]),
    ([[205, 195, 290, 285], [12, 250, 26, 263], [40, 40, 70, 72]], [0.3, 0.95, 0.2]),
]


def test_map_by_object_size_agrees_with_pycocotools() -> None:
    predictions = [boxes(rows, scores) for rows, scores in SIZED_PREDICTIONS]
    targets = [boxes(rows) for rows in SIZED_TARGETS]
    result = detection_metrics(predictions, targets)
    reference = coco_stats(SIZED_PREDICTIONS, SIZED_TARGETS, size=300, stats=6)
    assert all(0 < value < 1 for value in reference[3:])  # every size range is exercised
    mine = (result.map50_95, result.map50, result.map75)
    mine += (result.map_small, result.map_medium, result.map_large)
    assert mine == pytest.approx(reference, abs=0.01)


def test_a_size_without_ground_truth_is_undefined() -> None:
    predictions = [boxes([[10, 10, 50, 50], [50, 50, 90, 80]], [0.9, 0.8])]
    result = detection_metrics(predictions, [boxes([[10, 10, 50, 50], [50, 50, 90, 80]])])
    assert result.map_medium == pytest.approx(1.0)  # 1600 and 1200 px²: both medium
    assert result.map_small is None and result.map_large is None


def test_spread_is_the_sample_std_over_seeds() -> None:
    from synthdet.analysis.metrics import spread

    result = spread([0.2, 0.3, 0.4])
    assert (result.mean, result.std, result.n) == pytest.approx((0.3, 0.1, 3))
    assert spread([0.25]).std is None  # one seed: no spread to report


# ---------------------------------------------------------------- CLIP score


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A random CLIP model and processor built from configs, saved like a hub model."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    from synthdet.diffusion.vocabulary import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16
    )
    model = CLIPModel(config)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
        tokenizer=tokenizer,
    )
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_clip_score_runs_a_configured_clip_model(tmp_path: Path, tiny_clip: Path) -> None:
    from transformers import CLIPModel, CLIPProcessor

    from synthdet.image_checks.metrics import clip_score

    images = write_images(tmp_path / "images", 3, 48, seed=0, mean=120)
    prompts = ["a photo of sks apple tree", "an apple", "a photo of sks apple tree in the sun"]
    score = clip_score(images, prompts, str(tiny_clip))
    # the same by hand: 100 x cosine similarity of image and text embeddings, the mean floored
    # at 0 (torchmetrics' definition)
    model, processor = (
        CLIPModel.from_pretrained(tiny_clip),
        CLIPProcessor.from_pretrained(tiny_clip),
    )
    pixels = [np.asarray(Image.open(path).convert("RGB")) for path in images]
    inputs = processor(text=prompts, images=pixels, return_tensors="pt", padding=True)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=inputs["pixel_values"])
        text = model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        )
    image = getattr(image, "pooler_output", image)
    text = getattr(text, "pooler_output", text)
    cosine = torch.nn.functional.cosine_similarity(image, text)
    assert float((100 * cosine).mean()) > 0  # so the floor does not hide a difference
    assert score == pytest.approx(float((100 * cosine).mean()), abs=1e-3)


def test_clip_model_that_is_not_there_names_the_param(tmp_path: Path) -> None:
    from synthdet.core.errors import ModelNotAvailableError
    from synthdet.image_checks.metrics import clip_score

    images = write_images(tmp_path / "images", 1, 32, seed=0, mean=120)
    with pytest.raises(ModelNotAvailableError, match="evaluate.clip_model"):
        clip_score(images, ["a photo"], str(tmp_path / "no-clip-here"))


def test_fid_matches_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    from synthdet.image_checks.metrics import PrecomputedFeatures, frechet_distance

    rng = np.random.default_rng(0)
    real = rng.normal(size=(30, 64)).astype(np.float32)
    for generated in (rng.normal(0.5, 2.0, size=(12, 64)), rng.normal(size=(80, 64))):
        generated = generated.astype(np.float32)
        metric = FrechetInceptionDistance(feature=PrecomputedFeatures(64))
        metric.update(torch.from_numpy(real), real=True)
        metric.update(torch.from_numpy(generated), real=False)
        expected = float(metric.compute())
        assert frechet_distance(real, generated) == pytest.approx(expected, rel=1e-3)
    assert frechet_distance(real, real[:1]) is None
