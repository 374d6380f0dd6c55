"""caption: one caption per personalisation image of every subject (template, optionally + BLIP).

Writes `<out>/<subject>.jsonl` with `{"file": ..., "caption": ...}` lines. For a method with a
new token (textual inversion) the captions name the subject by its placeholder only (no class
noun): synthdet.params.methods.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from synthdet.core import data, tracking
from synthdet.core.cli import run_stage
from synthdet.params import Params, methods
from synthdet.personalization import captioning


def run(params: Params, images_dir: Path, out_dir: Path) -> dict[str, list[dict[str, str]]]:
    """Caption `images_dir/<subject>/` (YOLO) for every subject into `out_dir/<subject>.jsonl`.

    Inputs: the personalisation images (one YOLO folder per subject; the labels give the
    `{objects}` phrase). Outputs: `out_dir/<subject>.jsonl` with `{"file", "caption"}` lines;
    returns the rows per subject. Errors: DataError for a textual-inversion caption without its
    placeholder, ModelNotAvailableError for a BLIP model that cannot be loaded.
    """
    p, shared = params.caption, params.shared
    method = params.personalize.method
    stage_params = {"caption": vars(p), "method": method, "subjects": list(shared.subjects)}
    with tracking.stage_run("caption", shared.mlflow_experiment, stage_params) as mlflow_run:
        blip = (
            captioning.BlipCaptioner(p.blip_model, p.max_new_tokens)
            if p.captioner == "blip"
            else None
        )
        result = {}
        with data.atomic_path(out_dir) as tmp:
            tmp.mkdir()
            for name, subject in shared.subjects.items():
                samples = data.read_yolo_folder(images_dir / name, len(shared.class_names))
                described = blip([s.image for s in samples]) if blip else [""] * len(samples)
                rows = [
                    {
                        "file": s.image.name,
                        "caption": methods.subject_caption(
                            p.template,
                            subject.identifier,
                            subject.class_noun,
                            captioning.objects_phrase(s.boxes, shared.class_names)
                            if p.count_objects
                            else "",
                            method,
                            description,
                        ),
                    }
                    for s, description in zip(samples, described, strict=True)
                ]
                data.write_jsonl(tmp / f"{name}.jsonl", rows)
                result[name] = rows
        mlflow_run.log_metrics({"captions": sum(len(rows) for rows in result.values())})
        mlflow_run.log_artifact(out_dir)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--images", type=Path, required=True, help="folder of per-subject YOLO folders"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder of <subject>.jsonl")
    args = parser.parse_args()
    run_stage(lambda params: run(params, args.images, args.out))


if __name__ == "__main__":
    main()
