"""Onboard a dataset folder: the params.yaml edits that make the pipeline run on it.

    python -m synthdet.onboard data/pears                      # print the edits
    python -m synthdet.onboard data/pears --write params.yaml  # apply them, comments kept

The folder is read as `prepare` reads it (any problem stops here, named, as it would stop
prepare), then each edit is derived from it:

- `prepare.raw_dir`, `prepare.format` (told by the label files, as `prepare.format: auto` does);
- `shared.class_names`: a YOLO set's class list (data.yaml, classes.txt...; without one, the
  current names if they cover the class ids, else `class0`, `class1`...), the VOC object names
  (sorted), the COCO categories (by id);
- `shared.subjects`: one subject named after the first class, its class noun the class name,
  the current subject's other settings kept;
- `prepare.group_pattern`: `(.+)<sep>\\d+` (a common stem and a tile index) for the separator
  `_`, `-`, `.` or a space that every stem matches and that makes at least MIN_GROUPS groups,
  fewer than the images; else null (each image its own group);
- `prepare.val_groups` / `test_groups`: round(15 % of the groups) each (at least 1);
- `train_detector.min_images_per_epoch`: null, the train split's image count read at training
  time (a number left from another dataset would not fit); the printed reason gives the count
  of the split these groups give (seeded as prepare splits, `shared.seed`);
- `train_detector.yolo.imgsz`: kept if the median object at it is 8-128 px, else the multiple
  of 32 that `formats.summary.fitting_imgsz` gives (the warning prepare prints);
- `base.init`: `builtin:orchard` if the folder's colours are near the checkpoint's training
  photos (`colour_distance` under ORCHARD_MAX_DISTANCE), else null with `base.vae_steps` 300 and
  `base.unet_steps` 500 (training from scratch, docs/data.md).

Exit status 2 with one line on stderr for a dataset or params problem (SynthdetError).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import SingleQuotedScalarString

from synthdet import formats
from synthdet.core.data import DataError, group_of, split_by_group
from synthdet.core.errors import SynthdetError
from synthdet.formats import summary
from synthdet.formats.survey import Survey, detect_format, survey
from synthdet.formats.yolo import declared_class_names
from synthdet.params import Params, load_params

MIN_GROUPS = 5  # a group pattern that makes fewer groups cannot give train, val and test photos
HELD_OUT_SHARE = summary.SUGGESTED_HELD_OUT_SHARE  # of the groups, each for val and test
SCRATCH_STEPS = {"vae_steps": 300, "unet_steps": 500}  # docs/data.md: the base from scratch
CHECKPOINT = Path("models/builtin/orchard")
# Colour histograms: 8 levels per channel (512 bins) of images shrunk to 64 px; a set's
# histogram is the mean of its images'. Distance: total variation (half the L1 norm), 0-1.
HISTOGRAM_LEVELS = 8
HISTOGRAM_SIDE = 64
MAX_HISTOGRAM_IMAGES = 200  # evenly spaced over a set, to bound the time (the 181 tiles: all)
# Measured (docs/data.md): orchard sets 0.11-0.17 from the checkpoint's photos, other photos
# 0.69-0.91; the threshold lies between.
ORCHARD_MAX_DISTANCE = 0.4
SEPARATORS = ("_", "-", r"\.", " ")  # as regexes


@dataclass
class Edit:
    """One params.yaml edit: the dotted key, the new value and why."""

    key: str
    value: Any
    why: str


def colour_histogram(paths: Sequence[Path]) -> np.ndarray:
    """The mean joint RGB histogram (HISTOGRAM_LEVELS per channel, sums to 1) of up to
    MAX_HISTOGRAM_IMAGES of `paths`, evenly spaced; EXIF orientation does not change it."""
    step = max(1, len(paths) // MAX_HISTOGRAM_IMAGES)
    total = np.zeros(HISTOGRAM_LEVELS**3)
    chosen = list(paths)[::step][:MAX_HISTOGRAM_IMAGES]
    for path in chosen:
        with Image.open(path) as image:
            small = image.convert("RGB").resize((HISTOGRAM_SIDE, HISTOGRAM_SIDE), Image.BILINEAR)
        levels = np.asarray(small, dtype=np.int64) * HISTOGRAM_LEVELS // 256
        bins = (levels[..., 0] * HISTOGRAM_LEVELS + levels[..., 1]) * HISTOGRAM_LEVELS
        counts = np.bincount((bins + levels[..., 2]).ravel(), minlength=HISTOGRAM_LEVELS**3)
        total += counts / counts.sum()
    return total / len(chosen)


def colour_distance(a: Sequence[Path], b: Sequence[Path]) -> float:
    """Total variation distance (0: the same colours, 1: none in common) between the mean
    colour histograms of two image sets."""
    return float(np.abs(colour_histogram(a) - colour_histogram(b)).sum() / 2)


def checkpoint_photos(reference: Path, checkpoint: Path = CHECKPOINT) -> tuple[list[Path], str]:
    """The images under `reference` of the photos `checkpoint` was trained on (its
    photos.txt; tiles `<photo>_<n>`), else every image there (the embedded data/raw: tiles of
    the same orchard and camera, kept out of pretraining only so that its test split stays
    unseen); and which of the two it is, for the printed reason."""
    listed = checkpoint / "photos.txt"
    photos = set(listed.read_text().split()) if listed.is_file() else set()
    images = survey(reference).images if reference.is_dir() else []
    tile = re.compile(r"(.+)_\d+")
    trained = [p for p in images if (m := tile.fullmatch(p.stem)) and m.group(1) in photos]
    if trained:
        return trained, f"{len(trained)} images of its training photos in {reference}"
    return images, f"{len(images)} images of the same orchard in {reference}"


def guess_group_pattern(stems: Sequence[str]) -> str | None:
    """`(.+)<sep>\\d+` for the first separator every stem matches with MIN_GROUPS or more
    groups, fewer than the stems (tiles of photos); None: each image its own group."""
    for separator in SEPARATORS:
        pattern = re.compile(f"(.+){separator}\\d+")
        if all(pattern.fullmatch(stem) for stem in stems):
            groups = {group_of(stem, pattern) for stem in stems}
            if MIN_GROUPS <= len(groups) < len(stems):
                return pattern.pattern
    return None


def dataset_class_names(found: Survey, fmt: str, current: Sequence[str]) -> tuple[list[str], str]:
    """The class names a dataset states (see the module docstring) and where they come from;
    DataError if none."""
    folder = found.folder
    if fmt == "yolo":
        for path, reason in found.skipped.items():
            if reason in ("class list", "dataset description"):
                names = declared_class_names(path)
                if names:
                    return names, f"the class list {path.relative_to(folder)}"
        ids = set()
        for label in found.with_suffix(".txt"):
            for line in label.read_text(errors="replace").splitlines():
                if line.split():
                    try:
                        ids.add(int(float(line.split()[0])))
                    except ValueError:
                        continue  # prepare's reader names the malformed row
        count = max(ids, default=0) + 1
        where = f"YOLO class ids 0-{count - 1}, no class list"
        if count <= len(current):
            return list(current), f"{where}: the current names"
        return [f"class{i}" for i in range(count)], f"{where}: name them"
    if fmt == "voc":
        names = set()
        for path in found.with_suffix(".xml"):
            names.update(
                m.strip()
                for m in re.findall(r"<name>([^<]*)</name>", path.read_text(errors="replace"))
            )
        names.discard("")
    else:
        by_id = {}
        for path in found.with_suffix(".json"):
            try:
                content = json.loads(path.read_text(encoding="utf-8-sig"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(f"{path}: not valid JSON ({exc}); fix or re-export it") from exc
            for category in content.get("categories", []) if isinstance(content, dict) else []:
                if isinstance(category, dict) and "name" in category and "id" in category:
                    by_id[category["id"]] = str(category["name"])
        names = [by_id[key] for key in sorted(by_id, key=str)]
    if not names:
        raise DataError(f"{folder}: no class name in the {formats.LAYOUT[fmt]} labels")
    if fmt == "voc":
        return sorted(names), "the object names of the VOC files"
    return list(names), "the COCO categories, by id"


def subject_name(class_name: str) -> str:
    """A subject name (letters, digits, _ and -) for a class name: `traffic light` ->
    `traffic_light`."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", class_name).strip("_-") or "subject"


def propose(folder: Path, params: Params, reference: Path, checkpoint: Path) -> list[Edit]:
    """The params edits for the dataset at `folder` (see the module docstring); DataError for a
    dataset prepare would refuse."""
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found, or not a folder")
    found = survey(folder)
    fmt = detect_format(folder, found)
    names, named_by = dataset_class_names(found, fmt, params.shared.class_names)
    imported = formats.import_dataset(folder, fmt, names)
    stems = [s.image.stem for s in imported.samples]
    pattern = guess_group_pattern(stems)
    compiled = None if pattern is None else re.compile(pattern)
    groups = len({group_of(stem, compiled) for stem in stems})
    held_out = max(1, round(HELD_OUT_SHARE * groups))
    if groups < 2 * held_out + 1:
        raise DataError(
            f"{folder}: {groups} groups (photos), too few for a train, val and test split"
        )
    split = split_by_group(imported.samples, pattern, held_out, held_out, params.shared.seed)
    summary.check_boxes(imported, split, folder)
    imgsz = params.train_detector.imgsz
    median = imported.median_object_px(imgsz)
    fitting = summary.fitting_imgsz(median, imgsz)
    if names != list(params.shared.class_names):
        subject = subject_name(names[0])
        subjects = [
            Edit(
                "shared.subjects",
                {subject: {"class_noun": names[0]}},
                f"one subject named after the class {names[0]!r} (other settings kept)",
            )
        ]
    else:
        subjects = []  # the classes of the current params: their subjects stay
    edits = [
        Edit("prepare.raw_dir", str(folder), "the dataset folder"),
        Edit("prepare.format", fmt, f"told by the label files: {formats.LAYOUT[fmt]}"),
        Edit("shared.class_names", names, named_by),
        *subjects,
        Edit(
            "prepare.group_pattern",
            pattern,
            f"{groups} groups of tiles (a stem and a tile index)"
            if pattern
            else f"no common stem with a tile index gives {MIN_GROUPS}+ groups: each of the "
            f"{groups} images is its own group",
        ),
        Edit("prepare.val_groups", held_out, f"about {HELD_OUT_SHARE:.0%} of {groups} groups"),
        Edit("prepare.test_groups", held_out, f"about {HELD_OUT_SHARE:.0%} of {groups} groups"),
        Edit(
            "train_detector.min_images_per_epoch",
            None,
            f"the train split's size, read when training: {len(split['train'])} of "
            f"{len(imported.samples)} images",
        ),
        Edit(
            "train_detector.yolo.imgsz",
            fitting,
            f"median object {median:.0f} px at imgsz {imgsz}"
            + (
                f" (kept: {summary.MIN_OBJECT_PX}-{summary.MAX_OBJECT_PX} px)"
                if fitting == imgsz
                else f", {median * fitting / imgsz:.0f} px at {fitting}"
            )
            if median is not None
            else "no boxes",
        ),
    ]
    reference_images, described = checkpoint_photos(reference, checkpoint)
    if reference_images:
        distance = colour_distance([s.image for s in imported.samples], reference_images)
        rule = (
            f"colour distance {distance:.2f} to {described} "
            f"(builtin:orchard if under {ORCHARD_MAX_DISTANCE})"
        )
        fits = distance < ORCHARD_MAX_DISTANCE
    else:
        rule, fits = f"no image of the checkpoint's photos in {reference} to compare with", False
    if fits:
        edits += [
            Edit("base.init", "builtin:orchard", rule),
            *(Edit(f"base.{key}", 0, "the checkpoint as shipped") for key in SCRATCH_STEPS),
        ]
    else:
        edits += [
            Edit("base.init", None, f"{rule}: the base trains from scratch"),
            *(
                Edit(f"base.{key}", steps, "from scratch (docs/data.md)")
                for key, steps in SCRATCH_STEPS.items()
            ),
        ]
    return edits


def _yaml_value(value: Any) -> Any:
    """A value as ruamel writes it in params.yaml's style: lists in flow style, regexes quoted."""
    if isinstance(value, list):
        seq = CommentedSeq(value)
        seq.fa.set_flow_style()
        return seq
    if isinstance(value, str) and ("\\" in value or value[:1] in "([{*&!|>'\"%@`#"):
        return SingleQuotedScalarString(value)
    return value


def _null(representer: Any, _: None) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


def apply_edits(text: str, edits: Sequence[Edit]) -> tuple[str, set[str]]:
    """`text` (params.yaml) with `edits` applied, comments and layout kept (ruamel round trip),
    and the keys whose value changed (the others are left as written). `shared.subjects`
    renames the first subject and sets its class noun, keeping its other settings and comments.
    DataError for a key params.yaml does not have."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # no re-wrapping of long lines
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.representer.add_representer(type(None), _null)  # `null`, as params.yaml writes it
    document = yaml.load(text)
    changed = set()
    for edit in edits:
        *path, last = edit.key.split(".")
        node = document
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise DataError(f"params.yaml: no key {edit.key} to set")
        if edit.key == "shared.subjects":
            ((name, settings),) = edit.value.items()
            old_name, old = next(iter(node[last].items()))
            if old_name == name and all(old.get(k) == v for k, v in settings.items()):
                continue
            old.update(settings)
            subjects = CommentedMap()
            subjects[name] = old
            if old_name in node[last].ca.items:  # the comment on the subject's line
                subjects.ca.items[name] = node[last].ca.items[old_name]
            node[last] = subjects
        elif node[last] == edit.value:
            continue
        else:
            node[last] = _yaml_value(edit.value)
        changed.add(edit.key)
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue(), changed


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return f"'{value}'" if isinstance(value, str) and "\\" in value else str(value)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="the dataset folder (prepare.raw_dir)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="read from")
    parser.add_argument("--write", type=Path, help="write the edited params here")
    parser.add_argument(
        "--reference",
        type=Path,
        default=Path("data/raw"),
        help="images of builtin:orchard's photos, or of the same orchard (base.init)",
    )
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        edits = propose(args.folder, params, args.reference, args.checkpoint)
        text, changed = apply_edits(args.params.read_text(encoding="utf-8-sig"), edits)
        if args.write is not None:
            tmp = args.write.with_name(f".{args.write.name}.onboard")
            tmp.write_text(text, encoding="utf-8")
            try:
                load_params(tmp)  # never leave a params file the pipeline refuses
            except SynthdetError:
                tmp.unlink()
                raise
            tmp.replace(args.write)
    except SynthdetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    width = max(len(edit.key) for edit in edits)
    print(f"onboard {args.folder}: params edits")
    for edit in edits:
        same = "" if edit.key in changed else " (as now)"
        print(f"  {edit.key:<{width}}  {_shown(edit.value)}{same}  # {edit.why}")
    if args.write is None:
        print(f"apply them: python -m synthdet.onboard {args.folder} --write {args.params}")
    else:
        print(f"written to {args.write} (comments kept); then: dvc add {args.folder}")


if __name__ == "__main__":
    main()
