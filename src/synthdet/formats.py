"""Users' datasets in: YOLO txt, COCO JSON and Pascal VOC XML, with real-world quirks repaired.

Everything is read into `Sample`s (an image path and YOLO boxes); `prepare` then writes the
internal layout (images/ + labels/, RGB, upright). Repairs are counted, never silent:

- images with no label file / no annotation: background (`background_images`);
- boxes partly outside the image: clipped (`clipped_boxes`); a box whose centre lies outside or
  that has no area is an error naming the file;
- RGBA, palette, greyscale and 16-bit images, files whose content is not what their suffix says
  (a PNG named .jpg), and EXIF-rotated photos: re-encoded upright as RGB (`reencoded_images`).
  Labels are taken to refer to the upright image, as annotation tools display it;
- VOC files declaring a 0x0 size: the size is read from the image (`voc_size_from_image`).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps

from synthdet.data import (
    IMAGE_SUFFIXES,
    Box,
    DataError,
    Sample,
    clip_box,
    format_label,
    list_images,
    parse_label_file,
    verify_image,
)

Format = Literal["auto", "yolo", "coco", "voc"]
SUFFIX_OF_FORMAT = {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",)}


def detect_format(folder: Path) -> str:
    if (folder / "labels").is_dir():
        return "yolo"
    if (folder / "Annotations").is_dir():
        return "voc"
    if list(folder.glob("*.json")):
        return "coco"
    raise DataError(
        f"{folder}: cannot tell the dataset format; expected images/ + labels/ (YOLO), "
        "a COCO *.json beside images/, or Annotations/*.xml (Pascal VOC); "
        "or set prepare.format"
    )


def class_index(name: str, class_names: Sequence[str], where: str) -> int:
    if name not in class_names:
        raise DataError(f"{where}: class {name!r} is not in shared.class_names {list(class_names)}")
    return class_names.index(name)


def read_yolo(folder: Path, class_names: Sequence[str], repairs: Counter) -> list[Sample]:
    images_dir, labels_dir = folder / "images", folder / "labels"
    if not images_dir.is_dir():
        raise DataError(f"{folder}: expected an images/ folder beside labels/ (YOLO layout)")
    samples = []
    for image in list_images(images_dir):
        label = labels_dir / f"{image.stem}.txt"
        if not label.is_file():
            repairs["background_images"] += 1
            samples.append(Sample(image, ()))
            continue
        samples.append(Sample(image, parse_label_file(label, len(class_names), repairs)))
    return samples


def read_coco(folder: Path, class_names: Sequence[str], repairs: Counter) -> list[Sample]:
    (annotation_file, *others) = sorted(folder.glob("*.json"))
    if others:
        raise DataError(f"{folder}: several COCO JSON files; keep one ({annotation_file.name}?)")
    try:
        coco = json.loads(annotation_file.read_text())
        categories = {c["id"]: c["name"] for c in coco["categories"]}
        images = {i["id"]: i for i in coco["images"]}
        annotations = coco.get("annotations", [])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{annotation_file}: not a COCO detection file ({exc!r})") from exc
    image_root = folder / "images" if (folder / "images").is_dir() else folder
    boxes: dict[int, list[Box]] = {image_id: [] for image_id in images}
    for number, ann in enumerate(annotations):
        where = f"{annotation_file} annotation #{number} (id {ann.get('id')})"
        image = images.get(ann.get("image_id"))
        if image is None:
            raise DataError(f"{where}: image_id {ann.get('image_id')} is not in 'images'")
        if ann.get("category_id") not in categories:
            raise DataError(f"{where}: category_id {ann.get('category_id')} is not in 'categories'")
        class_id = class_index(categories[ann["category_id"]], class_names, where)
        x, y, w, h = ann["bbox"]
        width, height = image["width"], image["height"]
        corners = (x / width, y / height, (x + w) / width, (y + h) / height)
        boxes[image["id"]].append(clip_box(class_id, *corners, where=where, repairs=repairs))
    samples = []
    for image_id, image in sorted(images.items(), key=lambda item: item[1]["file_name"]):
        if not boxes[image_id]:
            repairs["background_images"] += 1
        samples.append(Sample(image_root / image["file_name"], tuple(boxes[image_id])))
    return samples


def read_voc(folder: Path, class_names: Sequence[str], repairs: Counter) -> list[Sample]:
    image_dir = next(
        (folder / name for name in ("JPEGImages", "images") if (folder / name).is_dir()), None
    )
    if image_dir is None:
        raise DataError(f"{folder}: Pascal VOC layout needs JPEGImages/ (or images/)")
    samples = []
    for image in list_images(image_dir):
        xml_file = folder / "Annotations" / f"{image.stem}.xml"
        if not xml_file.is_file():
            repairs["background_images"] += 1
            samples.append(Sample(image, ()))
            continue
        try:
            root = ET.parse(xml_file).getroot()
            width = int(float(root.findtext("size/width") or 0))
            height = int(float(root.findtext("size/height") or 0))
            objects = [
                (
                    obj.findtext("name", "").strip(),
                    [float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")],
                )
                for obj in root.iter("object")
            ]
        except (ET.ParseError, TypeError, ValueError) as exc:
            raise DataError(f"{xml_file}: not a valid Pascal VOC annotation ({exc})") from exc
        if width <= 0 or height <= 0:
            repairs["voc_size_from_image"] += 1
            width, height = verify_image(image)
        boxes = []
        for number, (name, (x0, y0, x1, y1)) in enumerate(objects):
            where = f"{xml_file} object #{number}"
            class_id = class_index(name, class_names, where)
            corners = (x0 / width, y0 / height, x1 / width, y1 / height)
            boxes.append(clip_box(class_id, *corners, where=where, repairs=repairs))
        samples.append(Sample(image, tuple(boxes)))
    return samples


READERS = {"yolo": read_yolo, "coco": read_coco, "voc": read_voc}


def read_dataset(
    folder: Path, fmt: Format, class_names: Sequence[str]
) -> tuple[list[Sample], Counter]:
    """Read and validate a user's dataset; returns the samples and the repair counts."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found (prepare.raw_dir)")
    fmt = detect_format(folder) if fmt == "auto" else fmt
    repairs: Counter = Counter()
    samples = READERS[fmt](folder, class_names, repairs)
    if not samples:
        raise DataError(f"{folder}: empty dataset, no images ({', '.join(IMAGE_SUFFIXES)})")
    seen: dict[str, Path] = {}
    for sample in samples:
        if sample.image.stem in seen:
            raise DataError(f"{sample.image}: duplicate file stem, also {seen[sample.image.stem]}")
        seen[sample.image.stem] = sample.image
        if not sample.image.is_file():
            raise DataError(f"{sample.image}: image listed in the annotations is missing")
        verify_image(sample.image)
    return samples, repairs


def write_yolo_folder(samples: Sequence[Sample], folder: Path, repairs: Counter) -> None:
    """The internal layout: images/ (RGB, upright) and labels/<stem>.txt for every image."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for sample in samples:
        write_normalised_image(sample.image, folder / "images", repairs)
        (folder / "labels" / f"{sample.image.stem}.txt").write_text(format_label(sample.boxes))


def write_normalised_image(source: Path, folder: Path, repairs: Counter) -> Path:
    """Copy an RGB JPEG/PNG as is; re-encode anything else upright as RGB PNG (counted)."""
    with Image.open(source) as image:
        suffix_ok = source.suffix.lower() in SUFFIX_OF_FORMAT.get(image.format or "", ())
        rotated = image.getexif().get(0x0112, 1) != 1  # EXIF orientation tag
        if suffix_ok and image.mode == "RGB" and not rotated:
            target = folder / source.name
            target.write_bytes(source.read_bytes())
            return target
        upright = ImageOps.exif_transpose(image)
        if upright.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit greyscale: keep the top 8 bits.
            upright = upright.point(lambda v: v / 256).convert("L")
        target = folder / f"{source.stem}.png"
        upright.convert("RGB").save(target)
        repairs["reencoded_images"] += 1
        return target


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
