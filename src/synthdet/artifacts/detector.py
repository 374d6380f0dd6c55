"""`variant.json`: which variant, handful draw and seed a detector folder holds, written by its
train stage.

Written next to the weights by `train-*`; evaluate reads it to find each configured variant's
detectors, so a folder's name (which DVC spells from the params, e.g. `mix-r1-f0.1` for the
share 1.0) is never parsed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthdet.core.data import DataError, write_json
from synthdet.detectors.variants import REAL, RealImages, RealKind, Variant
from synthdet.params import ParamsError

VARIANT_INFO = "variant.json"


@dataclass(frozen=True)
class DetectorVariant:
    """The variant a detector was trained on, its handful draw and its training seed; ParamsError
    when the draw is missing for a drawn variant (`Variant.drawn`) or given for `real`."""

    variant: Variant
    seed: int
    draw: int | None = None  # few_shot.draws index; None for `real`, which no draw changes

    def __post_init__(self) -> None:
        if self.variant.drawn != (self.draw is not None):
            raise ParamsError(
                f"detector {self.variant.name} seed {self.seed}: draw {self.draw!r}, but "
                + (
                    "it trains on a handful draw: give its draw (the train stage's --draw)"
                    if self.variant.drawn
                    else "it uses every real train image, which no draw changes: give no --draw"
                )
            )
        if self.draw is not None and (isinstance(self.draw, bool) or self.draw < 0):
            raise ParamsError(f"detector {self.variant.name}: draw {self.draw!r} is not >= 0")

    def to_json(self) -> dict[str, Any]:
        variant, real = self.variant, self.variant.real
        return {
            "name": variant.name,  # for people reading the folder; derived from the fields
            "seed": self.seed,
            "draw": self.draw,
            "real": real.kind.value,
            "real_count": real.count,
            "real_share": real.share,
            "extra": variant.extra,
            "extra_images": variant.extra_images,
            "extra_fraction": variant.extra_fraction,
        }

    def write(self, folder: Path) -> None:
        """Write `folder/variant.json` atomically (sorted keys)."""
        write_json(Path(folder) / VARIANT_INFO, self.to_json())

    @classmethod
    def read(cls, folder: Path) -> DetectorVariant:
        """The variant of the detector in `folder`; DataError naming the file and the key."""
        path = Path(folder) / VARIANT_INFO
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read ({exc}); rerun its train stage") from exc
        expected = set(cls(REAL, 0).to_json())
        missing, unknown = sorted(expected - set(raw)), sorted(set(raw) - expected)
        if missing or unknown:
            raise DataError(
                f"{path}: keys {', '.join(missing) or 'none'} missing, "
                f"{', '.join(unknown) or 'none'} unknown; rerun its train stage"
            )
        try:
            real = RealImages(RealKind(raw["real"]), raw["real_count"], raw["real_share"])
            variant = Variant(real, raw["extra"], raw["extra_images"], raw["extra_fraction"])
        except (ValueError, TypeError, ParamsError) as exc:
            raise DataError(
                f"{path}: not a detector variant ({exc}); rerun its train stage"
            ) from exc
        for key in ("seed", "draw"):
            value = raw[key]
            if (value is not None or key == "seed") and (
                not isinstance(value, int) or isinstance(value, bool)
            ):
                raise DataError(f"{path}: key {key!r} is {value!r}, expected an integer")
        if raw["name"] != variant.name:
            raise DataError(
                f"{path}: key 'name' is {raw['name']!r}, but its fields make {variant.name!r}; "
                "rerun its train stage"
            )
        try:
            return cls(variant, raw["seed"], raw["draw"])
        except ParamsError as exc:
            raise DataError(f"{path}: {exc}; rerun its train stage") from exc
