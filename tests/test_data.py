import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from synthdet import formats
from synthdet.core import data
from synthdet.core.data import DataError


def samples_of(folder):
    return data.read_yolo_folder(folder, num_classes=1)


def test_reads_valid_folder(tiny_yolo_folder):
    samples = samples_of(tiny_yolo_folder)
    assert len(samples) == 18
    assert all(1 <= len(s.boxes) <= 3 for s in samples)


@pytest.mark.parametrize(
    ("label", "message"),
    [
        (
            "0 0.5 0.5 0.1\n",
            "expected 'class cx cy w h' \\(5 numbers separated by spaces\\) or a polygon "
            "'class x1 y1 x2 y2 x3 y3 \\.\\.\\.', got 4 field\\(s\\) in '0 0.5 0.5 0.1'",
        ),
        ("0 0.5 0.5 0.1 x\n", "not a number"),
        ("1 0.5 0.5 0.1 0.1\n", "class id 1 is not in the 1 class names"),
        ("0 0.5 0.5 0.0 0.1\n", "box has zero or negative size"),
        ("0 1.5 0.5 0.1 0.1\n", "box centre \\(1.5000, 0.5000\\) lies outside the image"),
    ],
)
def test_bad_label_names_file_and_line(tiny_yolo_folder, label, message):
    path = tiny_yolo_folder / "labels" / "DSC_0000_tree_0.txt"
    path.write_text("0 0.5 0.5 0.1 0.1\n" + label)
    with pytest.raises(DataError, match=f"{re.escape(str(path))}:2: {message}"):
        samples_of(tiny_yolo_folder)


def test_zero_byte_image(tiny_yolo_folder):
    image = tiny_yolo_folder / "images" / "DSC_0001_tree_1.jpg"
    image.write_bytes(b"")
    with pytest.raises(DataError, match=f"{re.escape(str(image))}: empty file"):
        samples_of(tiny_yolo_folder)


def test_truncated_jpeg(tiny_yolo_folder):
    image = tiny_yolo_folder / "images" / "DSC_0001_tree_1.jpg"
    image.write_bytes(image.read_bytes()[:300])
    with pytest.raises(DataError, match=f"{re.escape(str(image))}: corrupt or truncated"):
        samples_of(tiny_yolo_folder)


def test_not_an_image(tiny_yolo_folder):
    image = tiny_yolo_folder / "images" / "DSC_0001_tree_1.jpg"
    image.write_text("hello")
    with pytest.raises(DataError, match=f"{re.escape(str(image))}: not an image"):
        samples_of(tiny_yolo_folder)


def test_missing_label_and_duplicate_stem(tiny_yolo_folder):
    (tiny_yolo_folder / "labels" / "DSC_0002_tree_0.txt").unlink()
    with pytest.raises(DataError, match="no label file"):
        samples_of(tiny_yolo_folder)
    (tiny_yolo_folder / "labels" / "DSC_0002_tree_0.txt").write_text("")
    shutil.copy(
        tiny_yolo_folder / "images" / "DSC_0002_tree_0.jpg",
        tiny_yolo_folder / "images" / "DSC_0002_tree_0.png",
    )
    with pytest.raises(DataError, match="duplicate file stem"):
        samples_of(tiny_yolo_folder)


def test_empty_dataset(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="no images"):
        samples_of(tmp_path)
    with pytest.raises(DataError, match="expected an images/ folder"):
        samples_of(tmp_path / "missing")


def test_split_keeps_groups_together_and_is_seeded(tiny_yolo_folder):
    samples = samples_of(tiny_yolo_folder)
    split = data.split_by_group(samples, r"(.+)_\d+", 1, 2, seed=3)
    pattern = re.compile(r"(.+)_\d+")

    def groups(name):
        return {data.group_of(s.image.stem, pattern) for s in split[name]}

    assert len(groups("val")) == 1 and len(groups("test")) == 2 and len(groups("train")) == 3
    assert not groups("train") & groups("val")
    assert not groups("train") & groups("test")
    assert not groups("val") & groups("test")
    assert list(split) == ["train", "val", "test"]
    again = data.split_by_group(samples, r"(.+)_\d+", 1, 2, seed=3)
    assert again == split


def test_split_errors(tiny_yolo_folder):
    samples = samples_of(tiny_yolo_folder)
    with pytest.raises(DataError, match="does not match prepare.group_pattern"):
        data.split_by_group(samples, r"IMG_(\d+)", 1, 1, seed=0)
    with pytest.raises(DataError, match="only 6 groups"):
        data.split_by_group(samples, r"(.+)_\d+", 3, 3, seed=0)


def test_too_few_subject_images_says_what_to_change():
    """A new user's dataset of 4 photos with the default `images: 8`."""
    train = [data.Sample(Path(f"pear-{i}.jpg"), ()) for i in range(4)]
    message = (
        "shared.subjects.apple_tree: images=8 but only 4 train images match stem_pattern '.*'; "
        "lower shared.subjects.apple_tree.images, widen its stem_pattern, or give the train "
        "split more groups (lower prepare.val_groups / test_groups)"
    )
    with pytest.raises(DataError, match=re.escape(message)):
        data.subject_images(train, "apple_tree", ".*", 8, seed=0)


def test_atomic_path_keeps_old_output_on_failure(tmp_path):
    target = tmp_path / "out"
    data.write_text(target / "a.txt", "old")
    with pytest.raises(RuntimeError), data.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_path_replaces_directory(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("x")
    with data.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_atomic_path_removes_leftovers_of_a_killed_run(tmp_path):
    leftover = tmp_path / ".out.abc123" / "out"
    leftover.mkdir(parents=True)
    data.write_text(tmp_path / "out", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_dataset_yaml_paths_relative_to_its_folder_or_to_root(tmp_path):
    written = data.write_dataset_yaml(tmp_path, ["apple", "pear"], "images", "images")
    assert written == tmp_path / "dataset.yaml"
    assert written.read_text() == ("train: images\nval: images\nnames:\n  0: apple\n  1: pear\n")
    data.write_dataset_yaml(tmp_path, ["apple"], ["a/images", "b/images"], "v", "t", root=tmp_path)
    assert written.read_text() == (
        f"path: {tmp_path}\ntrain:\n- a/images\n- b/images\nval: v\ntest: t\nnames:\n  0: apple\n"
    )


def test_linked_yolo_folder_reads_like_its_source_and_writes_nothing_there(tiny_yolo_folder):
    before = sorted(p.name for p in tiny_yolo_folder.rglob("*"))
    view = data.link_yolo_folder(tiny_yolo_folder, tiny_yolo_folder.parent / "all")
    assert samples_of(view) == [
        data.Sample(view / "images" / s.image.name, s.boxes) for s in samples_of(tiny_yolo_folder)
    ]
    assert not (view / "images").is_symlink() and (view / "labels").is_dir()
    chosen = data.list_images(tiny_yolo_folder / "images")[:2]
    subset = data.link_yolo_folder(tiny_yolo_folder, tiny_yolo_folder.parent / "two", chosen)
    assert [s.image.name for s in samples_of(subset)] == [p.name for p in chosen]
    assert all(p.is_symlink() for p in subset.rglob("*.*"))
    assert sorted(p.name for p in tiny_yolo_folder.rglob("*")) == before


def test_new_yolo_folder_replaces_the_old_one_only_when_complete(tmp_path):
    out, source = tmp_path / "extra", tmp_path / "a.png"
    Image.new("RGB", (8, 8), "red").save(source)
    box = data.Box(0, 0.5, 0.5, 0.25, 0.25)
    with formats.new_yolo_folder(out) as folder:
        folder.add("copied.png", source, [box])
        folder.add("drawn.png", Image.new("RGB", (8, 8), "blue"), [])
    samples = {s.image.name: s.boxes for s in data.read_yolo_folder(out, 1)}
    assert samples == {"copied.png": (box,), "drawn.png": ()}
    assert (out / "images" / "copied.png").read_bytes() == source.read_bytes()
    with pytest.raises(RuntimeError), formats.new_yolo_folder(out) as folder:
        folder.add("half.png", source, [])
        raise RuntimeError("killed half-way")
    assert sorted(p.name for p in (out / "images").iterdir()) == ["copied.png", "drawn.png"]
