"""The filters: Inception features (cached), memorisation, off-distribution, FID."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from torch import nn

from synthdet.core.data import DataError
from synthdet.diffusion.hashing import sha256_of
from synthdet.generation.plan import SubjectPlan
from synthdet.image_checks.metrics import (
    FidInceptionFeatures,
    image_embeddings,
    inception_features,
    nearest_by_cosine,
)
from synthdet.params import GenerateFilterParams

FEATURES_FILE = "cache/features.npz"


class FeatureCache:
    """Inception features by file content hash, kept in one .npz across runs."""

    def __init__(self, path: Path, extractor: nn.Module | None = None) -> None:
        self.path = path
        self._extractor = extractor
        self.features: dict[str, np.ndarray] = {}
        if path.is_file():
            try:
                with np.load(path) as data:
                    self.features = dict(zip(data["keys"].tolist(), data["features"], strict=True))
            except (OSError, ValueError, KeyError):
                self.features = {}
        self.used: set[str] = set()

    @property
    def extractor(self) -> nn.Module:
        if self._extractor is None:
            self._extractor = FidInceptionFeatures()
        return self._extractor

    def get(self, paths: Sequence[Path], size: int | None = None) -> np.ndarray:
        """(N, 2048) features: at the images' own size, or resized to `size` and normalised."""
        keys = [sha256_of(p) + (f"@{size}" if size else "") for p in paths]
        missing = [(p, k) for p, k in zip(paths, keys, strict=True) if k not in self.features]
        for start in range(0, len(missing), 32):
            chunk = missing[start : start + 32]
            chunk_paths = [p for p, _ in chunk]
            if size:
                computed = image_embeddings(chunk_paths, size, self.extractor)
            else:
                computed = inception_features(chunk_paths, self.extractor)
            for (_, key), row in zip(chunk, computed.numpy(), strict=True):
                self.features[key] = row.astype(np.float32)
        self.used.update(keys)
        if not keys:
            width = getattr(self._extractor, "num_features", FidInceptionFeatures.num_features)
            return np.zeros((0, width), np.float32)
        return np.stack([self.features[k] for k in keys])

    def save(self) -> None:
        """Keep the features used by this run only, written atomically."""
        keys = sorted(self.used)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(suffix=".npz", dir=self.path.parent)
        os.close(handle)
        try:
            features = (
                np.stack([self.features[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
            )
            np.savez(tmp, keys=np.array(keys, dtype=str), features=features)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def largest_cluster(
    features: np.ndarray, filters: GenerateFilterParams, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Genfusion's filter without t-SNE: KMeans on PCA-reduced features, keep the largest cluster.

    Returns (keep mask, cluster label per image). t-SNE is left out on purpose: it preserves
    neighbourhoods, not distances or densities, so KMeans clusters on it are not meaningful; PCA
    keeps the Euclidean geometry KMeans assumes. Ties go to the cluster with the lower label.
    """
    count = len(features)
    components = max(1, min(filters.pca_components, count - 1, features.shape[1]))
    reduced = PCA(n_components=components, svd_solver="full", random_state=seed).fit_transform(
        features.astype(np.float64)
    )
    labels = KMeans(n_clusters=filters.clusters, n_init=10, random_state=seed).fit_predict(reduced)
    sizes = np.bincount(labels, minlength=filters.clusters)
    return labels == int(np.argmax(sizes)), labels


def realism_scores(real: np.ndarray, generated: np.ndarray, k: int) -> np.ndarray:
    """Kynkäänniemi et al. (2019) realism score of each generated sample against the real set.

    The real manifold is the union of balls around real samples with radius = distance to the
    k-th nearest real neighbour; the half with the largest radii is discarded (outliers), as in
    the paper. Score >= 1: the sample lies inside the manifold.
    """
    if len(real) <= k:
        raise DataError(f"the realism filter needs more than realism_k={k} real images")
    real_t, gen_t = torch.from_numpy(real).double(), torch.from_numpy(generated).double()
    radii = torch.cdist(real_t, real_t).kthvalue(k + 1, dim=1).values  # +1: itself at 0
    kept = radii <= radii.median()
    distances = torch.cdist(gen_t, real_t[kept]).clamp_min(1e-12)
    return (radii[kept][None, :] / distances).max(dim=1).values.numpy()


Judgement = dict[str, tuple[str | None, dict[str, Any]]]  # file -> (drop reason, scores)


def _kmeans(
    subject: str,
    files: list[str],
    features: np.ndarray,
    real: np.ndarray | None,
    filters: GenerateFilterParams,
    seed: int,
) -> Judgement:
    """Drop what lies outside the largest KMeans cluster (with enough images to cluster)."""
    if len(files) < filters.min_cluster_images:
        return {}
    keep, labels = largest_cluster(features, filters, seed)
    sizes = np.bincount(labels, minlength=filters.clusters)
    return {
        file: (
            None if keep_it else "off_distribution",
            {"cluster": int(label), "cluster_size": int(sizes[label])},
        )
        for file, keep_it, label in zip(files, keep, labels, strict=True)
    }


def _realism(
    subject: str,
    files: list[str],
    features: np.ndarray,
    real: np.ndarray | None,
    filters: GenerateFilterParams,
    seed: int,
) -> Judgement:
    """Drop what scores below generate.filters.min_realism against the subject's real images."""
    if real is None or len(real) <= filters.realism_k:
        raise DataError(
            f"subject {subject}: the realism filter needs more than "
            f"generate.filters.realism_k={filters.realism_k} real train images"
        )
    realism = realism_scores(real, features, filters.realism_k)
    return {
        file: (
            "off_distribution" if value < filters.min_realism else None,
            {"realism": round(float(value), 4)},
        )
        for file, value in zip(files, realism, strict=True)
    }


def _keep_all(*_: Any) -> Judgement:
    return {}


def _kmeans_warning(filters: GenerateFilterParams, counts: dict[str, int]) -> str | None:
    small = [name for name, count in counts.items() if 0 < count < filters.min_cluster_images]
    if not small:
        return None
    return (
        f"generate.filters.outliers=kmeans does nothing for {', '.join(small)}: fewer "
        f"images than generate.filters.min_cluster_images={filters.min_cluster_images} "
        "are never clustered. Lower it, or generate more images."
    )


@dataclass(frozen=True)
class OutlierFilter:
    """One `generate.filters.outliers` choice."""

    name: str
    judge: Callable[..., Judgement]  # (subject, files, features, real, filters, seed)
    needs_real: bool  # the subject's real train images' features are passed as `real`
    warning: Callable[[GenerateFilterParams, dict[str, int]], str | None] = lambda f, c: None


OUTLIER_FILTERS = {
    f.name: f
    for f in (
        OutlierFilter("kmeans", _kmeans, needs_real=False, warning=_kmeans_warning),
        OutlierFilter("realism", _realism, needs_real=True),
        OutlierFilter("none", _keep_all, needs_real=False),
    )
}


@dataclass
class FilterResult:
    kept: dict[str, bool]  # file -> kept
    reasons: dict[str, str | None]
    scores: dict[str, dict[str, Any]]


def apply_filters(
    records: dict[str, dict],
    paths: dict[str, Path],
    subjects: Sequence[SubjectPlan],
    real_features: dict[str, np.ndarray],
    cache: FeatureCache,
    filters: GenerateFilterParams,
    resolution: int,
    seed: int,
) -> tuple[FilterResult, dict[str, np.ndarray]]:
    """Decide kept / dropped per image: blank, then memorisation, then off-distribution.

    `records` maps file -> provenance of the planned images. Returns the decisions and the
    generated images' features per file (for FID).
    """
    kept, reasons, scores = {}, {}, {}
    features_by_file: dict[str, np.ndarray] = {}
    for subject in subjects:
        files = [f for f in sorted(records) if records[f]["subject"] == subject.name]
        for file in files:
            record = records[file]
            final = record["attempts"][record["attempt"]]
            scores[file] = {"blank_std": final["std"], "nsfw": final["nsfw"]}
            reasons[file] = "blank" if record["blank"] else None
        alive = [f for f in files if reasons[f] is None]
        if alive:
            generated = cache.get([paths[f] for f in alive])
            features_by_file.update(zip(alive, generated, strict=True))
        # Memorisation: cosine similarity of normalised Inception features at one size.
        if alive and subject.references and filters.memorization_threshold < 1:
            refs = cache.get(list(subject.references), size=resolution)
            best, similarity = nearest_by_cosine(generated, refs)
            for row, file in enumerate(alive):
                value = float(similarity[row])
                scores[file]["memorization_similarity"] = round(value, 4)
                scores[file]["memorization_match"] = subject.references[best[row]].name
                if value > filters.memorization_threshold:
                    reasons[file] = "memorized"
        alive = [f for f in alive if reasons[f] is None]
        if alive:  # off-distribution
            matrix = np.stack([features_by_file[f] for f in alive])
            outliers = OUTLIER_FILTERS[filters.outliers]
            real = real_features.get(subject.name)
            for file, (reason, extra) in outliers.judge(
                subject.name, alive, matrix, real, filters, seed
            ).items():
                scores[file].update(extra)
                if reason:
                    reasons[file] = reason
        for file in files:
            kept[file] = reasons[file] is None
    return FilterResult(kept, reasons, scores), features_by_file


def count_reasons(reasons: dict[str, str | None]) -> Counter:
    return Counter(reason for reason in reasons.values() if reason)
