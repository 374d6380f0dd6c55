"""The stage metrics other stages read, as typed values (synthdet.artifacts.metrics)."""

import json

import pytest

from synthdet.artifacts.metrics import (
    ANNOTATE_METRICS,
    AnnotateMetrics,
    AnnotatorQuality,
    read_annotate_metrics,
    read_prepare_metrics,
)
from synthdet.core.data import DataError


def test_annotate_metrics_keep_the_values_and_miss_as_none(tmp_path):
    path = tmp_path / ANNOTATE_METRICS
    raw = {
        "images": 4,
        "boxes": 0,
        "empty_label_set": True,
        "source_images": 4,  # written, read by nobody
        "annotator.precision": None,
        "annotator.recall": 0.5,
        "annotator.val_images": 3,
    }
    path.write_text(json.dumps(raw))
    read = read_annotate_metrics(path)
    assert (read.images, read.boxes, read.empty_label_set) == (4, 0, True)
    assert read.mean_confidence is None and read.corrected_images == 0
    assert read.annotator == AnnotatorQuality(precision=None, recall=0.5, val_images=3)
    assert AnnotateMetrics.from_dict({}) == AnnotateMetrics()


def test_unreadable_metrics_name_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match=r"bad\.json: cannot read the metrics JSON"):
        read_annotate_metrics(tmp_path / "bad.json")
    with pytest.raises(DataError, match=r"missing\.json: cannot read the metrics JSON"):
        read_prepare_metrics(tmp_path / "missing.json")
