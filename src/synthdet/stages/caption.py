"""caption: one caption per personalisation image (identifier template, optionally + BLIP)."""

from __future__ import annotations

import argparse
from pathlib import Path

from synthdet import captioning, data, tracking
from synthdet.cli import run_stage
from synthdet.params import Params


def run(params: Params, images_dir: Path, out_path: Path) -> list[dict[str, str]]:
    p, shared = params.caption, params.shared
    with tracking.stage_run("caption", shared.mlflow_experiment, {"caption": vars(p)}) as t:
        samples = data.read_yolo_folder(images_dir, len(shared.class_names))
        captions = [
            captioning.template_caption(
                p.template,
                shared.identifier,
                shared.class_noun,
                captioning.objects_phrase(s.boxes, shared.class_names) if p.count_objects else "",
            )
            for s in samples
        ]
        if p.captioner == "blip":
            blip = captioning.BlipCaptioner(p.blip_model, p.max_new_tokens)
            described = blip([s.image for s in samples])
            captions = [
                f"{caption}, {text}" if text else caption
                for caption, text in zip(captions, described, strict=True)
            ]
        rows = [
            {"file": s.image.name, "caption": c} for s, c in zip(samples, captions, strict=True)
        ]
        data.write_jsonl(out_path, rows)
        t.log_metrics({"captions": len(rows)})
        t.log_artifact(out_path)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=Path, required=True, help="YOLO folder to caption")
    parser.add_argument("--out", type=Path, required=True, help="captions JSONL")
    args = parser.parse_args()
    run_stage(lambda params: run(params, args.images, args.out))


if __name__ == "__main__":
    main()
