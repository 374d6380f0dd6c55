"""A colour-shifted copy of a YOLO dataset: the labelled objects change hue, nothing else does.

    python benchmarks/colour_shift.py --raw data/raw --out data/raw-shifted --degrees 80

Used by benchmarks/recipes.py to ask whether a recipe's generated objects keep the colour of the
user's objects when those differ from what the base model was pretrained on (the shipped
`builtin:orchard` checkpoint saw red-pink ripe apples; the copy's apples are yellow-green, like an
unripe or a green variety).

Which pixels change: inside each label's box, the pixels of the ellipse inscribed in the box
whose hue is reddish (`RED_HUES`: magenta through red to orange) and that are not grey
(saturation >= `MIN_SATURATION`). The ellipse keeps the box corners, which are mostly leaves and
sky around a round fruit, unchanged; the hue gate keeps leaves, branches and sky inside the
ellipse unchanged (rotated by 80 degrees a green leaf would turn blue, a colour no orchard has).
On the embedded data (181 tiles, 1631 boxes) 70 % of the inscribed ellipses' pixels pass the
gate. Each chosen pixel's hue is rotated by `degrees` in PIL's HSV space (`Image.convert("HSV")`,
hue in 256 steps per turn); saturation and value stay as they were, so shading and highlights
are kept.

Images are written as PNG (lossless), so every pixel outside the changed ones has exactly the
bytes the source image decodes to; label files are copied unchanged, LICENSE as is, README.md
with a note on the derivation prepended.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# Hues (degrees, half-open [start, end) going through 0) that count as the object's colour:
# magenta-red through orange. On the embedded data 61 % of the ellipses' pixels lie in 300-30
# degrees, 22 % in 30-60 (orange flanks of the apples, some yellowed leaves), 16 % in 60-90 and 2 %
# elsewhere (leaves, sky).
RED_HUES = (300.0, 45.0)
MIN_SATURATION = 40  # of 255: greyer pixels (highlights, shadows) have no reliable hue
DEFAULT_DEGREES = 80.0  # red (0) -> yellow-green (80), pink (340) -> yellow (60), orange -> green


def object_mask(
    size: tuple[int, int], boxes: np.ndarray, hsv: np.ndarray, hues=RED_HUES
) -> np.ndarray:
    """(H, W) bool mask of the pixels to shift: inside the ellipse inscribed in any box, with a
    hue in `hues` (degrees, [start, end), wrapping through 0) and saturation >= MIN_SATURATION.

    `size`: (width, height) px; `boxes`: (N, 4) normalised YOLO (cx, cy, w, h); `hsv`: (H, W, 3)
    uint8 from PIL's HSV mode (hue 0-255 for 0-360 degrees)."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    xs, ys = xs + 0.5, ys + 0.5  # pixel centres
    inside = np.zeros((height, width), dtype=bool)
    for cx, cy, w, h in boxes:
        rx, ry = max(w * width / 2, 0.5), max(h * height / 2, 0.5)
        inside |= ((xs - cx * width) / rx) ** 2 + ((ys - cy * height) / ry) ** 2 <= 1.0
    degrees = hsv[..., 0].astype(np.float64) * 360.0 / 256.0
    start, end = hues
    reddish = (
        (degrees >= start) | (degrees < end)
        if start > end
        else (degrees >= start) & (degrees < end)
    )
    return inside & reddish & (hsv[..., 1] >= MIN_SATURATION)


def read_boxes(label: Path) -> np.ndarray:
    """(N, 4) normalised (cx, cy, w, h) of a YOLO label file (`class cx cy w h` per line).
    Raises ValueError naming the file and line for a line that is not 5 numbers."""
    rows = []
    for number, line in enumerate(label.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if len(values) != 5:
            raise ValueError(
                f"{label}:{number}: expected 'class cx cy w h' (5 numbers), got {line!r}; fix or "
                "remove the line (benchmarks/colour_shift.py reads YOLO labels only)"
            )
        rows.append(values[1:])
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def shift_image(image: Image.Image, boxes: np.ndarray, degrees: float) -> tuple[Image.Image, int]:
    """(the image with its object pixels' hue rotated by `degrees`, how many pixels changed
    hue). `boxes`: (N, 4) normalised YOLO. Pixels outside `object_mask` keep their RGB values."""
    rgb = np.asarray(image.convert("RGB"))
    hsv = np.asarray(image.convert("RGB").convert("HSV")).copy()
    mask = object_mask(image.size, boxes, hsv)
    steps = round(degrees * 256.0 / 360.0)
    hsv[..., 0][mask] = ((hsv[..., 0][mask].astype(np.int64) + steps) % 256).astype(np.uint8)
    shifted = np.asarray(Image.fromarray(hsv, mode="HSV").convert("RGB"))
    out = np.where(mask[..., None], shifted, rgb)
    return Image.fromarray(out.astype(np.uint8), mode="RGB"), int(mask.sum())


def colour_shift_dataset(raw: Path, out: Path, degrees: float = DEFAULT_DEGREES) -> dict:
    """Write a copy of the YOLO dataset `raw` (images/ and labels/, optional LICENSE and
    README.md) to `out` with every labelled object's reddish pixels hue-rotated by `degrees`.

    Images become `<stem>.png`; an image without a label file is copied unchanged (as PNG).
    Returns counts: images, objects, changed pixels. Raises FileNotFoundError when `raw` has no
    images/ folder, FileExistsError when `out` exists (delete it, or pick another --out)."""
    raw, out = Path(raw), Path(out)
    if not (raw / "images").is_dir():
        raise FileNotFoundError(
            f"{raw}/images: no such folder; --raw must be a YOLO dataset (images/ and labels/)"
        )
    if out.exists():
        raise FileExistsError(f"{out} exists; delete it or choose another --out")
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    counts = {"images": 0, "objects": 0, "changed_pixels": 0}
    for path in sorted(p for p in (raw / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        label = raw / "labels" / f"{path.stem}.txt"
        boxes = read_boxes(label) if label.is_file() else np.zeros((0, 4))
        with Image.open(path) as opened:
            shifted, changed = shift_image(opened, boxes, degrees)
        shifted.save(out / "images" / f"{path.stem}.png")
        if label.is_file():
            shutil.copyfile(label, out / "labels" / label.name)
        counts["images"] += 1
        counts["objects"] += len(boxes)
        counts["changed_pixels"] += changed
    if (raw / "LICENSE").is_file():
        shutil.copyfile(raw / "LICENSE", out / "LICENSE")
    note = (
        f"# Colour-shifted copy of `{raw}`\n\n"
        f"Made by `benchmarks/colour_shift.py --degrees {degrees:g}`: inside each labelled box, "
        f"the pixels of the inscribed ellipse with a reddish hue ({RED_HUES[0]:g}-{RED_HUES[1]:g} "
        f"degrees, saturation >= {MIN_SATURATION}/255) had their hue rotated by {degrees:g} "
        "degrees (PIL HSV); every other pixel is unchanged. Images are saved as PNG; labels are "
        f"copied unchanged. {counts['images']} images, {counts['objects']} objects, "
        f"{counts['changed_pixels']} pixels changed. This is a modified version of the dataset "
        "described below (same licence, see LICENSE).\n\n"
    )
    readme = (raw / "README.md").read_text() if (raw / "README.md").is_file() else ""
    (out / "README.md").write_text(note + readme)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="YOLO dataset folder")
    parser.add_argument("--out", type=Path, required=True, help="new folder for the copy")
    parser.add_argument(
        "--degrees", type=float, default=DEFAULT_DEGREES, help="hue rotation (default: %(default)s)"
    )
    args = parser.parse_args()
    try:
        counts = colour_shift_dataset(args.raw, args.out, args.degrees)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        raise SystemExit(str(error)) from error
    print(f"{args.out}: {counts}")


if __name__ == "__main__":
    main()
