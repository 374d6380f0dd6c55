"""Detector training-data variants: which labelled real images and which extra images each uses.

One registry of variant kinds (`KINDS`), each a name pattern and the composition it stands for:

- `real`: every labelled real train image. Trained once per seed; the reference.
- `handful`: the subjects' handful (`shared.subjects.*.images` personalisation images) alone.
- `real-n<count>` (few_shot.real_image_counts): the first <count> labelled train images, the
  handful first, so handful -> real-n16 -> ... -> real is a nested curve of mAP against labelled
  images (what `evaluate` inverts into a real-image equivalent).
- `handful-<source>` (few_shot.sources): the handful plus few_shot.extra_images images of the
  source: `synthetic` (generated and auto-labelled), `copy-paste` (composites of the handful's
  object crops, synthdet.copy_paste) or `pseudo` (real train images outside the handful, labels
  withheld, labelled by the annotator).
- `synthetic`: every generated image, no real one; `mixed`: every real and every generated one.
- `mix-r<share>-f<fraction>` (train_detector.mix_*): the first `share` of the real train images
  plus as many generated images as make up `fraction` of the set,
  n_synthetic = round(fraction / (1 - fraction) * n_real).

Subsets are nested and do not depend on the detector's seed: real images are ordered once (the
handful first, then the rest shuffled with shared.seed), extra images by a shuffle seeded with
shared.seed, and each variant takes a prefix. Seeds of one variant differ in training only.
Names come from dvc.yaml's matrices; `parse` reads them back (`mix-r1-f0.1` = `mix-r1.0-f0.1`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from synthdet.data import DataError, label_file, link_yolo_folder, list_images
from synthdet.params import FEW_SHOT_SOURCES, Params, ParamsError

BASELINE = "real"
HANDFUL = "handful"
SYNTHETIC = "synthetic"  # the extra source made by generate + annotate-with-baseline


@dataclass(frozen=True)
class Variant:
    name: str
    # labelled real images: "all", "handful", "none", a count (int, nested, handful first) or a
    # share of the train images (float, mix-*)
    real: str | int | float
    extra: str | None = None  # synthetic | copy-paste | pseudo
    # how many extra images: None = all of the source, an int = that many, a float = the share
    # of the training set they make up (mix-*)
    extra_amount: int | float | None = None


def few_shot_name(source: str) -> str:
    """The variant of the handful plus the images of `source`: `handful-<source>`."""
    return f"{HANDFUL}-{source}"


def is_few_shot(name: str) -> bool:
    """A `handful-<source>` variant."""
    return name.startswith(f"{HANDFUL}-")


def mix_name(real_share: float, synthetic_fraction: float) -> str:
    return f"mix-r{real_share}-f{synthetic_fraction}"


def _mix(match: re.Match[str], _: Params | None) -> Variant:
    name = match.string
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
    return Variant(mix_name(share, fraction), share, SYNTHETIC, fraction)


def _few_shot(match: re.Match[str], params: Params | None) -> Variant:
    source = match["source"]
    if source not in FEW_SHOT_SOURCES:
        raise ParamsError(
            f"detector variant {match.string!r}: unknown source {source!r}; expected one of "
            f"{list(FEW_SHOT_SOURCES)} (few_shot.sources)"
        )
    amount = params.few_shot.extra_images if params is not None else None
    return Variant(match.string, "handful", source, amount)


# name pattern -> the variant it stands for (params give few_shot.extra_images)
KINDS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str], Params | None], Variant]], ...] = (
    (re.compile(BASELINE), lambda m, _: Variant(BASELINE, "all")),
    (re.compile(HANDFUL), lambda m, _: Variant(HANDFUL, "handful")),
    (re.compile(r"real-n(?P<count>[1-9][0-9]*)"), lambda m, _: Variant(m[0], int(m["count"]))),
    (re.compile(r"handful-(?P<source>[a-z-]+)"), _few_shot),
    (re.compile(SYNTHETIC), lambda m, _: Variant(SYNTHETIC, "none", SYNTHETIC)),
    (re.compile("mixed"), lambda m, _: Variant("mixed", "all", SYNTHETIC)),
    (re.compile(r"mix-r(?P<real>[0-9.eE+-]+)-f(?P<fraction>[0-9.eE+-]+)"), _mix),
)


def parse(name: str, params: Params | None = None) -> Variant:
    """The variant a name (as dvc.yaml writes it) stands for; raises ParamsError if none."""
    for pattern, make in KINDS:
        match = pattern.fullmatch(name)
        if match is not None:
            return make(match, params)
    raise ParamsError(
        f"unknown detector variant {name!r}: expected real, handful, real-n<count>, "
        "handful-<source>, synthetic, mixed or mix-r<real share>-f<synthetic fraction>"
    )


def configured(params: Params) -> list[Variant]:
    """Every variant params ask for: the baseline, the few-shot ones, then the generated ones."""
    config, few_shot = params.train_detector, params.few_shot
    names = [BASELINE, HANDFUL]
    names += [f"real-n{count}" for count in few_shot.real_image_counts]
    names += [few_shot_name(source) for source in few_shot.sources]
    names += list(config.variants)
    names += [
        mix_name(share, fraction)
        for share in config.mix_real_shares
        for fraction in config.mix_synthetic_fractions
    ]
    return [parse(name, params) for name in names]


def seed_folder(seed: int) -> str:
    return f"seed{seed}"


@dataclass(frozen=True)
class Composition:
    real: tuple[Path, ...]  # labelled real image paths
    extra: tuple[Path, ...]  # extra image paths (of the variant's source)

    @property
    def images(self) -> tuple[Path, ...]:
        return self.real + self.extra

    @property
    def extra_share(self) -> float:
        total = len(self.real) + len(self.extra)
        return len(self.extra) / total if total else 0.0


def _shuffled(images: Sequence[Path], seed: int) -> list[Path]:
    ordered = sorted(images)
    random.Random(seed).shuffle(ordered)
    return ordered


def real_order(real_images: Sequence[Path], handful: Sequence[Path], seed: int) -> list[Path]:
    """The real train images, the handful first (matched by file name), then the rest shuffled
    with `seed`; raises DataError if a handful image is not among the train images."""
    by_name = {Path(p).name: Path(p) for p in real_images}
    missing = sorted(Path(p).name for p in handful if Path(p).name not in by_name)
    if missing:
        raise DataError(
            f"handful images {', '.join(missing[:5])} are not among the {len(by_name)} real "
            "train images; rerun prepare (personalize images are train images)"
        )
    first = [by_name[name] for name in sorted(Path(p).name for p in handful)]
    chosen = set(first)
    return first + _shuffled([p for p in by_name.values() if p not in chosen], seed)


def compose(
    variant: Variant,
    real_images: Sequence[Path],
    handful: Sequence[Path],
    extra_images: Sequence[Path],
    seed: int,
) -> Composition:
    """The real and extra images `variant` trains on (nested prefixes of seeded orders).

    `real_images`: the labelled train images; `handful`: the handful (a subset of them, by file
    name); `extra_images`: the images of the variant's source. Raises DataError when a variant
    asks for more images than exist."""
    ordered = real_order(real_images, handful, seed) if variant.real != "handful" else []
    if variant.real == "all":
        real = ordered
    elif variant.real == "handful":
        real = sorted(Path(p) for p in handful)
    elif variant.real == "none":
        real = []
    elif isinstance(variant.real, int):
        if variant.real > len(ordered):
            raise DataError(
                f"variant {variant.name}: {variant.real} labelled images asked for, but there "
                f"are {len(ordered)} train images; lower few_shot.real_image_counts"
            )
        real = ordered[: variant.real]
    else:
        real = ordered[: round(variant.real * len(ordered))]
        if not real:
            raise DataError(
                f"variant {variant.name}: {variant.real} of {len(ordered)} real train images is "
                "no image; raise train_detector.mix_real_shares"
            )
    extra = _shuffled(extra_images, seed) if variant.extra else []
    amount = variant.extra_amount
    wanted = None
    if isinstance(amount, float):
        wanted = round(amount / (1 - amount) * len(real))
        fix = "lower train_detector.mix_synthetic_fractions / mix_real_shares"
    elif isinstance(amount, int):
        wanted, fix = amount, "lower few_shot.extra_images"
    if wanted is not None:
        if wanted > len(extra):
            raise DataError(
                f"variant {variant.name}: needs {wanted} {variant.extra} images, but there are "
                f"{len(extra)}; make more (generate.num_images, or more train images for "
                f"pseudo-labels) or {fix}"
            )
        extra = extra[:wanted]
    if not real and not extra:
        raise DataError(f"variant {variant.name}: no training images")
    return Composition(tuple(real), tuple(extra))


def compositions(
    params: Params,
    real_images: Sequence[Path],
    handful: Sequence[Path],
    extra_images: Mapping[str, Sequence[Path]],
    names: Sequence[str],
) -> dict[str, Composition]:
    """{variant name: composition} for `names`, each with its source's images."""
    result = {}
    for name in names:
        variant = parse(name, params)
        extra = extra_images.get(variant.extra, ()) if variant.extra else ()
        result[name] = compose(variant, real_images, handful, extra, params.shared.seed)
    return result


def handful_images(handful_root: Path) -> list[Path]:
    """The handful: every image of `handful_root/<subject>/images` (prepare's personalize split)."""
    return sorted(
        p for folder in sorted(Path(handful_root).glob("*/images")) for p in list_images(folder)
    )


def subset_views(images: Sequence[Path], scratch: Path, name: str) -> list[Path]:
    """YOLO folders `scratch/<name><i>` linking `images` and their labels, one per source YOLO
    folder the images lie in (the handful spans one folder per subject)."""
    by_source: dict[Path, list[Path]] = {}
    for image in images:
        by_source.setdefault(Path(image).parent.parent, []).append(Path(image))
    return [
        link_yolo_folder(source, scratch / f"{name}{index}", chosen)
        for index, (source, chosen) in enumerate(sorted(by_source.items()))
    ]


@dataclass(frozen=True)
class TrainingSet:
    """What a detector variant trains on: YOLO folders holding its composition `repeats` whole
    times plus `top_up` of its images once more (see `epoch_plan`)."""

    folders: list[Path]
    composition: Composition
    repeats: int
    top_up: int


def training_folders(
    params: Params,
    variant: Variant,
    real_dir: Path | None,
    handful_dir: Path | None,
    extra_dir: Path | None,
    scratch: Path,
) -> TrainingSet:
    """YOLO folders holding exactly the variant's images (linked subsets in `scratch`), repeated
    and topped up to train_detector.min_images_per_epoch when the set is smaller (`epoch_plan`)."""
    needs = {
        "--real": real_dir is None and variant.real != "handful" and variant.real != "none",
        "--handful": handful_dir is None and variant.real not in ("all", "none"),
        "--extra": extra_dir is None and variant.extra is not None,
    }
    missing = [flag for flag, lacking in needs.items() if lacking]
    if missing:
        raise DataError(f"variant {variant.name} needs {' and '.join(missing)}")
    real = list_images(Path(real_dir) / "images") if real_dir is not None else []
    handful = handful_images(handful_dir) if handful_dir is not None else []
    extra = list_images(Path(extra_dir) / "images") if variant.extra else []
    composition = compose(variant, real, handful, extra, params.shared.seed)
    copies, top_up = epoch_plan(len(composition.images), params)
    # The top-up is a seeded part of the set, the same for every detector seed.
    once_more = set(_shuffled(composition.images, params.shared.seed)[:top_up])
    parts = [(composition.real, composition.extra)] * copies
    if top_up:
        parts.append(
            tuple(
                [p for p in chosen if p in once_more]
                for chosen in (composition.real, composition.extra)
            )
        )
    folders = [
        folder
        for copy, part in enumerate(parts)
        for name, chosen in zip(("real", "extra"), part, strict=True)
        for folder in subset_views(chosen, scratch, f"{name}-copy{copy}-")
    ]
    return TrainingSet(folders, composition, copies, top_up)


def epoch_plan(images: int, params: Params) -> tuple[int, int]:
    """(whole copies, images seen once more) per epoch of a training set of `images` images.

    A set smaller than train_detector.min_images_per_epoch is repeated and topped up with a part
    of one more copy to exactly that many images, so every such variant gets the same optimizer
    steps: an equal training budget (with equal epochs alone the 8-image handful would get a
    fourteenth of the steps of the 116-image `real` and lose for being undertrained, not for its
    data). Larger sets train on each image once an epoch."""
    wanted = params.train_detector.min_images_per_epoch
    if not images or images >= wanted:
        return 1, 0
    return divmod(wanted, images)


def label_boxes(images: Sequence[Path]) -> int:
    """The boxes in the YOLO labels next to `images` (no label file: a background image)."""
    total = 0
    for image in images:
        label = label_file(Path(image).parent.parent, image)
        if label.is_file():
            total += sum(1 for line in label.read_text().splitlines() if line.strip())
    return total


def comparisons(names: Sequence[str]) -> list[tuple[str, str]]:
    """(variant, reference) pairs: each `handful-<source>` against `handful`, then
    `handful-synthetic` against each cheap alternative, then the generated-data variants
    (synthetic, mixed, mix-*) against `real`; only pairs of variants in `names`."""
    pairs = []
    few_shot = [n for n in names if is_few_shot(n)]
    pairs += [(name, HANDFUL) for name in few_shot]
    generated = few_shot_name(SYNTHETIC)
    if generated in names:
        pairs += [(generated, name) for name in few_shot if name != generated]
    others = [
        n
        for n in names
        if n not in few_shot and n not in (BASELINE, HANDFUL) and not n.startswith("real-n")
    ]
    pairs += [(name, BASELINE) for name in others]
    return [(a, b) for a, b in pairs if a in names and b in names]
