"""`adapter.json`: what the personalize stage trained for a subject, read by generate.

Written next to the weight files by `personalize@<subject>`; `AdapterInfo.read` checks the weight
files against the recorded sha256 and `check_base` refuses an adapter trained on another base.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthdet.core.data import DataError, write_json
from synthdet.diffusion.hashing import files_sha256

ADAPTER_INFO = "adapter.json"
# Keys of the prior-preservation record (personalize's class images) kept at the top level.
PRIOR_KEYS = (
    "prior_preservation",
    "class_prompt",
    "class_images",
    "prior_loss_weight",
    "class_batch_size",
)


@dataclass(frozen=True)
class AdapterInfo:
    """A subject's adapter: the token that names it, how and on what it was trained."""

    subject: str
    identifier: str  # the token naming the subject in prompts: 'sks', or the placeholder '<sks>'
    class_noun: str
    instance_prompt: str
    method: str  # personalize.method (synthdet.params.methods)
    family: str  # 'sd' or 'sdxl'
    pipeline_class: str
    base_model: str
    base_fingerprint: str | None  # folder hash of a local base model; None for hub ids
    vae: str | None
    weight_files: list[str]
    sha256: str  # over weight_files (diffusion.hashing.files_sha256)
    resolution: int
    max_train_steps: int
    train_text_encoder: bool
    lora: dict[str, Any] | None
    textual_inversion: dict[str, Any] | None
    seed: int
    prior: dict[str, Any] = field(default_factory=dict)  # PRIOR_KEYS present in the file

    def to_json(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        return {**{k: v for k, v in row.items() if k != "prior"}, **self.prior}

    def write(self, folder: Path) -> None:
        """Write `folder/adapter.json` atomically (sorted keys, as every synthdet JSON)."""
        write_json(Path(folder) / ADAPTER_INFO, self.to_json())

    @classmethod
    def read(cls, folder: Path) -> AdapterInfo:
        """The adapter of `folder`, after checking its weight files match the recorded sha256."""
        info_file = Path(folder) / ADAPTER_INFO
        if not info_file.is_file():
            raise DataError(f"{folder}: no {ADAPTER_INFO}; run the personalize stage")
        raw = json.loads(info_file.read_text())
        names = {f.name for f in dataclasses.fields(cls)} - {"prior"}
        missing = sorted(names - set(raw))
        if missing:
            raise DataError(
                f"{info_file}: keys {', '.join(missing)} missing; rerun the personalize stage"
            )
        info = cls(**{k: raw[k] for k in names}, prior={k: raw[k] for k in PRIOR_KEYS if k in raw})
        info.verify(folder)
        return info

    def verify(self, folder: Path) -> None:
        """Raise DataError unless the weight files exist and match the recorded sha256."""
        files = self.weight_files
        missing = [name for name in files if not (Path(folder) / name).is_file()]
        if not files or missing or files_sha256(folder, files) != self.sha256:
            raise DataError(
                f"{folder}: weight files missing ({', '.join(missing) or 'none listed'}) or "
                f"not matching the sha256 in {Path(folder) / ADAPTER_INFO}; rerun the "
                "personalize stage"
            )

    def check_base(self, folder: Path, base_model: str) -> None:
        """Refuse an adapter trained on another `personalize.base_model`."""
        if self.base_model != base_model:
            raise DataError(
                f"{folder}: the adapter was trained on {self.base_model!r}, but "
                f"personalize.base_model is {base_model!r}; rerun the personalize stage"
            )
