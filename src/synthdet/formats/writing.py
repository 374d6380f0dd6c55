"""Writing samples out: the internal YOLO layout (RGB, upright images), new YOLO folders built
atomically, and COCO JSON."""

from __future__ import annotations

import contextlib
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from synthdet.core.data import Box, Sample, atomic_path, format_label, label_file, upright_rgb

SUFFIX_OF_FORMAT = {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",)}


def write_yolo_folder(samples: Sequence[Sample], folder: Path, repairs: Counter) -> None:
    """The internal layout: images/ (RGB, upright) and labels/<stem>.txt for every image."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for sample in samples:
        write_normalised_image(sample.image, folder / "images", repairs)
        label_file(folder, sample.image).write_text(format_label(sample.boxes))


def write_normalised_image(source: Path, folder: Path, repairs: Counter) -> Path:
    """Copy an RGB JPEG/PNG as is; re-encode anything else upright as RGB PNG (counted)."""
    with Image.open(source) as image:
        suffix_ok = source.suffix.lower() in SUFFIX_OF_FORMAT.get(image.format or "", ())
        rotated = image.getexif().get(0x0112, 1) != 1  # EXIF orientation tag
        if suffix_ok and image.mode == "RGB" and not rotated:
            target = folder / source.name
            target.write_bytes(source.read_bytes())
            return target
        target = folder / f"{source.stem}.png"
        upright_rgb(image).save(target)
        repairs["reencoded_images"] += 1
        return target


@dataclass(frozen=True)
class YoloFolderWriter:
    """Adds images with their labels to a YOLO folder being built (see `new_yolo_folder`)."""

    root: Path

    def add(self, name: str, image: Path | Image.Image, boxes: Iterable[Box]) -> Path:
        """Write `image` (a file, copied byte for byte, or a PIL image, encoded by `name`'s
        suffix) as `images/<name>` and `boxes` as `labels/<stem>.txt`; return the image path."""
        target = self.root / "images" / name
        if isinstance(image, Path):
            shutil.copy2(image, target)
        else:
            image.save(target)
        label_file(self.root, target).write_text(format_label(boxes))
        return target


@contextlib.contextmanager
def new_yolo_folder(out_dir: Path) -> Iterator[YoloFolderWriter]:
    """Build a YOLO folder (`images/`, `labels/<stem>.txt`) that replaces `out_dir` only once
    complete (`atomic_path`): a failure leaves the previous `out_dir` as it was."""
    with atomic_path(Path(out_dir)) as staging:
        (staging / "images").mkdir(parents=True)
        (staging / "labels").mkdir()
        yield YoloFolderWriter(staging)


def coco_dict(samples: Sequence[Sample], class_names: Sequence[str], image_root: Path) -> dict:
    """COCO detection JSON of `samples`; file names relative to `image_root`."""
    images, annotations = [], []
    for image_id, sample in enumerate(samples, 1):
        with Image.open(sample.image) as image:
            width, height = image.size
        file_name = sample.image.resolve().relative_to(image_root.resolve()).as_posix()
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for box in sample.boxes:
            x0, y0, x1, y1 = box.xyxy(width, height)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": box.class_id + 1,  # COCO ids start at 1
                    "bbox": [round(v, 3) for v in (x0, y0, x1 - x0, y1 - y0)],
                    "area": round((x1 - x0) * (y1 - y0), 3),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}
