"""Two classifier checks of the generated images, with small timm networks trained from scratch.

- `two_sample_test`: can a classifier tell real from generated images? Equal numbers of each,
  k-fold: every image is classified once by a network that did not train on it. Held-out
  accuracy near 0.5 means indistinguishable (to this classifier); the one-sided binomial p-value
  says how surprising the accuracy would be if the two sets were indistinguishable.
- `subject_check`: does a generated image show the subject at all? A classifier learns real
  subject crops (windows centred on the real train boxes) against box-free background windows,
  both cut from the real images scaled to the generated images' size, so that both are seen at
  the same detail. An image counts as showing the subject when any window of a scan at the same
  scale is classified as subject. The same scan of real val images (which have boxes) is the
  reference: the share a perfect generator would reach with this classifier.

Both checks say when they are invalid (`valid`, `invalid_reason`): a classifier that does not
beat chance on its own held-out crops (one-sided exact binomial test of accuracy > 0.5 at
`ALPHA`), or that takes most real background for the subject (`MAX_BACKGROUND_FALSE_POSITIVES`),
cannot tell whether a generated image shows the subject, so the subject shares are then null;
a real-vs-generated classifier that does not even fit its own training images above chance
cannot separate anything, so its held-out "indistinguishable" is not a finding.

Everything runs on CPU in seconds at the default sizes; the networks are random-initialised
(`pretrained=False`), so nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import binomtest
from torch import Tensor, nn

from synthdet.core.data import DataError, Sample, verify_image
from synthdet.params import ParamsError

BATCH_SIZE = 32
LEARNING_RATE = 2e-3
# Subject windows are this many times the median box side (some context around the object),
# kept within these shares of the image side.
WINDOW_PER_BOX = 2.0
WINDOW_LIMITS = (0.1, 0.5)
MAX_CROPS_PER_CLASS = 256
# Networks this small run fastest on one thread (and do not stall when other processes share
# the cores, where OpenMP threads spin-wait for each other).
THREADS = 1
# Significance level of the one-sided binomial tests that decide whether a classifier beats
# chance (0.5) on its held-out crops (subject check) or its training images (two-sample test).
ALPHA = 0.05
# The subject check is invalid when its classifier calls at least this share of held-out real
# background crops "subject": it would then find the subject in nearly any image.
MAX_BACKGROUND_FALSE_POSITIVES = 0.5


def build_classifier(model_name: str, num_classes: int = 2) -> nn.Module:
    """A random-initialised timm classifier (`evaluate.classifier_model`)."""
    import timm

    try:
        return timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise ParamsError(
            f"params: 'evaluate.classifier_model' {model_name!r} is not a timm model ({exc}); "
            "e.g. test_resnet or resnet10t"
        ) from exc


def to_tensor(images: Sequence[Image.Image], size: int) -> Tensor:
    """Images as a float batch (N, 3, size, size) scaled to [-1, 1]."""
    arrays = [
        np.asarray(
            image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32
        )
        for image in images
    ]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return batch / 127.5 - 1


def load_images(paths: Sequence[Path], size: int | None = None) -> list[Image.Image]:
    images = []
    for path in paths:
        verify_image(path)
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        images.append(rgb if size is None else rgb.resize((size, size), Image.Resampling.LANCZOS))
    return images


def train_classifier(
    model_name: str, inputs: Tensor, labels: Tensor, epochs: int, seed: int
) -> nn.Module:
    """Train a 2-class timm network from scratch (AdamW, horizontal flips, seeded)."""
    with _few_threads():
        return _train(model_name, inputs, labels, epochs, seed)


@contextlib.contextmanager
def _few_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(model_name: str, inputs: Tensor, labels: Tensor, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_classifier(model_name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), BATCH_SIZE):
            index = order[start : start + BATCH_SIZE]
            if len(index) < 2:  # batch norm needs two samples
                continue
            batch = inputs[index]
            flip = torch.rand(len(index), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            loss = F.cross_entropy(model(batch), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def subject_probability(model: nn.Module, inputs: Tensor) -> Tensor:
    """P(class 1) for each input, in batches."""
    with _few_threads():
        return torch.cat(
            [
                model(inputs[start : start + 256]).softmax(dim=1)[:, 1]
                for start in range(0, len(inputs), 256)
            ]
        )


def above_chance_p_value(correct: int, tested: int) -> float:
    """One-sided exact binomial p-value of `correct` right out of `tested` two-class decisions
    under chance (p = 0.5): P(X >= correct), X ~ Binomial(tested, 0.5) (scipy's `binomtest`).
    1.0 when nothing was tested."""
    if tested == 0:
        return 1.0
    return float(binomtest(correct, tested, 0.5, alternative="greater").pvalue)


# ---------------------------------------------------------------- real vs generated


@dataclass(frozen=True)
class TwoSampleResult:
    accuracy: float  # held-out accuracy over all folds; 0.5 = indistinguishable
    correct: int
    tested: int  # images classified, half real, half generated
    p_value: float  # one-sided binomial test of accuracy > 0.5
    folds: int
    # accuracy on the images each fold trained on: near 0.5 too means the network did not even
    # fit its training images, so a held-out 0.5 says nothing about the images
    train_accuracy: float
    # one-sided binomial p-value of the training accuracy vs chance, each image counted once
    # (by its mean correctness over the folds-1 networks that trained on it)
    train_p_value: float
    # why the test cannot separate anything (training accuracy not above chance); None = valid
    invalid_reason: str | None

    @property
    def valid(self) -> bool:
        return self.invalid_reason is None

    def summary(self) -> dict[str, float | int | str | None]:
        """The flat metrics written to metrics/draws/draw<d>/images.json
        (`real_vs_generated.<key>`); `valid` is 1 or 0 (a number, for MLflow and `dvc metrics`)."""
        return {
            "accuracy": round(self.accuracy, 6),
            "correct": self.correct,
            "tested": self.tested,
            "p_value": float(f"{self.p_value:.3g}"),
            "train_accuracy": round(self.train_accuracy, 6),
            "train_p_value": float(f"{self.train_p_value:.3g}"),
            "folds": self.folds,
            "valid": int(self.valid),
            "invalid_reason": self.invalid_reason,
        }


def two_sample_test(
    real: Sequence[Path],
    generated: Sequence[Path],
    model_name: str,
    size: int,
    epochs: int,
    folds: int,
    seed: int,
) -> TwoSampleResult:
    """k-fold real-vs-generated classification on equal numbers of each (the smaller set's).

    Invalid (`invalid_reason`) when the networks' accuracy on their own training images does not
    beat chance (`above_chance_p_value` >= ALPHA). Raises DataError with fewer images of either
    kind than folds."""
    count = min(len(real), len(generated))
    if count < folds:
        raise DataError(
            f"the real-vs-generated test needs at least evaluate.classifier_folds={folds} images "
            f"of each kind, got {len(real)} real and {len(generated)} generated"
        )
    rng = random.Random(seed)
    chosen = {0: rng.sample(sorted(real), count), 1: rng.sample(sorted(generated), count)}
    inputs = torch.cat([to_tensor(load_images(chosen[label]), size) for label in (0, 1)])
    labels = torch.tensor([0] * count + [1] * count)
    fold_of = torch.tensor([i % folds for i in range(count)] * 2)  # stratified: equal shares
    correct = fitted = fitted_correct = 0
    for fold in range(folds):
        held_out = fold_of == fold
        model = train_classifier(
            model_name, inputs[~held_out], labels[~held_out], epochs, seed + fold
        )
        predicted = (subject_probability(model, inputs) > 0.5).long()
        right = predicted == labels
        correct += int(right[held_out].sum())
        fitted += int((~held_out).sum())
        fitted_correct += int(right[~held_out].sum())
    tested = 2 * count
    # every image is in folds-1 training sets: count it once, so that the test does not claim
    # more independent trials than there are images
    train_p_value = above_chance_p_value(round(fitted_correct / (folds - 1)), tested)
    invalid_reason = None
    if train_p_value >= ALPHA:
        invalid_reason = (
            f"the classifier does not fit its own training images above chance (training "
            f"accuracy {fitted_correct / fitted:.2f} on {tested} images, one-sided binomial "
            f"p = {train_p_value:.2g} >= {ALPHA}), so a held-out accuracy near 0.5 does not mean "
            "indistinguishable"
        )
    return TwoSampleResult(
        accuracy=correct / tested,
        correct=correct,
        tested=tested,
        p_value=above_chance_p_value(correct, tested),
        folds=folds,
        train_accuracy=fitted_correct / fitted,
        train_p_value=train_p_value,
        invalid_reason=invalid_reason,
    )


# ---------------------------------------------------------------- subject check


@dataclass(frozen=True)
class SubjectResult:
    # generated images in which a window is classified as subject; None when the check is invalid
    generated_share: float | None
    generated_images: int
    reference_share: float | None  # the same for real images with boxes (the val split)
    reference_images: int
    crop_accuracy: float | None  # held-out subject-vs-background crops (held-out train images)
    crop_tested: int
    crop_p_value: float  # one-sided binomial test of crop_accuracy > 0.5 (1.0 with no crop)
    background_false_positive_rate: float | None  # held-out background crops called subject
    window: float  # window side as a share of the image side
    scale: int  # pixels of the image side all crops are cut at (the generated images' size)
    # why the classifier cannot tell the subject from background (`subject_invalid_reason`);
    # None = valid
    invalid_reason: str | None = None

    @property
    def valid(self) -> bool:
        return self.invalid_reason is None

    def summary(self) -> dict[str, float | int | str | None]:
        """The flat metrics written to metrics/draws/draw<d>/images.json (`subject.<key>`);
        `valid` is 1 or 0 and the shares are null when it is 0."""

        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 6)

        return {
            "generated_share": rounded(self.generated_share),
            "generated_images": self.generated_images,
            "reference_share": rounded(self.reference_share),
            "reference_images": self.reference_images,
            "crop_accuracy": rounded(self.crop_accuracy),
            "crop_tested": self.crop_tested,
            "crop_p_value": float(f"{self.crop_p_value:.3g}"),
            "background_false_positive_rate": rounded(self.background_false_positive_rate),
            "window": round(self.window, 6),
            "valid": int(self.valid),
            "invalid_reason": self.invalid_reason,
        }


def subject_invalid_reason(
    correct: int, tested: int, background_false_positive_rate: float | None
) -> str | None:
    """Why a subject classifier with `correct` of `tested` held-out crops right cannot judge
    images, or None when it can: no held-out crop, accuracy not above chance
    (`above_chance_p_value` >= ALPHA), or background_false_positive_rate >=
    MAX_BACKGROUND_FALSE_POSITIVES."""
    if tested == 0:
        return "no held-out crop to test its classifier on (the held-out train images have no box)"
    reasons = []
    p_value = above_chance_p_value(correct, tested)
    if p_value >= ALPHA:
        reasons.append(
            f"its classifier does not beat chance on its held-out crops (accuracy "
            f"{correct / tested:.2f} on {tested} crops, one-sided binomial p = {p_value:.2g} >= "
            f"{ALPHA})"
        )
    rate = background_false_positive_rate
    if rate is not None and rate >= MAX_BACKGROUND_FALSE_POSITIVES:
        reasons.append(
            f"it takes {rate:.2f} of held-out real background crops for the subject (>= "
            f"{MAX_BACKGROUND_FALSE_POSITIVES})"
        )
    return "; ".join(reasons) or None


def window_share(samples: Sequence[Sample]) -> float:
    sides = [max(box.w, box.h) for sample in samples for box in sample.boxes]
    if not sides:
        raise DataError("the subject check needs real train images with boxes")
    low, high = WINDOW_LIMITS
    return float(np.clip(WINDOW_PER_BOX * np.median(sides), low, high))


def _window(cx: float, cy: float, side: float) -> tuple[float, float, float, float]:
    """A window of `side` centred at (cx, cy), moved inside the unit square."""
    x0 = min(max(cx - side / 2, 0.0), 1.0 - side)
    y0 = min(max(cy - side / 2, 0.0), 1.0 - side)
    return x0, y0, x0 + side, y0 + side


def _overlaps(window: tuple[float, float, float, float], sample: Sample) -> bool:
    x0, y0, x1, y1 = window
    for box in sample.boxes:
        bx0, by0, bx1, by1 = box.xyxy(1, 1)
        if bx0 < x1 and x0 < bx1 and by0 < y1 and y0 < by1:
            return True
    return False


def _crop(image: Image.Image, window: tuple[float, float, float, float]) -> Image.Image:
    side = image.size[0]
    return image.crop(tuple(round(v * side) for v in window))


def subject_crops(
    samples: Sequence[Sample], scale: int, window: float, rng: random.Random
) -> tuple[list[Image.Image], list[Image.Image]]:
    """(subject crops, background crops), at most MAX_CROPS_PER_CLASS of each."""
    boxes = [(sample, box) for sample in samples for box in sample.boxes]
    rng.shuffle(boxes)
    boxes = boxes[:MAX_CROPS_PER_CLASS]
    images = {
        s.image: image
        for s, image in zip(samples, load_images([s.image for s in samples], scale), strict=True)
    }
    subject = [_crop(images[s.image], _window(box.cx, box.cy, window)) for s, box in boxes]
    background: list[Image.Image] = []
    for _ in range(50 * MAX_CROPS_PER_CLASS):
        if len(background) >= len(subject):
            break
        sample = rng.choice(samples)
        candidate = _window(rng.random(), rng.random(), window)
        if not _overlaps(candidate, sample):
            background.append(_crop(images[sample.image], candidate))
    return subject, background


def scan_windows(image: Image.Image, window: float) -> list[Image.Image]:
    """Windows of `window` side at a stride of about half a window, covering the whole image
    (so an object on one window's border lies whole inside the next)."""
    steps = int(np.ceil((1 - window) / (window / 2))) + 1
    starts = np.linspace(0, 1 - window, steps)
    return [_crop(image, (x, y, x + window, y + window)) for y in starts for x in starts]


def share_with_subject(
    model: nn.Module, paths: Sequence[Path], scale: int, window: float, size: int
) -> float:
    found = 0
    for image in load_images(paths, scale):
        probability = subject_probability(model, to_tensor(scan_windows(image, window), size))
        found += int(bool((probability > 0.5).any()))
    return found / len(paths)


def subject_check(
    train: Sequence[Sample],
    reference: Sequence[Sample],
    generated: Sequence[Path],
    model_name: str,
    size: int,
    epochs: int,
    seed: int,
    held_out_share: float = 0.2,
) -> SubjectResult:
    """Train subject-vs-background on real train crops; scan generated and real val images.

    The train images are split by image (`held_out_share` held out); the classifier's held-out
    crops decide whether the check is valid (`subject_invalid_reason`); an invalid check scans
    nothing and reports null shares. Raises DataError without generated images, without boxes
    in train, or with fewer than 2 subject or background training crops."""
    if not generated:
        raise DataError("the subject check needs generated images")
    with Image.open(generated[0]) as first:
        scale = max(first.size)
    window = window_share(train)
    rng = random.Random(seed)
    ordered = sorted(train, key=lambda s: s.image)
    rng.shuffle(ordered)
    cut = max(1, round(held_out_share * len(ordered)))
    held_out, fitted = ordered[:cut], ordered[cut:]
    subject, background = subject_crops(fitted, scale, window, rng)
    if len(background) < 2 or len(subject) < 2:
        raise DataError(
            f"the subject check found {len(subject)} subject and {len(background)} box-free "
            "background windows in the real train images; it needs at least 2 of each"
        )
    inputs = torch.cat([to_tensor(subject, size), to_tensor(background, size)])
    labels = torch.tensor([1] * len(subject) + [0] * len(background))
    model = train_classifier(model_name, inputs, labels, epochs, seed)
    test_subject, test_background = subject_crops(held_out, scale, window, rng)
    tested = len(test_subject) + len(test_background)
    correct = 0
    false_positive_rate = None
    if test_subject:
        correct += int((subject_probability(model, to_tensor(test_subject, size)) > 0.5).sum())
    if test_background:
        flagged = subject_probability(model, to_tensor(test_background, size)) > 0.5
        correct += int((~flagged).sum())
        false_positive_rate = float(flagged.float().mean())
    reference_paths = [s.image for s in reference]
    invalid_reason = subject_invalid_reason(correct, tested, false_positive_rate)
    shares = (
        (None, None)
        if invalid_reason
        else (
            share_with_subject(model, generated, scale, window, size),
            share_with_subject(model, reference_paths, scale, window, size),
        )
    )
    return SubjectResult(
        generated_share=shares[0],
        generated_images=len(generated),
        reference_share=shares[1],
        reference_images=len(reference_paths),
        crop_accuracy=correct / tested if tested else None,
        crop_tested=tested,
        crop_p_value=above_chance_p_value(correct, tested),
        background_false_positive_rate=false_positive_rate,
        window=window,
        scale=scale,
        invalid_reason=invalid_reason,
    )
