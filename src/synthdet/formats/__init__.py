"""Users' datasets in: YOLO txt, COCO JSON and Pascal VOC XML, as they really come.

Everything is read into `Sample`s (an image path and YOLO boxes); `prepare` then writes the
internal layout (images/ + labels/, RGB, upright). Every file under the dataset folder is used,
repaired and counted, skipped by name with a printed note, or named in an error:

- **Layouts.** Images anywhere under the folder, at any depth, through symlinked folders too
  (`images/`, `images/<split>/`, `<split>/images/`, `JPEGImages/`, beside their labels); a label
  or VOC file is paired with the image of the same file stem wherever both sit (stems are unique,
  the prepared splits are flat). COCO files anywhere (beside `images/`, in `annotations/`, one
  per split); a `file_name` with a folder prefix, Windows separators or URL escapes is found by
  its longest unique path suffix. The format is told by the label files' suffix.
- **Skipped, named in the summary** (`skipped_files`): documentation (README, LICENSE, *.md),
  dataset descriptions and class lists (data.yaml, classes.txt, *.names, notes.json: the class
  names are checked against shared.class_names for YOLO), split lists (any *.txt listing image
  paths), VOC `ImageSets/` and segmentation masks, ultralytics *.cache, hidden and system files
  and folders (`__MACOSX/`, a NAS's `@eaDir/`); never an image or a label file named after one
  (`license_plate_1.txt`).
- **Repairs** (`repairs.*`): images with no label are background; boxes partly outside the
  image are clipped; YOLO segmentation polygons, and COCO polygons without a bbox, become their
  enclosing box; RGBA, palette, greyscale, 16-bit, TIFF and .jfif / .mpo images, files whose
  content is not what their suffix says and EXIF-rotated photos are re-encoded upright as RGB.
  Labels refer to the upright image, as annotation tools display it; a missing or 0x0 declared
  size (VOC, COCO) is read from the upright image; a label file whose stem differs from its
  image's only in letter case, or that is named after the whole image file (`x.jpg.txt`), is
  paired and counted.
- **Policies** (`dropped.*`): COCO `iscrowd` regions are ignored, as COCO evaluation and
  ultralytics' converter do; VOC `difficult` objects are dropped, as ultralytics' VOC converter
  does; a box repeated in one image is kept once, as ultralytics does; images under 10 px are
  dropped (ultralytics' minimum); an image whose pixels repeat another's under a second name
  (as written: upright RGB) is dropped when the labels agree (an error when they differ), so no
  copy can straddle splits.
- **Errors** name the file, what is wrong and the fix: a declared size that differs from the
  upright image, an unreadable, truncated or oversized image, a label file in another encoding
  (or with NUL bytes), pixel coordinates in a YOLO row, a label or annotation file that matches
  no image, a photo in a format not read (HEIC, GIF, RAW...), a link to nothing, a file no
  reader uses.

The package: `survey` (the files of the folder, the format), `records` (an image as an
annotation describes it, annotation files paired by stem), the readers `yolo`, `coco` and `voc`,
`importer` (the whole import), `writing` (the internal YOLO layout, COCO JSON) and `summary`
(prepare's checks of the split, its warnings and printed summary).
"""

from synthdet.formats.importer import DROP_KEYS, LAYOUT, REPAIR_KEYS, Imported, import_dataset
from synthdet.formats.writing import (
    coco_dict,
    new_yolo_folder,
    write_normalised_image,
    write_yolo_folder,
)

__all__ = [
    "DROP_KEYS",
    "LAYOUT",
    "REPAIR_KEYS",
    "Imported",
    "coco_dict",
    "import_dataset",
    "new_yolo_folder",
    "write_normalised_image",
    "write_yolo_folder",
]
