"""Object-level fidelity: do the generated objects look like the handful's objects?

FID, KID and the subject check look at whole images or learn "object vs background"; none of
them sees a green apple repainted red. This check cuts the boxes out of three sets and compares
the objects themselves:

- generated: each generated image's boxes are its source's real boxes (the manifest's `source`,
  a train image, and its label file), since img2img and ControlNet keep the source's layout (the
  same assumption as `annotation.source_proposals`); check-images runs before any annotation;
- handful: the boxes of those source images (the handful with `generate.sources: handful`);
- val: the real val split's boxes, the reference for how much real objects differ.

(a) Colour: each crop's mean CIE L*a*b* colour (sRGB, D65; IEC 61966-2-1 and CIE 15), per set
the mean over crops, and the shift of the generated mean from the handful mean in units of the
val crops' standard deviation (`<channel>_shift_z`; a* is green (-) to red (+), b* blue (-) to
yellow (+)). The val mean's shift in the same units (`val_<channel>_shift_z`) is the real
reference. (b) Features: KID (torchmetrics' `KernelInceptionDistance` on the shipped FID
Inception, `metrics.FidInceptionFeatures`) of generated vs handful crops, and of val vs handful
crops as the reference, from the same number of crops per set and subsets of half of them, so
that the spread over subsets is a (conservative) noise scale of each KID.

The generated objects drift (`drift: 1`) when a channel's |shift z| exceeds both DRIFT_Z and the
val crops' own |shift z|, or when the generated-vs-handful KID exceeds the val-vs-handful KID by
more than their subset standard deviations together.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from synthdet.artifacts.manifest import read_manifest
from synthdet.core.data import DataError, Sample, verify_image
from synthdet.image_checks.metrics import kernel_inception_distance

CHANNELS = ("l", "a", "b")  # CIE L*, a*, b*
# A colour channel drifts when the generated objects' mean moved from the handful's by more than
# this many standard deviations of real (val) objects: farther than a typical real object lies
# from the real mean.
DRIFT_Z = 1.0
# Crops are resized to this side before the Inception network (which upsamples to 299 px):
# a common size for batching, larger than the default data's 11-23 px apples.
CROP_SIDE = 64
# At most this many crops per set go through Inception for KID, the same number from each set
# (a seeded sample; the colour statistics use every crop), so that both KIDs use one subset size:
# half that number (subsets as large as the set would all be the set, with no spread).
MAX_KID_CROPS = 50
MIN_CROPS = 4  # per set: KID subsets of at least 2 crops
MIN_BOX_PIXELS = 2  # boxes narrower than this (in the image's pixels) are skipped


@dataclass(frozen=True)
class CropSet:
    """Object crops of one set, each resized to CROP_SIDE, and their mean L*a*b* colours."""

    crops: list[Image.Image]
    lab: np.ndarray  # (N, 3) mean L*, a*, b* of each crop


@dataclass(frozen=True)
class ObjectFidelity:
    generated: CropSet
    handful: CropSet
    val: CropSet
    kid_generated: tuple[float, float]  # KID (mean, std over subsets) generated vs handful
    kid_val: tuple[float, float]  # KID val vs handful: the real reference
    kid_subset_size: int

    def shift_z(self, crops: CropSet) -> np.ndarray:
        """(3,) shift of `crops`' mean L*a*b* from the handful's, in val standard deviations."""
        spread = self.val.lab.std(axis=0, ddof=1)
        return (crops.lab.mean(axis=0) - self.handful.lab.mean(axis=0)) / np.maximum(spread, 1e-6)

    def drift_reasons(self) -> list[str]:
        """What drifts beyond the real objects' own spread (empty: nothing)."""
        reasons = []
        generated, val = self.shift_z(self.generated), self.shift_z(self.val)
        for name, z, z_val in zip(("L*", "a*", "b*"), generated, val, strict=True):
            if abs(z) > DRIFT_Z and abs(z) > abs(z_val):
                reasons.append(
                    f"mean {name} of the generated objects is {z:+.2f} val standard deviations "
                    f"from the handful's (real val objects: {z_val:+.2f}; limit {DRIFT_Z})"
                )
        (kid_gen, std_gen), (kid_val, std_val) = self.kid_generated, self.kid_val
        if kid_gen - kid_val > std_gen + std_val:
            reasons.append(
                f"KID of generated vs handful crops {kid_gen:.4f} exceeds val vs handful "
                f"{kid_val:.4f} by more than their subset spreads ({std_gen:.4f} + {std_val:.4f})"
            )
        return reasons

    def summary(self) -> dict[str, float | int | str | None]:
        """The flat metrics written to metrics/draws/draw<d>/images.json (`objects.<key>`)."""
        out: dict[str, float | int | str | None] = {
            "valid": 1,
            "invalid_reason": None,
            "generated_crops": len(self.generated.crops),
            "handful_crops": len(self.handful.crops),
            "val_crops": len(self.val.crops),
        }
        for name, crops in (("generated", self.generated), ("handful", self.handful)):
            out |= _channels(f"{name}_", "_mean", crops.lab.mean(axis=0))
        out |= _channels("val_", "_mean", self.val.lab.mean(axis=0))
        out |= _channels("val_", "_std", self.val.lab.std(axis=0, ddof=1))
        out |= _channels("", "_shift_z", self.shift_z(self.generated))
        out |= _channels("val_", "_shift_z", self.shift_z(self.val))
        reasons = self.drift_reasons()
        return out | {
            "kid_generated_vs_handful": round(self.kid_generated[0], 6),
            "kid_generated_vs_handful_std": round(self.kid_generated[1], 6),
            "kid_val_vs_handful": round(self.kid_val[0], 6),
            "kid_val_vs_handful_std": round(self.kid_val[1], 6),
            "kid_subset_size": self.kid_subset_size,
            "drift": int(bool(reasons)),
            "drift_reason": "; ".join(reasons) or None,
        }


def _channels(prefix: str, suffix: str, values: np.ndarray) -> dict[str, float]:
    return {
        f"{prefix}{channel}{suffix}": round(float(v), 4)
        for channel, v in zip(CHANNELS, values, strict=True)
    }


def invalid_summary(reason: str) -> dict[str, float | int | str | None]:
    """`objects.*` when the check cannot run: valid 0, the reason, no number."""
    return {"valid": 0, "invalid_reason": reason}


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65 white) of sRGB colours: (..., 3) uint8 or [0, 255] floats -> (..., 3),
    L* in [0, 100]. The sRGB transfer curve and matrix of IEC 61966-2-1, then CIE 15's Lab."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    matrix = np.array(
        [
            [0.4124564, 0.3575761, 0.1804375],
            [0.2126729, 0.7151522, 0.0721750],
            [0.0193339, 0.1191920, 0.9503041],
        ]
    )
    xyz = linear @ matrix.T / np.array([0.95047, 1.0, 1.08883])  # relative to D65 white
    delta = 6 / 29
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )


def object_crops(samples: Sequence[Sample], scale: int) -> CropSet:
    """Every box of `samples` cut from its image scaled so that its shorter side is `scale` px
    (the generated images' size: all sets are then compared at the same detail). Boxes are
    normalised YOLO coordinates, so a source's boxes fit its generated variation too."""
    crops, lab = [], []
    for sample in samples:
        verify_image(sample.image)
        with Image.open(sample.image) as opened:
            image = opened.convert("RGB")
        factor = scale / min(image.size)
        if factor != 1:
            size = (round(image.width * factor), round(image.height * factor))
            image = image.resize(size, Image.Resampling.BICUBIC)
        width, height = image.size
        for box in sample.boxes:
            x0, y0, x1, y1 = (round(v) for v in box.xyxy(width, height))
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
            if x1 - x0 < MIN_BOX_PIXELS or y1 - y0 < MIN_BOX_PIXELS:
                continue
            crop = image.crop((x0, y0, x1, y1))
            lab.append(srgb_to_lab(np.asarray(crop)).reshape(-1, 3).mean(axis=0))
            crops.append(crop.resize((CROP_SIDE, CROP_SIDE), Image.Resampling.BICUBIC))
    return CropSet(crops, np.array(lab, dtype=np.float64).reshape(-1, 3))


def generated_samples(
    generated: Sequence[Path], generated_dir: Path, train: Sequence[Sample]
) -> tuple[list[Sample], list[Sample]]:
    """(each generated image with its source's boxes, the distinct source samples), from the
    manifest's `source` (a train image's file name). Images without a source (txt2img) are
    left out. Raises DataError for a source that is not a train image."""
    rows = {row.get("file"): row for row in read_manifest(generated_dir)}
    by_name = {sample.image.name: sample for sample in train}
    with_boxes, sources = [], {}
    for image in generated:
        source = rows.get(image.name, {}).get("source")
        if not source:
            continue
        if source not in by_name:
            raise DataError(
                f"{generated_dir}/manifest.jsonl: {image.name} was made from {source}, which is "
                "not an image of the train split"
            )
        sources[source] = by_name[source]
        with_boxes.append(Sample(image, by_name[source].boxes))
    return with_boxes, [sources[name] for name in sorted(sources)]


def crop_features(
    crops: CropSet, count: int, inception: nn.Module, rng: random.Random
) -> torch.Tensor:
    """(count, 2048) Inception features of `count` of the crops (a seeded sample)."""
    chosen = [crops.crops[i] for i in sorted(rng.sample(range(len(crops.crops)), count))]
    batch = torch.from_numpy(np.stack([np.asarray(crop) for crop in chosen])).permute(0, 3, 1, 2)
    return torch.cat([inception(batch[i : i + 32]) for i in range(0, len(batch), 32)])


def object_fidelity(
    generated: Sequence[Sample],
    handful: Sequence[Sample],
    val: Sequence[Sample],
    inception: nn.Module,
    seed: int,
) -> ObjectFidelity | str:
    """Colour statistics and KID of the three crop sets, cut at the generated images' scale,
    or why they cannot be measured (a set with fewer than 2 crops) as a string. `inception`:
    `metrics.FidInceptionFeatures`."""
    if not generated:
        return "no generated image has source boxes (txt2img has none: the check needs img2img"
        " or controlnet)"
    with Image.open(generated[0].image) as first:
        scale = min(first.size)
    sets = {
        "generated": object_crops(generated, scale),
        "handful": object_crops(handful, scale),
        "val": object_crops(val, scale),
    }
    few = [f"{name} {len(c.crops)}" for name, c in sets.items() if len(c.crops) < MIN_CROPS]
    if few:
        return f"too few object crops (at least {MIN_CROPS} per set): {', '.join(few)}"
    rng = random.Random(seed)
    count = min(MAX_KID_CROPS, *(len(crops.crops) for crops in sets.values()))
    features = {name: crop_features(crops, count, inception, rng) for name, crops in sets.items()}
    subset_size = count // 2
    # KID (mean, std over subsets) of each set against the handful's crops
    kid_generated, kid_val = (
        kernel_inception_distance(features["handful"], features[name], seed, subset_size)[:2]
        for name in ("generated", "val")
    )
    return ObjectFidelity(
        generated=sets["generated"],
        handful=sets["handful"],
        val=sets["val"],
        kid_generated=kid_generated,
        kid_val=kid_val,
        kid_subset_size=subset_size,
    )
