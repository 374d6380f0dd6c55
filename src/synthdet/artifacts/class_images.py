"""`class_images.json`: what the class-images stage drew for a subject's prior preservation."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from synthdet.core.data import DataError, write_json

CLASS_IMAGES_INFO = "class_images.json"
IMAGES = "images"  # the folder of `<index:05d>.png` next to the info file


@dataclass(frozen=True)
class ClassImagesInfo:
    class_noun: str
    prompt: str
    count: int
    base_model: str
    vae: str | None
    # as used: None when classifier-free guidance was off (guidance_scale <= 1), which
    # diffusers runs without encoding the negative prompt
    negative_prompt: str | None = None
    guidance_scale: float | None = None
    prompt_seen: str | None = None  # what the text encoder read of `prompt` (77 tokens at most)

    def write(self, folder: Path) -> None:
        write_json(Path(folder) / CLASS_IMAGES_INFO, dataclasses.asdict(self))

    @classmethod
    def read(cls, folder: Path) -> ClassImagesInfo:
        info_file = Path(folder) / CLASS_IMAGES_INFO
        if not info_file.is_file():
            raise DataError(f"{folder}: no {CLASS_IMAGES_INFO}; run the class-images stage")
        return cls(**json.loads(info_file.read_text()))

    def verify(self, folder: Path, class_noun: str, base_model: str) -> None:
        """Raise DataError if the images show another class or come from another base model."""
        if self.class_noun != class_noun or self.base_model != base_model:
            raise DataError(
                f"{folder}: class images of {self.class_noun!r} by {self.base_model!r}, but "
                f"the subject is a {class_noun!r} on {base_model!r}; they are "
                "stale, rerun the class-images stage"
            )

    @staticmethod
    def images(folder: Path) -> list[Path]:
        return sorted((Path(folder) / IMAGES).glob("*.png"))
