"""Detector training-data variants: which labelled real images and which extra images each uses.

A variant is one typed value, `Variant`: its labelled real images (`RealImages`: all, the
handful, none, the first <count> or the first <share> of the train images) and its extra images
(a source and how many). Its name, which the flat metrics keys, the tables and the detector
folders use, is derived from the fields in one place, `Variant.name`; it is never parsed back.

- `real`: every labelled real train image. Trained once per seed; the reference.
- `handful`: the subjects' handful (`shared.subjects.*.images` personalisation images) alone.
- `real-n<count>` (few_shot.real_image_counts): the first <count> labelled train images, the
  handful first, so handful -> real-n16 -> ... -> real is a nested curve of mAP against labelled
  images (what `evaluate` inverts into a real-image equivalent).
- `handful-<source>` (few_shot.sources): the handful plus few_shot.extra_images images of the
  source: `synthetic` (generated and auto-labelled), `copy-paste` (composites of the handful's
  object crops, synthdet.extra.copy_paste) or `pseudo` (real train images outside the handful,
  labels withheld, labelled by the annotator).
- `synthetic`: every generated image, no real one; `mixed`: every real and every generated one
  (train_detector.variants).
- `mix-r<share>-f<fraction>` (train_detector.mix_*): the first `share` of the real train images
  plus as many generated images as make up `fraction` of the set,
  n_synthetic = round(fraction / (1 - fraction) * n_real).

Subsets are nested and do not depend on the detector's seed: real images are ordered once (the
handful first, then the rest shuffled with the draw's seed), extra images by a shuffle seeded
with the draw's seed, and each variant takes a prefix. Seeds of one variant differ in training
only. Every variant but `real` is trained once per handful draw (few_shot.draws: the handful of
draw d and its extra images, orders seeded with `core.data.draw_seed(shared.seed, d)`), so draw 0
is the pipeline's first handful.
The train stages get the fields as arguments and write them next to the detector
(synthdet.artifacts.detector), where evaluate reads them.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from synthdet.core.data import DataError, draw_seed, label_file, link_yolo_folder, list_images
from synthdet.params import FEW_SHOT_SOURCES, Params, ParamsError

SYNTHETIC = "synthetic"  # the extra source made by generate + annotate-with-baseline


class RealKind(enum.Enum):
    """Which labelled real train images a variant uses."""

    ALL = "all"  # every one
    HANDFUL = "handful"  # the subjects' handful
    NONE = "none"
    COUNT = "count"  # the first `count` of the real order (the handful first)
    SHARE = "share"  # the first round(share * n) of the real order


@dataclass(frozen=True)
class RealImages:
    """A variant's labelled real images; ParamsError for a count or share out of range."""

    kind: RealKind
    count: int | None = None  # with RealKind.COUNT: >= 1
    share: float | None = None  # with RealKind.SHARE: in (0, 1]

    def __post_init__(self) -> None:
        if (self.kind is RealKind.COUNT) != (self.count is not None) or (
            self.kind is RealKind.SHARE
        ) != (self.share is not None):
            raise ParamsError(f"{self}: a count goes with kind COUNT, a share with kind SHARE")
        if self.count is not None and self.count < 1:
            raise ParamsError(f"{self}: the count of real images must be >= 1")
        if self.share is not None and not 0 < self.share <= 1:
            raise ParamsError(
                f"{self}: the real share must be in (0, 1] (train_detector.mix_real_shares)"
            )

    @classmethod
    def from_arg(cls, text: str) -> RealImages:
        """`all`, `handful`, `none` or a count (the train stages' --real)."""
        if text.isdigit():
            return cls(RealKind.COUNT, count=int(text))
        try:
            kind = RealKind(text)
        except ValueError:
            kind = None
        if kind not in (RealKind.ALL, RealKind.HANDFUL, RealKind.NONE):
            raise ParamsError(f"--real {text!r}: expected all, handful, none or a count")
        return cls(kind)


ALL = RealImages(RealKind.ALL)
HANDFUL_ONLY = RealImages(RealKind.HANDFUL)
NO_REAL = RealImages(RealKind.NONE)


@dataclass(frozen=True)
class Variant:
    """What one detector trains on; `extra_images` and `extra_fraction` both None: every image
    of the `extra` source. Raises ParamsError for a combination no train stage makes."""

    real: RealImages
    extra: str | None = None  # the extra source: synthetic | copy-paste | pseudo
    extra_images: int | None = None  # this many of them
    extra_fraction: float | None = None  # as many as make up this share of the training set

    def __post_init__(self) -> None:
        if self.extra is not None and self.extra not in FEW_SHOT_SOURCES:
            raise ParamsError(
                f"detector variant {self}: unknown extra source {self.extra!r}; expected one of "
                f"{list(FEW_SHOT_SOURCES)} (few_shot.sources)"
            )
        if self.extra_images is not None and self.extra_images < 0:
            raise ParamsError(f"detector variant {self}: extra_images must be >= 0")
        if self.extra_fraction is not None and not 0 <= self.extra_fraction < 1:
            raise ParamsError(
                f"detector variant {self}: the synthetic fraction must be in [0, 1) "
                "(train_detector.mix_synthetic_fractions)"
            )
        self._name()  # refuses a combination no train stage makes

    @property
    def name(self) -> str:
        """`real`, `handful`, `real-n<count>`, `handful-<source>`, `synthetic`, `mixed` or
        `mix-r<share>-f<fraction>`: the flat metrics keys, tables and MLflow use it; dvc.yaml's
        folders spell the same name (DVC may write a share 1.0 as `1`, evaluate does not care)."""
        return self._name()

    def _name(self) -> str:
        kind, extra = self.real.kind, self.extra
        amount = (self.extra_images is not None, self.extra_fraction is not None)
        if extra is None and amount == (False, False):
            if kind is RealKind.ALL:
                return "real"
            if kind is RealKind.HANDFUL:
                return "handful"
            if kind is RealKind.COUNT:
                return f"real-n{self.real.count}"
        elif kind is RealKind.HANDFUL and amount == (True, False):
            return f"handful-{extra}"
        elif extra == SYNTHETIC and amount == (False, False) and kind is RealKind.NONE:
            return "synthetic"
        elif extra == SYNTHETIC and amount == (False, False) and kind is RealKind.ALL:
            return "mixed"
        elif extra == SYNTHETIC and amount == (False, True) and kind is RealKind.SHARE:
            # float(): an int share or fraction is the same variant, so it gets the same name
            return f"mix-r{float(self.real.share)}-f{float(self.extra_fraction)}"
        raise ParamsError(
            f"detector variant {self!r} is none of real, handful, real-n<count>, "
            "handful-<source> (with extra_images), synthetic, mixed or mix-r<share>-f<fraction>"
        )

    @property
    def is_few_shot(self) -> bool:
        """The handful plus extra images (`handful-<source>`)."""
        return self.real.kind is RealKind.HANDFUL and self.extra is not None

    @property
    def drawn(self) -> bool:
        """Whether it trains on a handful draw's data (few_shot.draws): its handful, the real
        order that starts with it, or the draw's generated images; every variant but `real`."""
        return self != REAL

    @property
    def on_real_image_curve(self) -> bool:
        """Labelled real images only, nested from the handful to all (`handful`, `real-n…`,
        `real`): the curve evaluate inverts."""
        kinds = (RealKind.HANDFUL, RealKind.COUNT, RealKind.ALL)
        return self.extra is None and self.real.kind in kinds


REAL = Variant(ALL)  # the reference
HANDFUL = Variant(HANDFUL_ONLY)


def few_shot(source: str, extra_images: int) -> Variant:
    """The handful plus `extra_images` images of `source` (few_shot.sources)."""
    return Variant(HANDFUL_ONLY, source, extra_images=extra_images)


def generated(kind: str) -> Variant:
    """A train_detector.variants value as its variant: `synthetic` (every generated image, no
    real one) or `mixed` (every real and every generated image)."""
    reals = {"synthetic": NO_REAL, "mixed": ALL}
    if kind not in reals:
        raise ParamsError(f"train_detector.variants: {kind!r} is not one of {list(reals)}")
    return Variant(reals[kind], SYNTHETIC)


def mix(real_share: float, synthetic_fraction: float) -> Variant:
    """The first `real_share` of the real images plus generated ones making up
    `synthetic_fraction` of the set (train_detector.mix_*)."""
    return Variant(
        RealImages(RealKind.SHARE, share=real_share), SYNTHETIC, None, synthetic_fraction
    )


def configured(params: Params) -> list[Variant]:
    """Every variant params ask for: the baseline, the few-shot ones, then the generated ones."""
    config, few = params.train_detector, params.few_shot
    found = [REAL, HANDFUL]
    found += [Variant(RealImages(RealKind.COUNT, count=n)) for n in few.real_image_counts]
    found += [few_shot(source, few.extra_images) for source in few.sources]
    found += [generated(kind) for kind in config.variants]
    found += [
        mix(share, fraction)
        for share in config.mix_real_shares
        for fraction in config.mix_synthetic_fractions
    ]
    return found


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
            "train images; rerun its handful@<draw> stage (a handful is drawn from train images)"
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
    kind, wanted_real = variant.real.kind, variant.real
    ordered = real_order(real_images, handful, seed) if kind is not RealKind.HANDFUL else []
    if kind is RealKind.ALL:
        real = ordered
    elif kind is RealKind.HANDFUL:
        real = sorted(Path(p) for p in handful)
    elif kind is RealKind.NONE:
        real = []
    elif kind is RealKind.COUNT:
        if wanted_real.count > len(ordered):
            raise DataError(
                f"variant {variant.name}: {wanted_real.count} labelled images asked for, but "
                f"there are {len(ordered)} train images; lower few_shot.real_image_counts"
            )
        real = ordered[: wanted_real.count]
    else:
        real = ordered[: round(wanted_real.share * len(ordered))]
        if not real:
            raise DataError(
                f"variant {variant.name}: {wanted_real.share} of {len(ordered)} real train "
                "images is no image; raise train_detector.mix_real_shares"
            )
    extra = _shuffled(extra_images, seed) if variant.extra else []
    wanted = None
    if variant.extra_fraction is not None:
        fraction = variant.extra_fraction
        wanted = round(fraction / (1 - fraction) * len(real))
        fix = "lower train_detector.mix_synthetic_fractions / mix_real_shares"
    elif variant.extra_images is not None:
        wanted, fix = variant.extra_images, "lower few_shot.extra_images"
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
    variants: Sequence[Variant],
    real_images: Sequence[Path],
    handful: Sequence[Path],
    extra_images: Mapping[str, Sequence[Path]],
    seed: int,
) -> dict[str, Composition]:
    """{variant name: composition} for `variants`, each with its source's images
    (`extra_images`: {source: images}); `seed`: shared.seed, which orders the images."""
    result = {}
    for variant in variants:
        extra = extra_images.get(variant.extra, ()) if variant.extra else ()
        result[variant.name] = compose(variant, real_images, handful, extra, seed)
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
    images_per_epoch: int,
    draw: int = 0,
) -> TrainingSet:
    """YOLO folders holding exactly the variant's images (linked subsets in `scratch`), repeated
    and topped up to `images_per_epoch` (train_detector.min_images_per_epoch, resolved by the
    train stage) when the set is smaller (`epoch_plan`); `handful_dir` is handful draw `draw`'s,
    whose seed orders the images (`core.data.draw_seed`)."""
    kind = variant.real.kind
    needs = {
        "--train": real_dir is None and kind not in (RealKind.HANDFUL, RealKind.NONE),
        "--handful": handful_dir is None and kind not in (RealKind.ALL, RealKind.NONE),
        "--extra-folder": extra_dir is None and variant.extra is not None,
    }
    missing = [flag for flag, lacking in needs.items() if lacking]
    if missing:
        raise DataError(f"variant {variant.name} needs {' and '.join(missing)}")
    real = list_images(Path(real_dir) / "images") if real_dir is not None else []
    handful = handful_images(handful_dir) if handful_dir is not None else []
    extra = list_images(Path(extra_dir) / "images") if variant.extra else []
    order_seed = draw_seed(params.shared.seed, draw)
    composition = compose(variant, real, handful, extra, order_seed)
    copies, top_up = epoch_plan(len(composition.images), images_per_epoch)
    # The top-up is a seeded part of the set, the same for every detector seed.
    once_more = set(_shuffled(composition.images, order_seed)[:top_up])
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


def epoch_plan(images: int, images_per_epoch: int) -> tuple[int, int]:
    """(whole copies, images seen once more) per epoch of a training set of `images` images.

    A set smaller than `images_per_epoch` (train_detector.min_images_per_epoch; by default the
    train split's image count) is repeated and topped up with a part of one more copy to exactly
    that many images, so every such variant gets the same optimizer steps: an equal training
    budget (with equal epochs alone the 8-image handful would get a fourteenth of the steps of
    the 116-image `real` and lose for being undertrained, not for its data). Larger sets, and
    every set when `images_per_epoch` is 0, train on each image once an epoch."""
    if not images or images >= images_per_epoch:
        return 1, 0
    return divmod(images_per_epoch, images)


def label_boxes(images: Sequence[Path]) -> int:
    """The boxes in the YOLO labels next to `images` (no label file: a background image)."""
    total = 0
    for image in images:
        label = label_file(Path(image).parent.parent, image)
        if label.is_file():
            total += sum(1 for line in label.read_text().splitlines() if line.strip())
    return total


def comparisons(variants: Sequence[Variant]) -> list[tuple[str, str]]:
    """(variant, reference) name pairs: each `handful-<source>` against `handful`, then
    `handful-synthetic` against each cheap alternative, then the generated-data variants
    (synthetic, mixed, mix-*) against `real`; only pairs of variants in `variants`."""
    names = [variant.name for variant in variants]
    few = [v.name for v in variants if v.is_few_shot]
    pairs = [(name, HANDFUL.name) for name in few]
    generated_few = [v.name for v in variants if v.is_few_shot and v.extra == SYNTHETIC]
    pairs += [(a, b) for a in generated_few for b in few if b != a]
    others = [v.name for v in variants if not v.is_few_shot and not v.on_real_image_curve]
    pairs += [(name, REAL.name) for name in others]
    return [(a, b) for a, b in pairs if a in names and b in names]
