"""`python -m synthdet.onboard`: the params edits it proposes are accepted as they are."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from synthdet import onboard
from synthdet.params import load_params
from synthdet.stages import prepare

REPO = Path(__file__).resolve().parents[1]


def voc_web_photos(root: Path, count: int = 20) -> Path:
    """`count` 96x72 'web photos' pear-<n>.jpg of sky and grass, one 48x40 px pear each."""
    for n in range(1, count + 1):
        image = Image.new("RGB", (96, 72), (90, 140, 230 - 3 * n))
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 50, 95, 71), fill=(60, 170, 60))
        x0, y0 = 10 + n, 12
        draw.ellipse((x0, y0, x0 + 48, y0 + 40), fill=(200, 190, 40))
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        image.save(root / "JPEGImages" / f"pear-{n}.jpg", quality=95)
        (root / "Annotations").mkdir(exist_ok=True)
        (root / "Annotations" / f"pear-{n}.xml").write_text(
            "<annotation><size><width>96</width><height>72</height></size><object>"
            f"<name>pear</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x0 + 48}</xmax><ymax>{y0 + 40}</ymax></bndbox></object></annotation>"
        )
    return root


def orchard_tiles(root: Path, photos: int = 8, tiles: int = 3) -> Path:
    """YOLO tiles <photo>_<k>.jpg cut (160 px) from the embedded orchard tiles, one 20 px box
    each, without a class list."""
    sources = sorted((REPO / "data/raw/images").glob("*.jpg"))
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for n in range(photos * tiles):
        with Image.open(sources[n * 7]) as source:
            source.crop((0, 0, 160, 160)).save(root / "images" / f"row{n // tiles}_{n % tiles}.jpg")
        (root / "labels" / f"row{n // tiles}_{n % tiles}.txt").write_text("0 0.5 0.5 0.125 0.125\n")
    return root


def onboarded(folder: Path, tmp_path: Path, capsys) -> tuple[Path, str]:
    """params.yaml copied and edited by `onboard --write`; the copy and what was printed."""
    written = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", written)
    onboard.main(
        [
            str(folder),
            "--params",
            str(written),
            "--write",
            str(written),
            "--reference",
            str(REPO / "data/raw"),
            "--checkpoint",
            str(REPO / onboard.CHECKPOINT),
        ]
    )
    return written, capsys.readouterr().out


def comments(path: Path) -> list[str]:
    return [line[line.index("#") :] for line in path.read_text().splitlines() if "#" in line]


def prepared_train_images(written: Path, folder: Path, tmp_path: Path) -> int:
    """Run prepare with the written params on `folder`; its train split's image count."""
    stats = prepare.run(load_params(written), folder, tmp_path / "out", tmp_path / "m.json")
    return stats["train.images"]


def test_voc_web_photos_get_their_class_no_groups_and_a_base_from_scratch(tmp_path, capsys):
    folder = voc_web_photos(tmp_path / "pears")
    written, out = onboarded(folder, tmp_path, capsys)
    p = load_params(written)
    assert p.shared.class_names == ("pear",)
    assert list(p.shared.subjects) == ["pear"]
    assert p.shared.subjects["pear"].class_noun == "pear"
    assert (p.prepare.raw_dir, p.prepare.format, p.prepare.group_pattern) == (
        str(folder),
        "voc",
        None,
    )
    assert (p.prepare.val_groups, p.prepare.test_groups) == (3, 3)  # 15 % of 20 images
    assert (p.base.init, p.base.vae_steps, p.base.unet_steps) == (None, 300, 500)
    assert p.train_detector.imgsz == 192  # pears of 44 px at 96 px: 88 px at 192
    assert "median object 88 px at imgsz 192 (kept: 8-128 px)" in out
    assert "(builtin:orchard if under 0.4): the base trains from scratch" in out
    assert comments(written) == comments(REPO / "params.yaml")
    assert prepared_train_images(written, folder, tmp_path) == 14
    assert p.train_detector.min_images_per_epoch is None  # the split's 14, read when training
    assert "the train split's size, read when training: 14 of 20 images" in out


def test_yolo_orchard_tiles_get_groups_the_orchard_checkpoint_and_keep_their_class(
    tmp_path, capsys
):
    folder = orchard_tiles(tmp_path / "orchard")
    written, out = onboarded(folder, tmp_path, capsys)
    p = load_params(written)
    default = load_params(REPO / "params.yaml")
    assert p.shared.class_names == ("apple",)  # no class list: the current names cover id 0
    assert p.shared.subjects == default.shared.subjects
    assert (p.prepare.format, p.prepare.group_pattern) == ("yolo", r"(.+)_\d+")
    assert (p.prepare.val_groups, p.prepare.test_groups) == (1, 1)  # 15 % of 8 photos
    assert (p.base.init, p.base.vae_steps, p.base.unet_steps) == ("builtin:orchard", 0, 0)
    assert p.train_detector.imgsz == 192
    assert "prepare.group_pattern" in out and "8 groups of tiles" in out
    assert prepared_train_images(written, folder, tmp_path) == 18
    assert p.train_detector.min_images_per_epoch is None
    assert "read when training: 18 of" in out


def test_tiny_objects_get_the_imgsz_that_shows_them(tmp_path, capsys):
    folder = orchard_tiles(tmp_path / "orchard")
    for label in (folder / "labels").glob("*.txt"):
        label.write_text("0 0.5 0.5 0.02 0.02\n")  # 3 px of 160: 3.8 px at 192
    written, out = onboarded(folder, tmp_path, capsys)
    assert load_params(written).train_detector.imgsz == 416  # 8.3 px
    assert "median object 4 px at imgsz 192, 8 px at 416" in out


@pytest.mark.parametrize(
    ("stems", "pattern"),
    [
        ([f"DSC_{p}_{t}" for p in range(5) for t in range(3)], r"(.+)_\d+"),
        ([f"tree-{p}-{t}" for p in range(6) for t in range(2)], r"(.+)-\d+"),
        ([f"DSC_{p}_{t}" for p in range(4) for t in range(3)], None),  # 4 groups: too few
        ([f"pear-{n}" for n in range(30)], None),  # one group "pear": web photos
        ([f"img{n}" for n in range(30)], None),  # no separator
    ],
)
def test_group_pattern_guess(stems, pattern):
    assert onboard.guess_group_pattern(stems) == pattern


def test_a_dataset_prepare_refuses_is_named_not_onboarded(tmp_path, capsys):
    folder = voc_web_photos(tmp_path / "pears", count=6)
    (folder / "Annotations" / "pear-2.xml").write_text("<annotation>")
    written = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", written)
    with pytest.raises(SystemExit) as exit_:
        onboard.main([str(folder), "--params", str(written), "--write", str(written)])
    assert exit_.value.code == 2
    assert "pear-2.xml: not a valid Pascal VOC annotation" in capsys.readouterr().err
    assert written.read_text() == (REPO / "params.yaml").read_text()
