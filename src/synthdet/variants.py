"""Detector training-data variants: which real and synthetic images each one trains on.

- `real`: every real train image. Trained once per seed; shared.seed's is also the annotator.
- `synthetic`: every auto-labelled generated image, no real one.
- `mixed`: both, all of them.
- `mix-r<share>-f<fraction>` (train_detector.mix_real_shares x mix_synthetic_fractions): the
  first `share` of the real train images plus as many auto-labelled images as make up `fraction`
  of the training set, n_synthetic = round(fraction / (1 - fraction) * n_real). Varying the share
  varies how much real data there is; varying the fraction, how much synthetic data is added.

The subsets are nested and do not depend on the detector's seed: images are ordered once by a
shuffle seeded with shared.seed and each variant takes a prefix. So a smaller mix is a subset of
a larger one, and the seeds of one variant differ in training randomness only.

Variant names come from dvc.yaml's matrix (`mix-r${real_share}-f${synthetic_fraction}`, Python's
`str` of the numbers); `parse` reads them back, so `mix-r1-f0.1` and `mix-r1.0-f0.1` are the same
variant.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from synthdet.data import DataError
from synthdet.params import Params, ParamsError

BASELINE = "real"
FIXED = ("real", "synthetic", "mixed")
MIX_NAME = re.compile(r"mix-r(?P<real>[0-9.eE+-]+)-f(?P<fraction>[0-9.eE+-]+)")


@dataclass(frozen=True)
class Variant:
    name: str
    real_share: float  # share of the real train images used (0 for `synthetic`)
    # share of synthetic images in the training set; None: every auto-labelled image
    synthetic_fraction: float | None

    @property
    def uses_synthetic(self) -> bool:
        return self.synthetic_fraction is None or self.synthetic_fraction > 0


def mix_name(real_share: float, synthetic_fraction: float) -> str:
    return f"mix-r{real_share}-f{synthetic_fraction}"


def parse(name: str) -> Variant:
    """The variant a name (as dvc.yaml writes it) stands for."""
    fixed = {
        "real": Variant("real", 1.0, 0.0),
        "synthetic": Variant("synthetic", 0.0, None),
        "mixed": Variant("mixed", 1.0, None),
    }
    if name in fixed:
        return fixed[name]
    match = MIX_NAME.fullmatch(name)
    if match is None:
        raise ParamsError(
            f"unknown detector variant {name!r}: expected one of {list(FIXED)} or "
            "mix-r<real share>-f<synthetic fraction>"
        )
    try:
        share, fraction = float(match["real"]), float(match["fraction"])
    except ValueError as exc:
        raise ParamsError(f"detector variant {name!r}: {exc}") from exc
    if not (0 < share <= 1 and 0 <= fraction < 1):
        raise ParamsError(
            f"detector variant {name!r}: the real share must be in (0, 1] "
            "(train_detector.mix_real_shares) and the synthetic fraction in [0, 1) "
            "(train_detector.mix_synthetic_fractions)"
        )
    return Variant(mix_name(share, fraction), share, fraction)


def configured(params: Params) -> list[Variant]:
    """The variants params ask for, the baseline first, then synthetic, mixed and the mixes."""
    config = params.train_detector
    mixes = [
        Variant(mix_name(share, fraction), share, fraction)
        for share in config.mix_real_shares
        for fraction in config.mix_synthetic_fractions
    ]
    return [parse(name) for name in FIXED] + mixes


def same_variant(a: Variant, b: Variant) -> bool:
    return (a.real_share, a.synthetic_fraction) == (b.real_share, b.synthetic_fraction)


def seed_folder(seed: int) -> str:
    return f"seed{seed}"


@dataclass(frozen=True)
class Composition:
    real: tuple[Path, ...]  # image paths
    synthetic: tuple[Path, ...]

    @property
    def synthetic_share(self) -> float:
        total = len(self.real) + len(self.synthetic)
        return len(self.synthetic) / total if total else 0.0


def _ordered(images: Sequence[Path], seed: int) -> list[Path]:
    ordered = sorted(images)
    random.Random(seed).shuffle(ordered)
    return ordered


def compose(
    variant: Variant, real_images: Sequence[Path], synthetic_images: Sequence[Path], seed: int
) -> Composition:
    """The real and synthetic images `variant` trains on (nested prefixes of seeded orders)."""
    real = _ordered(real_images, seed)[: round(variant.real_share * len(real_images))]
    if variant.real_share > 0 and not real:
        raise DataError(
            f"variant {variant.name}: {variant.real_share} of {len(real_images)} real train "
            "images is no image; raise train_detector.mix_real_shares"
        )
    synthetic = _ordered(synthetic_images, seed)
    if variant.synthetic_fraction is not None:
        fraction = variant.synthetic_fraction
        wanted = round(fraction / (1 - fraction) * len(real))
        if wanted > len(synthetic):
            raise DataError(
                f"variant {variant.name}: a synthetic fraction of {fraction} with {len(real)} "
                f"real images needs {wanted} auto-labelled images, but there are "
                f"{len(synthetic)}; raise generate.num_images or lower "
                "train_detector.mix_synthetic_fractions / mix_real_shares"
            )
        synthetic = synthetic[:wanted]
    if not real and not synthetic:
        raise DataError(f"variant {variant.name}: no training images")
    return Composition(tuple(real), tuple(synthetic))


def subset_view(source: Path, images: Sequence[Path], view: Path) -> Path:
    """A YOLO folder at `view` linking `images` of the YOLO folder `source` and their labels."""
    (view / "images").mkdir(parents=True)
    (view / "labels").mkdir()
    for image in images:
        label = Path(source) / "labels" / f"{image.stem}.txt"
        (view / "images" / image.name).symlink_to(Path(image).resolve())
        (view / "labels" / label.name).symlink_to(label.resolve())
    return view
