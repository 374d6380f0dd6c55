import json
from collections import Counter

import pytest
from PIL import Image

from synthdet import formats
from synthdet.core.data import DataError, read_yolo_folder

NAMES = ("apple", "pear")


def read_dataset(folder, fmt, class_names):
    """The samples and repair counts prepare imports (`formats.import_dataset`)."""
    imported = formats.import_dataset(folder, fmt, class_names)
    return imported.samples, imported.repairs


def image_file(path, size=(40, 20), mode="RGB", fmt=None, **save):
    """An image whose pixels differ from other names' (prepare drops repeated pictures)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shade = sum(path.stem.encode()) * 37 % 200
    colour = {"RGB": (30, shade, 30), "RGBA": (30, shade, 30, 255)}.get(mode, shade)
    Image.new(mode, size, colour).save(path, format=fmt, **save)
    return path


def write_coco(folder, annotations, categories=({"id": 7, "name": "apple"},)):
    image_file(folder / "images" / "a.jpg")
    image_file(folder / "images" / "b.jpg")
    coco = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 40, "height": 20},
            {"id": 2, "file_name": "b.jpg", "width": 40, "height": 20},
        ],
        "categories": list(categories),
        "annotations": annotations,
    }
    (folder / "annotations.json").write_text(json.dumps(coco))


def test_coco_import_clips_and_counts(tmp_path):
    write_coco(
        tmp_path,
        [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [30, 5, 20, 10]},  # past the edge
        ],
    )
    samples, repairs = read_dataset(tmp_path, "auto", NAMES)
    assert [s.image.name for s in samples] == ["a.jpg", "b.jpg"]
    first, clipped = samples[0].boxes
    assert (first.cx, first.cy, first.w, first.h) == pytest.approx((0.5, 0.5, 0.5, 0.5))
    assert (clipped.cx, clipped.w) == pytest.approx((0.875, 0.25))
    assert samples[1].boxes == ()
    assert repairs == Counter(clipped_boxes=1, background_images=1)


def test_coco_unknown_class_names_the_annotation(tmp_path):
    write_coco(
        tmp_path,
        [{"id": 5, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]}],
        categories=({"id": 3, "name": "plum"},),
    )
    message = (
        r"classes not in shared.class_names \['apple', 'pear'\]: 'plum' "
        r"\(1, first .*annotations.json annotation #0 \(id 5\)\)"
    )
    with pytest.raises(DataError, match=message):
        read_dataset(tmp_path, "coco", NAMES)


def test_voc_zero_size_taken_from_image(tmp_path):
    image_file(tmp_path / "JPEGImages" / "x.jpg", size=(100, 50))
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "x.xml").write_text(
        "<annotation><size><width>0</width><height>0</height></size>"
        "<object><name>pear</name><bndbox><xmin>10</xmin><ymin>10</ymin>"
        "<xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>"
    )
    samples, repairs = read_dataset(tmp_path, "auto", NAMES)
    (box,) = samples[0].boxes
    assert box.class_id == 1
    assert (box.cx, box.cy, box.w, box.h) == pytest.approx((0.2, 0.5, 0.2, 0.6))
    assert repairs == Counter(voc_size_from_image=1)


def test_voc_broken_xml(tmp_path):
    image_file(tmp_path / "JPEGImages" / "x.jpg")
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "x.xml").write_text("<annotation>")
    with pytest.raises(DataError, match="x.xml: not a valid Pascal VOC annotation"):
        read_dataset(tmp_path, "voc", NAMES)


def test_yolo_missing_label_is_background_and_partial_box_clipped(tmp_path):
    image_file(tmp_path / "images" / "a.jpg")
    image_file(tmp_path / "images" / "b.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("1 0.95 0.5 0.2 0.2\n")
    samples, repairs = read_dataset(tmp_path, "auto", NAMES)
    (box,) = samples[0].boxes
    assert (box.cx, box.w) == pytest.approx((0.925, 0.15))
    assert samples[1].boxes == ()
    assert repairs == Counter(clipped_boxes=1, background_images=1)


def test_unknown_layout_and_missing_folder(tmp_path):
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        read_dataset(tmp_path, "auto", NAMES)
    with pytest.raises(DataError, match="dataset folder not found"):
        read_dataset(tmp_path / "nope", "auto", NAMES)


@pytest.mark.parametrize(
    ("name", "mode", "fmt", "expected_name"),
    [
        ("rgb.jpg", "RGB", "JPEG", "rgb.jpg"),  # copied as is
        ("fake.jpg", "RGB", "PNG", "fake.png"),  # a PNG named .jpg
        ("alpha.png", "RGBA", "PNG", "alpha.png"),
        ("palette.png", "P", "PNG", "palette.png"),
        ("grey.png", "L", "PNG", "grey.png"),
        ("deep.png", "I;16", "PNG", "deep.png"),
    ],
)
def test_images_normalised_to_rgb(tmp_path, name, mode, fmt, expected_name):
    source = image_file(tmp_path / "in" / name, mode=mode, fmt=fmt)
    repairs = Counter()
    target = formats.write_normalised_image(source, tmp_path, repairs)
    assert target.name == expected_name
    with Image.open(target) as image:
        assert image.mode == "RGB" and image.size == (40, 20)
    assert repairs["reencoded_images"] == (0 if name == "rgb.jpg" else 1)


def test_exif_rotated_photo_is_written_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    source = image_file(tmp_path / "in" / "r.jpg", size=(40, 20), exif=exif)
    target = formats.write_normalised_image(source, tmp_path, Counter())
    with Image.open(target) as image:
        assert image.size == (20, 40)


def test_written_folder_reads_back_strictly(tmp_path):
    write_coco(
        tmp_path / "coco", [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}]
    )
    samples, _ = read_dataset(tmp_path / "coco", "coco", NAMES)
    formats.write_yolo_folder(samples, tmp_path / "out", Counter())
    again = read_yolo_folder(tmp_path / "out", len(NAMES))
    assert [len(s.boxes) for s in again] == [1, 0]
    assert again[0].boxes[0].cx == pytest.approx(samples[0].boxes[0].cx, abs=1e-6)


@pytest.mark.parametrize("fmt", ["yolo", "coco"])
def test_export_round_trip(tiny_yolo_folder, tmp_path, fmt):
    from synthdet.export import export

    count = export(tiny_yolo_folder, fmt, tmp_path / "out", ("apple",))
    assert count == 18
    back, _ = read_dataset(tmp_path / "out", fmt, ("apple",))
    original = read_yolo_folder(tiny_yolo_folder, 1)
    assert [s.image.name for s in back] == [s.image.name for s in original]
    for a, b in zip(back, original, strict=True):
        assert len(a.boxes) == len(b.boxes)
        for box_a, box_b in zip(a.boxes, b.boxes, strict=True):
            assert (box_a.cx, box_a.cy, box_a.w, box_a.h) == pytest.approx(
                (box_b.cx, box_b.cy, box_b.w, box_b.h), abs=0.02
            )


def test_export_names_bad_and_orphan_label_files(tiny_yolo_folder, tmp_path):
    from synthdet.export import export

    label = tiny_yolo_folder / "labels" / "DSC_0000_tree_0.txt"
    label.write_bytes(label.read_text().encode("utf-16"))
    with pytest.raises(DataError, match="DSC_0000_tree_0.txt: not UTF-8 text"):
        export(tiny_yolo_folder, "coco", tmp_path / "out", ("apple",))
    label.write_text("0 0.5 0.5 0.1 0.1\n")
    (tiny_yolo_folder / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"1 label file\(s\) match no image .*: ghost.txt"):
        export(tiny_yolo_folder, "yolo", tmp_path / "out", ("apple",))
    assert not (tmp_path / "out").exists()
