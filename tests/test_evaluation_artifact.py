"""evaluation.json as the typed Evaluation: the same flat keys on disk, errors naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthdet.artifacts.evaluation import Evaluation
from synthdet.core.data import DataError
from tests.conftest import REPO

COMMITTED = REPO / "metrics" / "evaluation.json"


def committed() -> dict:
    return json.loads(COMMITTED.read_text())


def test_the_committed_file_round_trips_exactly(tmp_path: Path) -> None:
    evaluation = Evaluation.read(COMMITTED)
    assert evaluation.to_flat() == committed()
    evaluation.write(tmp_path / "evaluation.json")
    assert (tmp_path / "evaluation.json").read_text() == COMMITTED.read_text()
    # flags are written as the 0/1 MLflow logs, not as JSON booleans
    flat = evaluation.to_flat()
    assert type(flat["real.empty_label_set"]) is int and type(flat["real.seeds"]) is int
    record = evaluation.variant("handful-copy-paste")
    assert record.map50_95.mean == 0.168405 and record.map50_95.std is None  # one seed
    assert record.real_image_equivalent.images is None  # one seed: not identifiable
    assert record.real_image_equivalent.reason.startswith("not identifiable: 1 seed")
    compared = evaluation.comparison("handful-synthetic", "handful-pseudo")
    assert (compared.diff_map50_95, compared.seeds, compared.p_value) == (0.068362, 1, None)


@pytest.mark.parametrize(
    "key",
    [
        "real.map50_95",
        "handful.map_large_std",
        "handful-synthetic.real_image_equivalent_low",
        "synthetic-vs-real.p_holm",
        "chance.map75",
        "test_boxes",
    ],
)
def test_a_removed_key_is_named(tmp_path: Path, key: str) -> None:
    raw = committed()
    del raw[key]
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=rf"^{path}: key '{key}' missing; .*rerun evaluate"):
        Evaluation.read(path)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("real.seeds", 1.5, "a count"),
        ("real.map50", None, "a number"),
        ("handful.empty_label_set", 2, "0 or 1"),
        ("synthetic.real_image_equivalent_bound", "beyond", "null or one of"),
        ("handful-synthetic-vs-handful.diff_map50_95", "0.1", "a number"),
    ],
)
def test_a_mistyped_value_is_named(key: str, value: object, expected: str) -> None:
    raw = committed() | {key: value}
    with pytest.raises(DataError, match=rf"key '{key}' is .*, expected {expected}"):
        Evaluation.from_flat(raw)


def test_a_renamed_or_unknown_key_is_refused() -> None:
    raw = committed()
    raw["real.map50_95_mean"] = raw.pop("real.map50_95")
    with pytest.raises(DataError, match=r"key 'real.map50_95' missing"):
        Evaluation.from_flat(raw)
    with pytest.raises(DataError, match=r"evaluation.json: unknown keys 'real.extra_score'"):
        Evaluation.from_flat(committed() | {"real.extra_score": 0.1})
    # an equivalent for some variants only: the others' are missing, not silently None
    raw = committed()
    del raw["real.real_image_equivalent"], raw["real.real_image_equivalent_low"]
    del raw["real.real_image_equivalent_high"], raw["real.real_image_equivalent_bound"]
    with pytest.raises(DataError, match=r"key 'real.real_image_equivalent' missing"):
        Evaluation.from_flat(raw)


def test_an_unreadable_file_names_itself(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"{tmp_path / 'none.json'}: cannot read"):
        Evaluation.read(tmp_path / "none.json")
    path = tmp_path / "list.json"
    path.write_text("[]")
    with pytest.raises(DataError, match="not a JSON object"):
        Evaluation.read(path)


def test_a_variant_or_comparison_evaluate_did_not_make_is_an_error() -> None:
    evaluation = Evaluation.read(COMMITTED)
    with pytest.raises(DataError, match=r"no variant 'mixed' \(it has .*handful.*\); rerun"):
        evaluation.variant("mixed")
    with pytest.raises(DataError, match=r"no comparison mixed-vs-real"):
        evaluation.comparison("mixed", "real")
