"""Users' datasets as they really come (issue 15): layouts, declared sizes, annotation policies,
bad files, data that would distort the evaluation, and a new user's first run."""

import contextlib
import functools
import json
import random
import re
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from synthdet import formats
from synthdet.core.data import Box, DataError, Sample, read_yolo_folder, split_by_group
from synthdet.formats import summary
from synthdet.params import load_params

REPO = Path(__file__).resolve().parents[1]

NAMES = ("apple", "pear")


def read_dataset(folder, fmt, class_names):
    """The samples and repair counts prepare imports (`formats.import_dataset`)."""
    imported = formats.import_dataset(folder, fmt, class_names)
    return imported.samples, imported.repairs


RED = (220, 20, 20)


def assert_refused(folder: Path, message: str) -> None:
    """Reading `folder` (format auto-detected, classes NAMES) stops with exactly `message`."""
    with pytest.raises(DataError, match=re.escape(message)):
        read_dataset(folder, "auto", NAMES)


def image_file(path: Path, size=(40, 20), colour=None, fmt=None, **save) -> Path:
    """An image whose pixels differ from every other name's (unless `colour` is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shade = sum(path.stem.encode()) * 37 % 200
    Image.new("RGB", size, colour or (30, 20 + shade, 30)).save(path, format=fmt, **save)
    return path


def text_file(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def voc_xml(objects, size=(40, 20), filename=None) -> str:
    rows = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
        f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, difficult, (x0, y0, x1, y1) in objects
    )
    name = f"<filename>{filename}</filename>" if filename else ""
    return (
        f"<annotation>{name}<size><width>{size[0]}</width><height>{size[1]}</height></size>"
        f"{rows}</annotation>"
    )


def coco_file(path: Path, images, annotations, categories=({"id": 1, "name": "apple"},)):
    text_file(
        path,
        json.dumps({"images": images, "annotations": annotations, "categories": list(categories)}),
    )


def boxes_of(samples):
    return {s.image.name: [(b.class_id, b.cx, b.cy, b.w, b.h) for b in s.boxes] for s in samples}


# ---------------------------------------------------------------- 1. nothing ignored


def test_nested_and_split_folders_are_read(tmp_path):
    """images/<sub>/ (any depth), ultralytics' images/<split>/ and Roboflow's <split>/images/."""
    for rel in ("images/batch2/a.jpg", "images/train/b.jpg", "valid/images/c.jpg"):
        image_file(tmp_path / rel)
    for rel in ("labels/batch2/a.txt", "labels/train/b.txt", "valid/labels/c.txt"):
        text_file(tmp_path / rel, "0 0.5 0.5 0.2 0.2\n")
    text_file(tmp_path / "data.yaml", "names: [apple, pear]\nnc: 2\n")
    text_file(tmp_path / "README.roboflow.txt", "exported\n")
    imported = formats.import_dataset(tmp_path, "auto", NAMES)
    assert imported.format == "yolo"
    assert sorted(s.image.name for s in imported.samples) == ["a.jpg", "b.jpg", "c.jpg"]
    assert all(len(s.boxes) == 1 for s in imported.samples)
    assert imported.repairs["skipped_files"] == 2
    assert imported.notes == [
        "skipped, not data: README.roboflow.txt (documentation), data.yaml (dataset description)"
    ]


def test_label_files_named_after_the_image_or_in_another_case_are_paired(tmp_path):
    image_file(tmp_path / "images" / "IMG_1.JPG")
    image_file(tmp_path / "images" / "b.jpg")
    text_file(tmp_path / "labels" / "img_1.txt", "0 0.5 0.5 0.2 0.2\n")
    text_file(tmp_path / "labels" / "b.jpg.txt", "1 0.5 0.5 0.2 0.2\n")
    samples, repairs = read_dataset(tmp_path, "yolo", NAMES)
    assert {name: [b[0] for b in boxes] for name, boxes in boxes_of(samples).items()} == {
        "IMG_1.JPG": [0],
        "b.jpg": [1],
    }
    assert repairs == Counter(label_stem_case=1, label_named_after_image=1)


def test_image_lists_are_split_lists_whatever_their_name(tmp_path):
    """CVAT YOLO 1.1 with subsets (`Validation.txt`) and ultralytics' `autosplit_val.txt` list
    image paths: split lists, not label files matching no image."""
    for subset in ("Train", "Validation"):
        image_file(tmp_path / f"obj_{subset}_data" / f"{subset}_frame.jpg")
        text_file(tmp_path / f"obj_{subset}_data" / f"{subset}_frame.txt", "0 0.5 0.5 0.2 0.2\n")
        text_file(tmp_path / f"{subset}.txt", f"data/obj_{subset}_data/{subset}_frame.jpg\r\n\n")
    text_file(tmp_path / "autosplit_val.txt", "./obj_Train_data/Train_frame.JPG\n")
    text_file(tmp_path / "obj.names", "apple\npear\n")
    imported = formats.import_dataset(tmp_path, "auto", NAMES)
    assert sorted((s.image.name, len(s.boxes)) for s in imported.samples) == [
        ("Train_frame.jpg", 1),
        ("Validation_frame.jpg", 1),
    ]
    lists = "split list (prepare makes its own split)"
    assert imported.notes == [
        f"skipped, not data: Train.txt ({lists}), Validation.txt ({lists}), autosplit_val.txt "
        f"({lists}), obj.names (class list)"
    ]


def test_nas_and_drive_system_folders_are_skipped(tmp_path):
    """A Synology NAS puts thumbnails in @eaDir/<image name>/: not images of the dataset."""
    yolo_one(tmp_path, "0 0.5 0.5 0.2 0.2\n")
    image_file(tmp_path / "images" / "@eaDir" / "a.jpg" / "SYNOFILE_THUMB_M.jpg")
    image_file(tmp_path / "$RECYCLE.BIN" / "S-1-5" / "old.jpg")
    imported = formats.import_dataset(tmp_path, "auto", NAMES)
    assert [s.image.name for s in imported.samples] == ["a.jpg"]
    assert imported.repairs["skipped_files"] == 2


def test_a_folder_of_masks_beside_the_images_says_to_move_it(tmp_path):
    """Kaggle-style images/ + masks/ with the same stems."""
    yolo_one(tmp_path, "0 0.5 0.5 0.2 0.2\n")
    image_file(tmp_path / "masks" / "a.png")
    message = (
        f"{tmp_path / 'masks' / 'a.png'}: duplicate file stem, also "
        f"{tmp_path / 'images' / 'a.jpg'}; the prepared splits are flat folders keyed by stem, "
        "so rename one; or, if one of the folders holds no images of the dataset (masks, "
        "thumbnails, previews), move it out of prepare.raw_dir"
    )
    assert_refused(tmp_path, message)


def test_label_file_matching_no_image_is_an_error(tmp_path):
    image_file(tmp_path / "images" / "a.jpg")
    text_file(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    text_file(tmp_path / "labels" / "ghost.txt", "0 0.5 0.5 0.2 0.2\n")
    message = (
        f"{tmp_path}: 1 label file(s) match no image, their boxes would be lost: "
        "labels/ghost.txt; a label file must have its image's file stem (photo_1.jpg <-> "
        "photo_1.txt): rename them, add the images, or remove them from prepare.raw_dir"
    )
    assert_refused(tmp_path, message)


def test_two_label_files_for_one_image(tmp_path):
    image_file(tmp_path / "images" / "a.jpg")
    text_file(tmp_path / "labels" / "train" / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    text_file(tmp_path / "labels" / "val" / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match="several label files for one image"):
        read_dataset(tmp_path, "auto", NAMES)


def test_tif_is_read_and_written_as_png(tmp_path):
    image_file(tmp_path / "raw" / "images" / "scan.tif", fmt="TIFF")
    text_file(tmp_path / "raw" / "labels" / "scan.txt", "0 0.5 0.5 0.2 0.2\n")
    samples, _ = read_dataset(tmp_path / "raw", "auto", NAMES)
    repairs = Counter()
    formats.write_yolo_folder(samples, tmp_path / "out", repairs)
    assert [p.name for p in (tmp_path / "out" / "images").iterdir()] == ["scan.png"]
    assert repairs == Counter(reencoded_images=1)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "images/c.heic",
            "1 image(s) in a format prepare does not read: images/c.heic; convert them to JPEG "
            "or PNG",
        ),
        (
            "images/notes.csv",
            "1 file(s) are not part of the images + labels/<stem>.txt (YOLO) dataset and would "
            "be ignored: images/notes.csv; move them out of prepare.raw_dir",
        ),
    ],
)
def test_a_file_no_reader_uses_is_named(tmp_path, name, message):
    image_file(tmp_path / "images" / "a.jpg")
    text_file(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    text_file(tmp_path / name, b"\x00\x01")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: {message}")):
        read_dataset(tmp_path, "auto", NAMES)


def test_coco_file_names_with_folder_prefix_or_windows_separators(tmp_path):
    """Label Studio / CVAT exports: `file_name` carries a folder prefix or backslashes."""
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        image_file(tmp_path / "images" / "batch" / name)
    images = [
        {"id": 1, "file_name": "batch/a.jpg", "width": 40, "height": 20},  # under images/
        {"id": 2, "file_name": "../../media/upload/3/b.jpg", "width": 40, "height": 20},
        {"id": 3, "file_name": "C:\\Users\\me\\images\\batch\\c.jpg", "width": 40, "height": 20},
    ]
    annotations = [
        {"id": i, "image_id": i, "category_id": 1, "bbox": [10, 5, 20, 10]} for i in (1, 2, 3)
    ]
    coco_file(tmp_path / "annotations" / "instances_default.json", images, annotations)
    samples, repairs = read_dataset(tmp_path, "coco", NAMES)
    assert [s.image.relative_to(tmp_path).as_posix() for s in samples] == [
        "images/batch/a.jpg",
        "images/batch/b.jpg",
        "images/batch/c.jpg",
    ]
    assert repairs == Counter(coco_file_name_resolved=2)


def test_coco_image_in_no_coco_file(tmp_path):
    image_file(tmp_path / "images" / "a.jpg")
    image_file(tmp_path / "images" / "extra.jpg")
    coco_file(tmp_path / "a.json", [{"id": 1, "file_name": "a.jpg"}], [])
    with pytest.raises(
        DataError, match=re.escape("1 image(s) are in no COCO file (a.json): images/extra.jpg")
    ):
        read_dataset(tmp_path, "auto", NAMES)


def test_yolo_class_list_must_be_shared_class_names(tmp_path):
    image_file(tmp_path / "images" / "a.jpg")
    text_file(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    text_file(tmp_path / "labels" / "classes.txt", "pear\napple\n")
    message = (
        f"{tmp_path / 'labels' / 'classes.txt'}: the dataset names its classes ['pear', "
        "'apple'] but shared.class_names is ['apple', 'pear']; YOLO class ids index these "
        "names, so set shared.class_names to the dataset's list in params.yaml"
    )
    assert_refused(tmp_path, message)


@pytest.mark.parametrize(
    ("name", "fmt"), [("a.jfif", "JPEG"), ("a.jpe", "JPEG"), ("a.mpo", "JPEG")]
)
def test_jpeg_under_other_suffixes_is_read_and_written_as_png(tmp_path, name, fmt):
    image_file(tmp_path / "raw" / "images" / name, fmt=fmt)
    text_file(tmp_path / "raw" / "labels" / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    samples, _ = read_dataset(tmp_path / "raw", "auto", NAMES)
    repairs = Counter()
    formats.write_yolo_folder(samples, tmp_path / "out", repairs)
    assert [p.name for p in (tmp_path / "out" / "images").iterdir()] == ["a.png"]
    assert repairs == Counter(reencoded_images=1)


def test_photo_in_an_unread_format_is_named_not_its_label(tmp_path):
    """A HEIC photo with its label: the photo is the problem, not an 'orphan' label."""
    text_file(tmp_path / "images" / "b.heic", b"\x00\x00\x00\x18ftypheic")
    text_file(tmp_path / "labels" / "b.txt", "0 0.5 0.5 0.2 0.2\n")
    message = f"{tmp_path}: 1 image(s) in a format prepare does not read: images/b.heic"
    assert_refused(tmp_path, message)


def test_coco_file_name_from_a_url_is_decoded(tmp_path):
    image_file(tmp_path / "images" / "my photo.jpg")
    image = {"id": 0, "file_name": "/data/upload/1/my%20photo.jpg", "width": 40, "height": 20}
    annotation = {"id": 1, "image_id": 0, "category_id": 1, "bbox": [10, 5, 20, 10]}
    coco_file(tmp_path / "result.json", [image], [annotation])
    samples, repairs = read_dataset(tmp_path, "auto", NAMES)
    assert boxes_of(samples) == {"my photo.jpg": [(0, 0.5, 0.5, 0.5, 0.5)]}
    assert repairs["coco_file_name_resolved"] == 1


def test_yolo_polygon_rows_become_the_enclosing_box(tmp_path):
    """Segmentation labels (ultralytics, Roboflow): the box is the polygon's extent, counted;
    checked on the pixels: the written box is the red triangle's bounding box."""
    image = Image.new("RGB", (40, 20), (30, 120, 30))
    triangle = [(8, 4), (28, 6), (14, 16)]
    ImageDraw.Draw(image).polygon(triangle, fill=RED)
    (tmp_path / "raw" / "images").mkdir(parents=True)
    image.save(tmp_path / "raw" / "images" / "t.png")
    row = " ".join(f"{x / 40:.6f} {y / 20:.6f}" for x, y in triangle)
    text_file(tmp_path / "raw" / "labels" / "t.txt", f"0 {row}\n1 0.5 0.5 0.2 0.2\n")
    samples, repairs = read_dataset(tmp_path / "raw", "auto", NAMES)
    assert repairs["polygon_boxes"] == 1
    formats.write_yolo_folder(samples, tmp_path / "out", Counter())
    (sample,) = read_yolo_folder(tmp_path / "out", len(NAMES))
    red = [(i % 40, i // 40) for i, pixel in enumerate(image.getdata()) if pixel == RED]
    xs, ys = zip(*red, strict=True)
    assert (min(xs), min(ys), max(xs), max(ys)) == (8, 4, 28, 16)  # the triangle's pixels
    assert sample.boxes[0].xyxy(40, 20) == pytest.approx((8, 4, 28, 16), abs=1e-3)
    assert sample.boxes[1].class_id == 1


def test_symlinked_image_folder_is_read_and_a_broken_link_named(tmp_path):
    """pathlib's rglob does not enter a linked folder: its images would vanish."""
    image_file(tmp_path / "elsewhere" / "a.jpg")
    text_file(tmp_path / "raw" / "labels" / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "raw" / "images").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "loop").symlink_to(tmp_path / "raw")  # followed once
    samples, _ = read_dataset(tmp_path / "raw", "auto", NAMES)
    assert [(s.image.relative_to(tmp_path).as_posix(), len(s.boxes)) for s in samples] == [
        ("raw/images/a.jpg", 1)
    ]
    (tmp_path / "raw" / "labels" / "b.txt").symlink_to(tmp_path / "missing.txt")
    message = (
        f"{tmp_path / 'raw'}: 1 symbolic link(s) point to nothing: labels/b.txt; restore their "
        "targets (with DVC: dvc checkout or dvc pull) or remove the links"
    )
    assert_refused(tmp_path / "raw", message)


def test_images_and_labels_named_like_documentation_are_data(tmp_path):
    """A licence-plate dataset: license_plate_1.jpg / .txt are no LICENSE file; classes.txt
    beside classes.jpg is its label, not a class list."""
    for stem in ("license_plate_1", "notice-2", "classes"):
        image_file(tmp_path / "images" / f"{stem}.jpg")
        text_file(tmp_path / "labels" / f"{stem}.txt", "0 0.5 0.5 0.2 0.2\n")
    text_file(tmp_path / "LICENSE", "CC BY 4.0\n")
    imported = formats.import_dataset(tmp_path, "auto", NAMES)
    assert sorted((s.image.name, len(s.boxes)) for s in imported.samples) == [
        ("classes.jpg", 1),
        ("license_plate_1.jpg", 1),
        ("notice-2.jpg", 1),
    ]
    assert imported.notes == ["skipped, not data: LICENSE (documentation)"]


def test_labels_in_a_format_not_read_are_named(tmp_path):
    """Images + a CSV export (TensorFlow / Roboflow CSV): the message names what was found."""
    image_file(tmp_path / "train" / "a.jpg")
    text_file(tmp_path / "train" / "_annotations.csv", "filename,xmin\na.jpg,1\n")
    message = (
        f"{tmp_path}: cannot tell the dataset format; found 1 images and "
        "train/_annotations.csv but no label files prepare reads"
    )
    with pytest.raises(DataError, match=re.escape(message) + ".*CSV and other layouts are not"):
        read_dataset(tmp_path, "auto", NAMES)


# ---------------------------------------------------------------- 2. declared sizes


def upright_photo_with_apple(path: Path) -> tuple[int, int, int, int]:
    """A 20x40 (upright) photo stored as 40x20 with EXIF orientation 6; a red apple at the
    returned upright pixel box."""
    upright = Image.new("RGB", (20, 40), (30, 120, 30))
    apple = (2, 25, 9, 36)
    ImageDraw.Draw(upright).rectangle((apple[0], apple[1], apple[2] - 1, apple[3] - 1), fill=RED)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # exif_transpose undoes it
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, exif=exif)
    return apple


def red_share_inside(folder: Path, stem: str) -> float:
    """Share of red pixels inside the one written box of `stem` (checked on the pixels)."""
    (sample,) = [s for s in read_yolo_folder(folder, len(NAMES)) if s.image.stem == stem]
    (box,) = sample.boxes
    with Image.open(sample.image) as image:
        x0, y0, x1, y1 = (round(v) for v in box.xyxy(*image.size))
        pixels = list(image.convert("RGB").crop((x0, y0, x1, y1)).getdata())
    return sum(1 for r, g, _ in pixels if r > 150 and g < 80) / len(pixels)


def test_voc_zero_size_on_exif_rotated_photo_puts_the_box_on_the_apple(tmp_path):
    apple = upright_photo_with_apple(tmp_path / "raw" / "JPEGImages" / "r.png")
    text_file(
        tmp_path / "raw" / "Annotations" / "r.xml", voc_xml([("apple", 0, apple)], size=(0, 0))
    )
    samples, repairs = read_dataset(tmp_path / "raw", "auto", NAMES)
    assert repairs == Counter(voc_size_from_image=1)
    formats.write_yolo_folder(samples, tmp_path / "out", Counter())
    assert red_share_inside(tmp_path / "out", "r") == 1.0


def test_voc_stored_size_of_exif_rotated_photo_is_an_error(tmp_path):
    apple = upright_photo_with_apple(tmp_path / "JPEGImages" / "r.png")
    xml = text_file(tmp_path / "Annotations" / "r.xml", voc_xml([("apple", 0, apple)]))
    message = (
        f"{xml}: declares the image size 40x20 but {tmp_path / 'JPEGImages' / 'r.png'} is 20x40 "
        "upright; that is the stored size: the photo has EXIF orientation 6"
    )
    assert_refused(tmp_path, message)


def test_coco_without_size_takes_the_upright_image_and_a_wrong_size_is_an_error(tmp_path):
    raw = tmp_path / "raw"
    apple = upright_photo_with_apple(raw / "images" / "r.png")
    x0, y0, x1, y1 = apple
    annotation = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0]}
    coco_file(raw / "coco.json", [{"id": 1, "file_name": "r.png"}], [annotation])
    samples, repairs = read_dataset(raw, "auto", NAMES)
    assert repairs == Counter(coco_size_from_image=1)
    formats.write_yolo_folder(samples, tmp_path / "out", Counter())
    assert red_share_inside(tmp_path / "out", "r") == 1.0
    image = {"id": 1, "file_name": "r.png", "width": 30, "height": 40}
    coco_file(raw / "coco.json", [image], [annotation])
    message = (
        f"{raw / 'coco.json'} image #0 (id 1): declares the image size 30x40 but "
        f"{raw / 'images' / 'r.png'} is 20x40 upright; otherwise correct the declared size"
    )
    assert_refused(raw, message)


def test_coco_polygon_without_bbox_gives_its_enclosing_box(tmp_path):
    """A COCO annotation with a polygon `segmentation` and no `bbox`: the box is the polygon's
    extent (the COCO bbox by definition), counted as a YOLO polygon row is; checked on the
    pixels. A run-length mask without a bbox is named."""
    image = Image.new("RGB", (40, 20), (30, 120, 30))
    triangle = [(8, 4), (28, 6), (14, 16)]
    ImageDraw.Draw(image).polygon(triangle, fill=RED)
    (tmp_path / "raw" / "images").mkdir(parents=True)
    image.save(tmp_path / "raw" / "images" / "t.png")
    polygon = [float(v) for point in triangle for v in point]
    annotation = {"id": 7, "image_id": 1, "category_id": 1, "segmentation": [polygon]}
    coco_file(tmp_path / "raw" / "coco.json", [{"id": 1, "file_name": "t.png"}], [annotation])
    samples, repairs = read_dataset(tmp_path / "raw", "auto", NAMES)
    assert repairs == Counter(polygon_boxes=1, coco_size_from_image=1)
    formats.write_yolo_folder(samples, tmp_path / "out", Counter())
    (sample,) = read_yolo_folder(tmp_path / "out", len(NAMES))
    red = [(i % 40, i // 40) for i, pixel in enumerate(image.getdata()) if pixel == RED]
    xs, ys = zip(*red, strict=True)
    assert sample.boxes[0].xyxy(40, 20) == pytest.approx((min(xs), min(ys), 28, 16), abs=1e-3)
    annotation["segmentation"] = {"size": [20, 40], "counts": "abc"}
    coco_file(tmp_path / "raw" / "coco.json", [{"id": 1, "file_name": "t.png"}], [annotation])
    message = (
        f"{tmp_path / 'raw' / 'coco.json'} annotation #0 (id 7): 'bbox' must be [x, y, width, "
        "height], got a run-length mask; add it (pycocotools' mask.toBbox gives it for a mask) "
        "or remove the annotation"
    )
    assert_refused(tmp_path / "raw", message)


def test_objects_of_classes_not_in_class_names_are_listed_at_once(tmp_path):
    """A VOC set labelled with apple and leaf, class_names [apple]: every unknown class with its
    count and first object, not one file per run."""
    for stem in ("a", "b"):
        image_file(tmp_path / "JPEGImages" / f"{stem}.jpg")
        objects = [
            ("apple", 0, (10, 5, 30, 15)),
            ("leaf", 0, (1, 1, 5, 5)),
            ("stem", 1, (2, 2, 4, 4)),
        ]
        text_file(tmp_path / "Annotations" / f"{stem}.xml", voc_xml(objects))
    message = (
        f"{tmp_path}: 4 object(s) of classes not in shared.class_names ['apple']: 'leaf' (2, "
        f"first {tmp_path / 'Annotations' / 'a.xml'} object #1), 'stem' (2, first "
        f"{tmp_path / 'Annotations' / 'a.xml'} object #2); add the classes to "
        "shared.class_names in params.yaml (-S 'shared.class_names=[...]'), or remove those "
        "objects"
    )
    with pytest.raises(DataError, match=re.escape(message)):
        read_dataset(tmp_path, "auto", ["apple"])


@pytest.mark.parametrize("fmt", ["coco", "voc"])
def test_normalised_coordinates_in_coco_or_voc_are_named(tmp_path, fmt):
    """Fractions of the image written where pixels belong would make sub-pixel boxes in the
    top-left corner of every image."""
    image_file(tmp_path / "images" / "a.jpg")
    if fmt == "coco":
        annotation = {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0.25, 0.25, 0.5, 0.5]}
        coco_file(tmp_path / "a.json", [{"id": 1, "file_name": "a.jpg"}], [annotation])
        where = f"{tmp_path / 'a.json'} annotation #0 (id 3)"
    else:
        xml = voc_xml([("apple", 0, (0.25, 0.25, 0.75, 0.75))])
        where = f"{text_file(tmp_path / 'Annotations' / 'a.xml', xml)} object #0"
    message = (
        f"{where}: every box of a.jpg lies within its first pixel (40x20 px image): the "
        "coordinates look normalised (0-1), but COCO and Pascal VOC boxes are in pixels; "
        "multiply them by the image width and height"
    )
    assert_refused(tmp_path, message)


def test_voc_negative_size_is_an_error(tmp_path):
    image_file(tmp_path / "JPEGImages" / "a.jpg")
    xml = text_file(
        tmp_path / "Annotations" / "a.xml", voc_xml([("apple", 0, (10, 5, 30, 15))], (-40, 20))
    )
    message = f"{xml}: size -40x20 is not a whole number of pixels; correct it or remove <size>"
    assert_refused(tmp_path, message)


def test_coco_category_ids_that_clash_are_an_error(tmp_path):
    """Two names under one id would give half the boxes the wrong class."""
    image_file(tmp_path / "images" / "a.jpg")
    categories = ({"id": 1, "name": "apple"}, {"id": 1, "name": "pear"})
    coco_file(tmp_path / "a.json", [{"id": 1, "file_name": "a.jpg"}], [], categories)
    message = (
        f"{tmp_path / 'a.json'} category #1 (id 1): category id 1 is 'pear' here but 'apple' "
        "before; give each category its own id"
    )
    assert_refused(tmp_path, message)


# ---------------------------------------------------------------- 3. annotation policies


def test_coco_crowd_regions_are_ignored_and_counted(tmp_path):
    image_file(tmp_path / "images" / "a.jpg")
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 10], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 20], "iscrowd": 1},
    ]
    coco_file(tmp_path / "a.json", [{"id": 1, "file_name": "a.jpg"}], annotations)
    samples, repairs = read_dataset(tmp_path, "auto", NAMES)
    assert boxes_of(samples) == {"a.jpg": [(0, 0.5, 0.5, 0.5, 0.5)]}
    assert repairs == Counter(coco_crowd_regions=1, coco_size_from_image=1)


def test_coco_ignore_flag_is_refused_not_kept_as_an_object(tmp_path):
    """`"ignore": 1` (CityPersons-style don't-care regions) kept would be a box over many
    objects; pycocotools overrides the flag and detectron2 refuses it: named, with the fix.
    `"ignore": 0`, as Label Studio writes on every annotation, is an object."""
    image_file(tmp_path / "images" / "a.jpg")
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 10], "ignore": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 20], "ignore": 1},
    ]
    coco_file(tmp_path / "a.json", [{"id": 1, "file_name": "a.jpg"}], annotations)
    message = (
        f"{tmp_path / 'a.json'} annotation #1 (id 2): 'ignore' is 1; prepare has no ignore flag "
        "(as detectron2): set 'iscrowd': 1 for a region to ignore (dropped, counted), or "
        "'ignore': 0 for an object"
    )
    assert_refused(tmp_path, message)
    annotations[1]["iscrowd"] = 1
    coco_file(tmp_path / "a.json", [{"id": 1, "file_name": "a.jpg"}], annotations)
    samples, repairs = read_dataset(tmp_path, "auto", NAMES)
    assert boxes_of(samples) == {"a.jpg": [(0, 0.5, 0.5, 0.5, 0.5)]}
    assert repairs["coco_crowd_regions"] == 1


def test_a_class_without_a_box_in_a_split_is_warned():
    """class_names [apple, pear], pear boxed in train only: mAP on val / test silently leaves
    pear out; a class with no box anywhere is never learnt."""
    pear, apple = Box(1, 0.5, 0.5, 0.2, 0.2), Box(0, 0.5, 0.5, 0.2, 0.2)
    split = {
        "train": [Sample(Path("t.jpg"), (apple, pear))],
        "val": [Sample(Path("v.jpg"), (apple,))],
        "test": [Sample(Path("s.jpg"), (apple,))],
    }
    samples = [s for part in split.values() for s in part]
    imported = formats.Imported(
        "yolo", samples, Counter(), [], {s.image: (192, 192) for s in samples}
    )
    groups = summary.group_counts(split, None)
    assert summary.warnings(imported, split, groups, 192, ("apple", "pear", "plum"))[:2] == [
        "class 'pear' of shared.class_names has no box in the val and test splits (1 in train): "
        "the detector is not measured on it there; check the labels, or give that split more "
        "groups (prepare.val_groups / test_groups, prepare.group_pattern)",
        "class 'plum' of shared.class_names has no box in the train and val and test splits "
        "(none in the dataset): the detector never learns it; check the labels, or give that "
        "split more groups (prepare.val_groups / test_groups, prepare.group_pattern), or remove "
        "the class from shared.class_names",
    ]


def test_voc_difficult_objects_are_dropped_and_counted(tmp_path):
    image_file(tmp_path / "JPEGImages" / "a.jpg")
    objects = [("apple", 0, (10, 5, 30, 15)), ("pear", 1, (0, 0, 8, 8))]
    text_file(tmp_path / "Annotations" / "a.xml", voc_xml(objects))
    samples, repairs = read_dataset(tmp_path, "auto", NAMES)
    assert boxes_of(samples) == {"a.jpg": [(0, 0.5, 0.5, 0.5, 0.5)]}
    assert repairs == Counter(voc_difficult_objects=1)


def test_duplicate_label_rows_are_one_object(tmp_path):
    image_file(tmp_path / "images" / "a.jpg")
    rows = "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n0 0.5000001 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n"
    text_file(tmp_path / "labels" / "a.txt", rows)
    samples, repairs = read_dataset(tmp_path, "auto", NAMES)
    assert [b.class_id for b in samples[0].boxes] == [0, 1]
    assert repairs == Counter(duplicate_boxes=2)


@pytest.mark.parametrize("fmt", ["coco", "voc"])
def test_a_box_repeated_in_coco_or_voc_is_one_object(tmp_path, fmt):
    image_file(tmp_path / "images" / "a.jpg")
    if fmt == "coco":
        annotations = [
            {"id": i, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 10]} for i in (1, 2)
        ]
        coco_file(tmp_path / "a.json", [{"id": 1, "file_name": "a.jpg"}], annotations)
    else:
        objects = [("apple", 0, (10, 5, 30, 15))] * 2
        text_file(tmp_path / "Annotations" / "a.xml", voc_xml(objects))
    samples, repairs = read_dataset(tmp_path, "auto", NAMES)
    assert boxes_of(samples) == {"a.jpg": [(0, 0.5, 0.5, 0.5, 0.5)]}
    assert repairs["duplicate_boxes"] == 1


def test_voc_difficult_written_as_a_boolean(tmp_path):
    image_file(tmp_path / "JPEGImages" / "a.jpg")
    objects = [("apple", "false", (10, 5, 30, 15)), ("pear", "True", (0, 0, 8, 8))]
    text_file(tmp_path / "Annotations" / "a.xml", voc_xml(objects))
    samples, repairs = read_dataset(tmp_path, "auto", NAMES)
    assert boxes_of(samples) == {"a.jpg": [(0, 0.5, 0.5, 0.5, 0.5)]}
    assert repairs == Counter(voc_difficult_objects=1)


# ---------------------------------------------------------------- 4. no traceback


def yolo_one(tmp_path: Path, label: str | bytes) -> Path:
    image_file(tmp_path / "images" / "a.jpg")
    return text_file(tmp_path / "labels" / "a.txt", label)


def test_utf16_label_file_is_named(tmp_path):
    label = yolo_one(tmp_path, "0 0.5 0.5 0.2 0.2\n".encode("utf-16"))
    message = f"{label}: not UTF-8 text (it starts with a UTF-16 byte-order mark); save it as UTF-8"
    assert_refused(tmp_path, message)


def test_bom_and_float_class_ids_are_read(tmp_path):
    yolo_one(tmp_path, "\ufeff0.000e+00 0.5 0.5 0.2 0.2\n1.0 0.25 0.5 0.1 0.1\n")
    samples, _ = read_dataset(tmp_path, "auto", NAMES)
    assert [b.class_id for b in samples[0].boxes] == [0, 1]


def test_fractional_class_id_is_an_error(tmp_path):
    label = yolo_one(tmp_path, "0.5 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=re.escape(f"{label}:1: class id '0.5' is not a whole")):
        read_dataset(tmp_path, "auto", NAMES)


def test_decompression_bomb_is_named(tmp_path, monkeypatch):
    yolo_one(tmp_path, "")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40x20 is then over twice the limit
    with pytest.raises(
        DataError, match=re.escape(f"{tmp_path / 'images' / 'a.jpg'}: image too large to open")
    ):
        read_dataset(tmp_path, "auto", NAMES)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 12345\n",
            "a Git LFS pointer, not the image itself; fetch the images (git lfs pull) before "
            "running prepare",
        ),
        (
            b"\x00\x00\x00\x18ftypheic\x00\x00",
            "not an image file Pillow can read (it starts with b'\\x00\\x00\\x00\\x18ftypheic'); "
            "re-export it as JPEG or PNG, or remove it",
        ),
    ],
)
def test_a_file_that_is_not_an_image_says_what_to_do(tmp_path, content, message):
    """A repository cloned without `git lfs pull`; an iPhone HEIC photo renamed .jpg."""
    yolo_one(tmp_path, "0 0.5 0.5 0.2 0.2\n")
    text_file(tmp_path / "images" / "a.jpg", content)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'images' / 'a.jpg'}: {message}")):
        read_dataset(tmp_path, "auto", NAMES)


def test_data_yaml_names_keyed_by_strings_follow_the_ids(tmp_path):
    """`names: {'0': c0, ..., '11': c11}` (quoted keys): id 10 is c10, not the third name, as
    ultralytics reads it; ids with a gap would shift every later class."""
    yolo_one(tmp_path, "0 0.5 0.5 0.2 0.2\n")
    twelve = [f"c{i}" for i in range(12)]
    text_file(tmp_path / "data.yaml", "names:\n" + "".join(f"  '{i}': c{i}\n" for i in range(12)))
    assert len(read_dataset(tmp_path, "auto", twelve)[0]) == 1
    with pytest.raises(
        DataError, match=re.escape("the dataset names its classes ['c0', 'c1', 'c2'")
    ):
        read_dataset(tmp_path, "auto", sorted(twelve))  # c0, c1, c10, c11, c2, ...
    text_file(tmp_path / "data.yaml", "names: {0: apple, 2: pear}\n")
    message = (
        f"{tmp_path / 'data.yaml'}: 'names' must number the classes 0-1 without a gap, got ids "
        "[0, 2]; YOLO class ids index this list, so renumber the labels and names"
    )
    assert_refused(tmp_path, message)


def test_data_yaml_names_that_are_no_list_are_named(tmp_path):
    yolo_one(tmp_path, "0 0.5 0.5 0.2 0.2\n")
    text_file(tmp_path / "data.yaml", "names: pear\n")
    message = (
        f"{tmp_path / 'data.yaml'}: 'names' must be a list of class names or a mapping id -> "
        "name, got 'pear'; fix it or move it out of prepare.raw_dir"
    )
    assert_refused(tmp_path, message)


def test_coco_json_in_annotations_folder_with_explicit_format(tmp_path):
    image_file(tmp_path / "images" / "a.jpg")
    annotation = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 10]}
    image = {"id": 1, "file_name": "a.jpg", "width": 40, "height": 20}
    coco_file(tmp_path / "annotations" / "instances.json", [image], [annotation])
    for fmt in ("coco", "auto"):
        samples, _ = read_dataset(tmp_path, fmt, NAMES)
        assert boxes_of(samples) == {"a.jpg": [(0, 0.5, 0.5, 0.5, 0.5)]}


def test_string_category_id_says_so(tmp_path):
    image_file(tmp_path / "images" / "a.jpg")
    annotation = {"id": 4, "image_id": 1, "category_id": "1", "bbox": [10, 5, 20, 10]}
    coco_file(tmp_path / "a.json", [{"id": 1, "file_name": "a.jpg"}], [annotation])
    message = (
        f"{tmp_path / 'a.json'} annotation #0 (id 4): category_id '1' is not in 'categories' "
        "(ids [1]); it is the string '1': COCO ids are integers, write 1"
    )
    assert_refused(tmp_path, message)


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ("0 0.5 0.5 0.2 0.2\n".encode("utf-16-le"), "a NUL byte at offset 1: UTF-16 without a"),
        (b"0 0.5 0.5 0.2 0.2\x00\n", "a NUL byte at offset 17: UTF-16 without a"),
        ("0 0.5 0.5 0.2 0.2 \xe9\n".encode("latin-1"), "byte 0xe9 at offset 18 is not UTF-8"),
    ],
)
def test_label_file_in_another_encoding_is_named(tmp_path, content, found):
    label = yolo_one(tmp_path, content)
    with pytest.raises(DataError, match=re.escape(f"{label}: not UTF-8 text ({found}")):
        read_dataset(tmp_path, "auto", NAMES)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            "0 20 10 8 4",
            "coordinates '0 20 10 8 4' look like pixels; YOLO labels hold fractions of the "
            "image width and height (0-1): divide them by the image size",
        ),
        (
            "0 0.5 0.5 0.2 0.2 0.9",
            "got 6 field(s) in '0 0.5 0.5 0.2 0.2 0.9'; a 6th column (a score?) does not "
            "belong in a label",
        ),
        ("0,0.5,0.5,0.2,0.2", "(5 numbers separated by spaces)"),
        (
            "apple 0.5 0.5 0.2 0.2",
            "the class 'apple' is written as a name: a YOLO row starts with the class id, its "
            "index in shared.class_names (0 for the first)",
        ),
        (
            "2 0.5 0.5 0.2 0.2",
            "class id 2 is not in the 2 class names (shared.class_names); list every class of "
            "the dataset there, in the order of its ids",
        ),
        (
            "0 0.5 0.5 0 0.2",
            "box has zero or negative size (0.5000,0.4000)-(0.5000,0.6000); correct its corners "
            "or remove it",
        ),
        (
            "0 1.0000001 0.5 0.2 0.2",
            "box centre (1.0000, 0.5000) lies outside the image (0-1 of its width and height); "
            "correct the box or remove it",
        ),
    ],
)
def test_malformed_label_rows_say_what_to_do(tmp_path, row, message):
    label = yolo_one(tmp_path, row + "\n")
    with pytest.raises(DataError, match=re.escape(f"{label}:1: ") + ".*" + re.escape(message)):
        read_dataset(tmp_path, "auto", NAMES)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ((1.0, 1.0, 1.0), None),  # a whole JSON number is the same id, as in pycocotools
        ((True, 1, 1), "image #0 (id True): needs an integer 'id', got True"),
        ((1, 1, "x"), "annotation #0 (id 1): category_id 'x' is not in 'categories' (ids [1])"),
    ],
)
def test_coco_ids_are_read_as_pycocotools_reads_them(tmp_path, ids, message):
    image_id, annotation_image_id, category_id = ids
    image_file(tmp_path / "images" / "a.jpg")
    annotation = {
        "id": 1,
        "image_id": annotation_image_id,
        "category_id": category_id,
        "bbox": [10, 5, 20, 10],
    }
    coco_file(tmp_path / "a.json", [{"id": image_id, "file_name": "a.jpg"}], [annotation])
    if message is None:
        samples, _ = read_dataset(tmp_path, "auto", NAMES)
        assert boxes_of(samples) == {"a.jpg": [(0, 0.5, 0.5, 0.5, 0.5)]}
    else:
        with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'a.json'} {message}")):
            read_dataset(tmp_path, "auto", NAMES)


def valid_dataset(root: Path, fmt: str) -> list[Path]:
    """A small valid dataset of `fmt`; returns the files a reader parses (to break them)."""
    image = image_file(root / "images" / "a.png", size=(32, 32))
    if fmt == "yolo":
        return [
            image,
            text_file(root / "labels" / "a.txt", "0 0.5 0.5 0.2 0.2\n"),
            text_file(root / "data.yaml", "names: [apple, pear]\n"),
            text_file(root / "labels" / "classes.txt", "apple\npear\n"),
            text_file(root / "notes.json", json.dumps({"categories": [{"id": 0, "name": "a"}]})),
        ]
    if fmt == "coco":
        annotation = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}
        coco_file(root / "annotations.json", [{"id": 1, "file_name": "a.png"}], [annotation])
        return [image, root / "annotations.json"]
    return [image, text_file(root / "Annotations" / "a.xml", voc_xml([("apple", 0, (1, 1, 9, 9))]))]


@pytest.mark.parametrize("fmt", ["yolo", "coco", "voc"])
def test_random_bytes_and_truncated_files_give_data_errors_only(tmp_path, fmt):
    """Every file a reader parses, replaced by random bytes, cut short or with bytes flipped: a
    DataError, or a successful read that prepare can then write; never another exception."""
    rng = random.Random(fmt)
    raw = tmp_path / "raw"
    originals = {p: p.read_bytes() for p in valid_dataset(raw, fmt)}
    cases = 0
    for path, content in originals.items():
        variants = [
            bytes(rng.randrange(256) for _ in range(rng.choice((1, 7, 64, 600)))) for _ in range(6)
        ]
        variants += [content[:cut] for cut in sorted({0, 1, len(content) // 3, len(content) - 1})]
        variants += [b"\xff\xfe" + content, b"\xef\xbb\xbf" + content, content.replace(b"1", b"x")]
        for _ in range(4):  # a few bytes flipped, past the signature of an image format
            flipped = bytearray(content)
            for _ in range(4):
                flipped[rng.randrange(min(16, len(content) // 2), len(content))] = rng.randrange(
                    256
                )
            variants.append(bytes(flipped))
        for variant in variants:
            path.write_bytes(variant)
            with contextlib.suppress(DataError):  # any other exception fails the test
                imported = formats.import_dataset(raw, fmt, NAMES)
                shutil.rmtree(tmp_path / "out", ignore_errors=True)
                formats.write_yolo_folder(imported.samples, tmp_path / "out", Counter())
            cases += 1
        path.write_bytes(content)
    assert cases == 17 * len(originals)


WRONG_JSON_VALUES = (None, True, -1, 1.5, "x", "1", [], {}, float("nan"), 10**30)
WRONG_XML_TEXTS = ("", "x", "-1", "1.5", "1e309", "nan", "true")


def json_paths(value, path=()):
    """Every path into a JSON document (keys and list indices), the root first."""
    yield path
    if isinstance(value, dict | list):
        for key, child in value.items() if isinstance(value, dict) else enumerate(value):
            yield from json_paths(child, (*path, key))


def test_every_coco_field_wrong_or_missing_gives_a_data_error_only(tmp_path):
    """Each value of a valid COCO file replaced by a wrong type or removed: a DataError or a
    successful read, never another exception."""
    image_file(tmp_path / "images" / "a.png", size=(32, 32))
    valid = {
        "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 1, 9, 9],
                "segmentation": [[1, 1, 9, 1, 9, 9]],  # the box when 'bbox' is removed
                "iscrowd": 0,
                "ignore": 0,
            }
        ],
        "categories": [{"id": 1, "name": "apple"}],
    }
    cases = 0
    for path in list(json_paths(valid))[1:]:
        for value in (*WRONG_JSON_VALUES, "missing"):
            document = json.loads(json.dumps(valid))
            parent = functools.reduce(lambda node, key: node[key], path[:-1], document)
            if value == "missing":
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
            text_file(tmp_path / "a.json", json.dumps(document))
            with contextlib.suppress(DataError):  # any other exception fails the test
                formats.import_dataset(tmp_path, "coco", NAMES)
            cases += 1
    assert cases == 30 * 11  # 30 values and lists, nested ones included


def test_every_voc_element_wrong_or_missing_gives_a_data_error_only(tmp_path):
    image_file(tmp_path / "JPEGImages" / "a.png", size=(32, 32))
    valid = voc_xml([("apple", 0, (1, 1, 9, 9))], size=(32, 32), filename="a.png")
    count = len(list(ET.fromstring(valid).iter()))
    cases = 0
    for index in range(1, count):
        for text in (*WRONG_XML_TEXTS, None):
            root = ET.fromstring(valid)
            element = list(root.iter())[index]
            if text is None:
                parent = next(p for p in root.iter() if element in list(p))
                parent.remove(element)
            else:
                element.text = text
            text_file(tmp_path / "Annotations" / "a.xml", ET.tostring(root))
            with contextlib.suppress(DataError):  # any other exception fails the test
                formats.import_dataset(tmp_path, "voc", NAMES)
            cases += 1
    assert cases == (count - 1) * 8


# ---------------------------------------------------------------- 5. distorting data


def test_tiny_images_are_dropped_and_named(tmp_path):
    yolo_one(tmp_path, "0 0.5 0.5 0.2 0.2\n")
    image_file(tmp_path / "images" / "tiny.jpg", size=(9, 30))
    text_file(tmp_path / "labels" / "tiny.txt", "0 0.5 0.5 0.2 0.2\n")
    imported = formats.import_dataset(tmp_path, "auto", NAMES)
    assert [s.image.name for s in imported.samples] == ["a.jpg"]
    assert imported.repairs == Counter(tiny_images=1)
    assert imported.notes == [
        "dropped images/tiny.jpg: 9x30 px, under 10 px (ultralytics' minimum)"
    ]


def test_same_picture_under_two_names(tmp_path):
    image_file(tmp_path / "images" / "a.png", colour=(1, 2, 3))
    image_file(tmp_path / "images" / "b.tif", colour=(1, 2, 3), fmt="TIFF")  # same pixels
    text_file(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    text_file(tmp_path / "labels" / "b.txt", "0 0.5 0.5 0.2 0.2\n")
    imported = formats.import_dataset(tmp_path, "auto", NAMES)
    assert [s.image.name for s in imported.samples] == ["a.png"]
    assert imported.repairs == Counter(duplicate_images=1)
    assert imported.notes == [
        "dropped images/b.tif: the same picture as images/a.png (and the same labels)"
    ]
    text_file(tmp_path / "labels" / "b.txt", "1 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match="the same picture as .* but with other labels"):
        formats.import_dataset(tmp_path, "auto", NAMES)


def test_every_picture_repeated_with_other_labels_is_named_in_one_error(tmp_path):
    """A web-photo VOC set with 4 such pairs: one run names them all, not one per run."""
    for i in range(4):
        for copy in ("a", "b"):
            image_file(tmp_path / "JPEGImages" / f"{copy}{i}.jpg", colour=(40 * i, 9, 9))
            objects = [("apple", 0, (1, 1, 10 + (copy == "b"), 10))]
            text_file(tmp_path / "Annotations" / f"{copy}{i}.xml", voc_xml(objects))
    with pytest.raises(DataError) as error:
        formats.import_dataset(tmp_path, "auto", NAMES)
    message = str(error.value)
    assert message.startswith(f"{tmp_path}: 4 pictures repeat another with other labels (")
    for i in range(4):
        jpeg = tmp_path / "JPEGImages"
        assert f"{jpeg / f'b{i}.jpg'}: the same picture as {jpeg / f'a{i}.jpg'}" in message


def test_every_broken_voc_file_and_wrong_size_is_named_in_one_error(tmp_path):
    for stem in ("a", "b", "c", "d"):
        image_file(tmp_path / "images" / f"{stem}.jpg")
    text_file(tmp_path / "Annotations" / "a.xml", "<annotation>")
    text_file(tmp_path / "Annotations" / "b.xml", "<ann>")
    assert_refused(tmp_path, "2 files are not readable Pascal VOC annotations: (1) ")
    text_file(tmp_path / "Annotations" / "a.xml", voc_xml([], size=(41, 20)))
    text_file(tmp_path / "Annotations" / "b.xml", voc_xml([], size=(40, 21)))
    with pytest.raises(DataError) as error:
        read_dataset(tmp_path, "auto", NAMES)
    assert str(error.value).startswith("2 images or their annotations cannot be used: (1) ")
    assert "declares the image size 41x20" in str(error.value)
    assert "declares the image size 40x21" in str(error.value)


def test_every_broken_coco_file_and_wrong_entry_is_named_in_one_error(tmp_path):
    """Every wrong category, image and annotation of every COCO file in one run, each with its
    number and id; an annotation of a refused image or category is not named again."""
    for stem in ("a", "b", "c"):
        image_file(tmp_path / "images" / f"{stem}.jpg")
    text_file(tmp_path / "x.json", "{")
    text_file(tmp_path / "y.json", json.dumps({"images": []}))
    message = "2 files are not COCO detection files: (1) "
    assert_refused(tmp_path, message)
    (tmp_path / "x.json").unlink()
    images = [
        {"id": 1, "file_name": "a.jpg"},
        {"id": 2, "file_name": "gone.jpg"},  # refused: its annotation #4 is not named again
        {"id": 3, "file_name": "b.jpg", "width": 40.5, "height": 20},
    ]
    box = [10, 5, 20, 10]
    annotations = [
        {"id": 10, "image_id": 1, "category_id": "1", "bbox": box},
        {"id": 11, "image_id": 1, "category_id": 1},
        {"id": 12, "image_id": 9, "category_id": 1, "bbox": box},
        {"id": 13, "image_id": 1, "category_id": 1, "bbox": box, "iscrowd": 2},
        {"id": 14, "image_id": 2, "category_id": 1, "bbox": box},
        {"id": 15, "image_id": 1, "category_id": 5, "bbox": box},  # category #1: named there
        {"id": 16, "image_id": 1, "category_id": 1, "bbox": box},  # fine
    ]
    categories = ({"id": 1, "name": "apple"}, {"id": 5})
    coco_file(tmp_path / "y.json", images, annotations, categories)
    coco_file(tmp_path / "z.json", [{"id": 1, "file_name": "c.jpg"}], ["not an object"])
    y, z = tmp_path / "y.json", tmp_path / "z.json"
    problems = [
        f"{y} category #1 (id 5): needs an integer 'id' and a string 'name'",
        f"{y} image #1 (id 2): image file_name 'gone.jpg' not found under {tmp_path} (no image "
        "with the file name 'gone.jpg'); add the image or remove its entry",
        f"{y} image #2 (id 3): width and height must be positive whole numbers, got 40.5 x 20; "
        "fix them or remove both (the size is then read from the image)",
        f"{y} annotation #0 (id 10): category_id '1' is not in 'categories' (ids [1]); it is "
        "the string '1': COCO ids are integers, write 1",
        f"{y} annotation #1 (id 11): 'bbox' must be [x, y, width, height], got None; add it "
        "(pycocotools' mask.toBbox gives it for a mask) or remove the annotation",
        f"{y} annotation #2 (id 12): image_id 9 is not in 'images'",
        f"{y} annotation #3 (id 13): iscrowd must be 0 or 1, got 2",
        f"{z} annotation #0: an annotation must be an object, got 'not an object'",
    ]
    with pytest.raises(DataError) as error:
        read_dataset(tmp_path, "auto", NAMES)
    assert str(error.value) == f"{len(problems)} COCO entries hold a wrong value: " + " ".join(
        f"({n}) {m}" for n, m in enumerate(problems, 1)
    )


def test_same_picture_with_an_alpha_channel_is_a_duplicate(tmp_path):
    """Hashed as prepare writes it (upright RGB): an opaque RGBA copy is the same picture."""
    image_file(tmp_path / "images" / "a.jpg", colour=(1, 2, 3), fmt="PNG")
    Image.new("RGBA", (40, 20), (1, 2, 3, 255)).save(tmp_path / "images" / "b.png")
    text_file(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    text_file(tmp_path / "labels" / "b.txt", "0 0.5 0.5 0.2 0.2\n")
    imported = formats.import_dataset(tmp_path, "auto", NAMES)
    assert [s.image.name for s in imported.samples] == ["a.jpg"]
    assert imported.repairs["duplicate_images"] == 1


def test_a_dataset_of_tiny_images_names_them(tmp_path):
    image_file(tmp_path / "images" / "a.jpg", size=(1, 1))
    text_file(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    message = (
        f"{tmp_path}: no usable image left, every image was dropped: dropped images/a.jpg: "
        "1x1 px, under 10 px (ultralytics' minimum)"
    )
    with pytest.raises(DataError, match=re.escape(message)):
        formats.import_dataset(tmp_path, "auto", NAMES)


# ---------------------------------------------------------------- 7. a new user's dataset


def test_voc_with_lower_case_annotations_folder(tmp_path):
    """A public VOC set of web photos: name-1.jpg, XML in annotations/ beside images/."""
    for i in (1, 2):
        image_file(tmp_path / "images" / f"name-{i}.jpg")
        text_file(
            tmp_path / "annotations" / f"name-{i}.xml",
            voc_xml([("apple", 0, (10, 5, 30, 15))], filename=f"name-{i}.jpg"),
        )
    imported = formats.import_dataset(tmp_path, "auto", NAMES)
    assert imported.format == "voc"
    assert [len(s.boxes) for s in imported.samples] == [1, 1]


def test_voc_annotation_found_by_its_filename_element(tmp_path):
    image_file(tmp_path / "JPEGImages" / "photo.jpg")
    text_file(
        tmp_path / "Annotations" / "0001.xml",
        voc_xml([("apple", 0, (10, 5, 30, 15))], filename="photo.jpg"),
    )
    samples, _ = read_dataset(tmp_path, "voc", NAMES)
    assert boxes_of(samples) == {"photo.jpg": [(0, 0.5, 0.5, 0.5, 0.5)]}


def test_cvat_xml_is_not_voc(tmp_path):
    image_file(tmp_path / "images" / "a.jpg")
    xml = text_file(tmp_path / "annotations.xml", "<annotations><image/></annotations>")
    message = f"{xml}: not a Pascal VOC annotation (root element <annotations>, expected"
    assert_refused(tmp_path, message)


def test_several_label_formats_need_prepare_format(tmp_path):
    yolo_one(tmp_path, "0 0.5 0.5 0.2 0.2\n")
    text_file(tmp_path / "Annotations" / "a.xml", voc_xml([]))
    with pytest.raises(DataError, match="holds label files of several formats"):
        read_dataset(tmp_path, "auto", NAMES)


def held_out_warnings(images: int, val: int, test: int, side: int, imgsz: int) -> list[str]:
    """`formats.summary.warnings` for `images` images of `side` px, each its own group."""
    samples = [Sample(Path(f"p-{i}.jpg"), ()) for i in range(images)]
    imported = formats.Imported(
        "voc", samples, Counter(), [], {s.image: (side, side) for s in samples}
    )
    split = {
        "test": samples[:test],
        "val": samples[test : test + val],
        "train": samples[val + test :],
    }
    return summary.warnings(imported, split, summary.group_counts(split, None), imgsz, ())


def test_new_users_first_run_warns_of_tiny_held_out_splits():
    """200 web photos of 640 px, each its own group, val_groups 2 / test_groups 3 (the defaults
    for 14 photos): val and test get 1 % of the images."""
    assert held_out_warnings(200, 2, 3, 640, 192) == [
        "the val split holds 2 of 200 images (1%): prepare.val_groups=2 counts groups "
        "(photos), not images, and the dataset has 200 groups; for about 15% set "
        "-S prepare.val_groups=30",
        "the test split holds 3 of 200 images (2%): prepare.test_groups=3 counts groups "
        "(photos), not images, and the dataset has 200 groups; for about 15% set "
        "-S prepare.test_groups=30",
    ]
    assert held_out_warnings(200, 30, 30, 320, 192) == []  # the default data's proportions


def object_size_warnings(side: int, box_px: float, imgsz: int) -> list[str]:
    """`formats.summary.warnings` for 20 square images of `side` px, each with one square box
    of `box_px` px, split 14 / 3 / 3."""
    samples = [
        Sample(Path(f"p-{i}.jpg"), (Box(0, 0.5, 0.5, box_px / side, box_px / side),))
        for i in range(20)
    ]
    imported = formats.Imported(
        "voc", samples, Counter(), [], {s.image: (side, side) for s in samples}
    )
    split = {"test": samples[:3], "val": samples[3:6], "train": samples[6:]}
    return summary.warnings(imported, split, summary.group_counts(split, None), imgsz, ["a"])


def test_imgsz_is_judged_by_the_objects_not_the_images():
    """640 px orchard tiles (apples 38 px: 11 px at 192) and 500 px web photos (objects 260 px:
    100 px at 192) need no other imgsz; objects under the finest stride or far over the
    coarsest get the smallest / largest multiple of 32 that brings them into range."""
    assert object_size_warnings(640, 38, 192) == []
    assert object_size_warnings(500, 260, 192) == []
    assert object_size_warnings(4000, 60, 192) == [
        "the median object is 3 px at train_detector.yolo.imgsz=192 (box side sqrt(w*h) after "
        "the longer image side is resized to imgsz), under the 8 px of the detector's finest "
        "stride, so small objects vanish; -S train_detector.yolo.imgsz=544 makes it 8 px"
    ]
    assert object_size_warnings(320, 300, 192) == [
        "the median object is 180 px at train_detector.yolo.imgsz=192 (box side sqrt(w*h) "
        "after the longer image side is resized to imgsz), over 128 px (4 cells of the "
        "coarsest, 32 px stride): a smaller imgsz sees them as well, at a cost that grows "
        "with imgsz squared; -S train_detector.yolo.imgsz=128 makes it 120 px"
    ]


def test_default_group_pattern_on_web_photos_says_how_to_set_it():
    samples = [Sample(Path(f"name-{i}.jpg"), ()) for i in range(6)]
    message = (
        "file stem 'name-0' does not match prepare.group_pattern '(.+)_\\d+'; set "
        "prepare.group_pattern to a regex whose first group names the photo of a file stem, or "
        "to null if every image is its own photo (not a tile): -S prepare.group_pattern=null, "
        "or a regex in quotes inside the shell's quotes, "
        """-S "prepare.group_pattern='(.+)-\\d+'" (see README 'Your own data')"""
    )
    with pytest.raises(DataError, match=re.escape(message)):
        split_by_group(samples, r"(.+)_\d+", 2, 3, seed=0)


def test_default_dataset_splits_as_committed():
    """The embedded 14 photos still give the committed split (metrics/prepare.json)."""
    params = load_params(REPO / "params.yaml")
    imported = formats.import_dataset(REPO / "data/raw", "auto", params.shared.class_names)
    p = params.prepare
    split = split_by_group(
        imported.samples, p.group_pattern, p.val_groups, p.test_groups, params.shared.seed
    )
    committed = json.loads((REPO / "metrics/prepare.json").read_text())
    # Apples of 11-23 px at imgsz 192 (median 17.5): no imgsz warning on the default data.
    imgsz = params.train_detector.imgsz
    assert round(imported.median_object_px(imgsz), 1) == 17.5
    assert summary.fitting_imgsz(imported.median_object_px(imgsz), imgsz) == imgsz
    for name, samples in split.items():
        assert len(samples) == committed[f"{name}.images"]
        assert sum(len(s.boxes) for s in samples) == committed[f"{name}.boxes"]


def test_gitignore_ignores_dvc_plots():
    assert "dvc_plots/" in (REPO / ".gitignore").read_text().splitlines()
