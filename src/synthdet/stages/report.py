"""report: the one-page Markdown report of a run (`metrics/report.md`, synthdet.analysis.report).

Reads only metrics files of earlier stages (prepare, generate, annotate-with-baseline,
copy-paste, pseudo-label, check-images, evaluate) and params, so a change of wording reruns
this stage alone. Also writes `metrics/environment.json`, what the run's float bits depend on
besides code, data and params (`tracking.environment`: package versions, Python, threads, device,
CPU model and vector extensions, torch's and numpy's kernel builds, kernel-switching variables).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from synthdet.analysis import report
from synthdet.artifacts.evaluation import EVALUATION, Evaluation
from synthdet.artifacts.metrics import (
    ANNOTATE_METRICS,
    COPY_PASTE_METRICS,
    DRAW_METRICS,
    HANDFUL_METRICS,
    IMAGES_METRICS,
    PREPARE_METRICS,
    PSEUDO_METRICS,
    read_annotate_metrics,
    read_extra_images_metrics,
    read_metrics_json,
    read_prepare_metrics,
)
from synthdet.core import tracking
from synthdet.core.cli import run_stage
from synthdet.core.data import draw_folder, write_json, write_text
from synthdet.detectors import variants
from synthdet.params import Params

NOISE = Path("protocol/noise.json")  # benchmarks/protocol.py --summarise, under metrics/


def run(params: Params, metrics_dir: Path) -> str:
    """Render `metrics_dir/report.md` from the metrics files in `metrics_dir` (the detector
    protocol's noise table when `metrics_dir/protocol/noise.json` exists); return it. The data
    rows (handful, generated, copy-paste, pseudo-labelled images, the annotator) are those of
    the first handful draw of few_shot.draws (`metrics_dir/draws/draw<d>/`); the scores cover
    every draw."""
    noise_file = metrics_dir / NOISE
    noise = read_metrics_json(noise_file) if noise_file.is_file() else None
    draw_dir = draw_folder(metrics_dir / DRAW_METRICS, params.few_shot.draws[0])
    extras = {
        "copy-paste (handful crops)": read_extra_images_metrics(draw_dir / COPY_PASTE_METRICS),
        "pseudo-labelled real": read_extra_images_metrics(draw_dir / PSEUDO_METRICS),
    }
    configured = variants.configured(params)
    with tracking.stage_run("report", params.shared.mlflow_experiment, {}) as mlflow_run:
        page = report.render(
            params,
            Evaluation.read(metrics_dir / EVALUATION),
            read_metrics_json(draw_dir / IMAGES_METRICS),
            read_prepare_metrics(metrics_dir / PREPARE_METRICS),
            read_annotate_metrics(draw_dir / ANNOTATE_METRICS),
            extras,
            configured,
            variants.comparisons(configured),
            noise=noise,
            handful=read_extra_images_metrics(draw_dir / HANDFUL_METRICS),
        )
        write_text(metrics_dir / "report.md", page)
        write_json(metrics_dir / "environment.json", tracking.environment())
        mlflow_run.log_artifact(metrics_dir / "report.md")
    print(f"report: {metrics_dir / 'report.md'} ({len(page.splitlines())} lines)")
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=Path, required=True, help="the run's metrics folder")
    args = parser.parse_args()
    run_stage(lambda params: run(params, args.metrics))


if __name__ == "__main__":
    main()
