"""Typed, frozen parameters parsed from params.yaml.

Every section is a frozen dataclass. Parsing rejects unknown keys (suggesting the closest name),
missing keys, wrong types and out-of-range values with a message that names the key, every such
problem at once, so a typo in `dvc exp run -S ...` fails before any work starts. params.yaml is
the one source of the values: a key it lacks is missing, not defaulted (the few code defaults
equal its values). Library option blocks (ultralytics train args, peft LoraConfig) are typed
`dict`, passed on unchanged, and their keys checked against the libraries' own schemas.

The package: `parsing` (the type-checking parser, `ParamsError`, reading the YAML, the library
blocks' schemas), one module of section dataclasses per phase (`data`: shared, prepare;
`diffusion`: base, caption, class_images, personalize; `generate`; `detection`:
annotate_with_baseline, train_detector, evaluate, few_shot), `checks` (checks across sections),
and here `Params` (every section) and `load_params`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml.error import YAMLError

from synthdet.params.checks import check_across_sections
from synthdet.params.data import PrepareParams, SharedParams, SubjectParams
from synthdet.params.detection import (
    DETECTOR_PRESETS,
    FEW_SHOT_SOURCES,
    AnnotateParams,
    CopyPasteParams,
    EvaluateParams,
    FewShotParams,
    TrainDetectorParams,
)
from synthdet.params.diffusion import (
    BaseParams,
    CaptionParams,
    ClassImagesParams,
    PersonalizeParams,
    TextualInversionParams,
)
from synthdet.params.generate import (
    GenerateFilterParams,
    GenerateParams,
    GenerateSubjectParams,
    img2img_steps,
)
from synthdet.params.parsing import ParamsError, parse_section, read_yaml

__all__ = [
    "DETECTOR_PRESETS",
    "FEW_SHOT_SOURCES",
    "AnnotateParams",
    "BaseParams",
    "CaptionParams",
    "ClassImagesParams",
    "CopyPasteParams",
    "EvaluateParams",
    "FewShotParams",
    "GenerateFilterParams",
    "GenerateParams",
    "GenerateSubjectParams",
    "Params",
    "ParamsError",
    "PersonalizeParams",
    "PrepareParams",
    "SharedParams",
    "SubjectParams",
    "TextualInversionParams",
    "TrainDetectorParams",
    "img2img_steps",
    "load_params",
    "parse_params",
    "parse_section",
]


@dataclass(frozen=True)
class Params:
    shared: SharedParams
    prepare: PrepareParams
    base: BaseParams
    caption: CaptionParams
    class_images: ClassImagesParams
    personalize: PersonalizeParams
    generate: GenerateParams
    annotate_with_baseline: AnnotateParams
    train_detector: TrainDetectorParams
    few_shot: FewShotParams
    evaluate: EvaluateParams

    def __post_init__(self) -> None:
        check_across_sections(self)

    @property
    def base_prompt(self) -> str:
        """The one prompt builtin:tiny's UNet is pretrained on: class_images.prompt with the
        subjects' class nouns (distinct, in shared.subjects order, joined with ' and '): the
        base sees every train image, whichever subject it shows, so the prompt names every
        class, and with one subject it is exactly the prompt class images are drawn from
        ("a photo of apple tree")."""
        nouns = dict.fromkeys(subject.class_noun for subject in self.shared.subjects.values())
        return self.class_images.prompt.format(class_noun=" and ".join(nouns))

    def subject(self, name: str) -> SubjectParams:
        """`shared.subjects.<name>`; ParamsError naming the subjects if there is none."""
        if name not in self.shared.subjects:
            raise ParamsError(
                f"params: no subject 'shared.subjects.{name}'; subjects: "
                f"{', '.join(self.shared.subjects)}"
            )
        return self.shared.subjects[name]


def parse_params(raw: Any) -> Params:
    return parse_section(Params, raw)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = read_yaml(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError as exc:
        raise ParamsError(f"params: file {path} not found") from exc
    except UnicodeDecodeError as exc:
        raise ParamsError(f"params: {path} is not UTF-8 text ({exc}); save it as UTF-8") from exc
    except YAMLError as exc:  # a repeated key too
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ParamsError(f"params: {path} is not valid YAML: {problem}{where}") from exc
    return parse_params(raw)
