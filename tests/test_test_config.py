"""The tests' params file, tests/config/params.yaml, against the project's params.yaml.

Tests take their params from it (conftest `test_params`), so a changed default in params.yaml
(say generate.strength) changes no behaviour test. The price is drift: this test keeps the file
exactly "params.yaml plus the keys its header lists", so a new key, a changed default or a
tiny value nobody listed fails here, naming the key, instead of tests silently running on
values the project no longer has.
"""

from __future__ import annotations

from typing import Any

import yaml

from synthdet.params import Params
from tests.conftest import REPO, TEST_PARAMS_YAML, load_test_params


def flat(raw: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value; mappings are walked, anything else (lists included) is a value."""
    if not isinstance(raw, dict) or not raw:
        return {prefix: raw}
    return {
        key: value
        for name, child in raw.items()
        for key, value in flat(child, f"{prefix}.{name}" if prefix else str(name)).items()
    }


def pinned_keys() -> set[str]:
    lines = TEST_PARAMS_YAML.read_text().splitlines()
    return {key for line in lines if line.startswith("# pinned:") for key in line.split()[2:]}


def test_the_test_config_loads_through_the_project_loader() -> None:
    assert isinstance(load_test_params(), Params)


def test_the_test_config_differs_from_params_yaml_only_in_its_pinned_keys() -> None:
    real = flat(yaml.safe_load((REPO / "params.yaml").read_text()))
    test = flat(yaml.safe_load(TEST_PARAMS_YAML.read_text()))
    assert set(test) == set(real), "tests/config/params.yaml: add or drop these keys"
    differing = {key for key in real if real[key] != test[key]}
    pinned = pinned_keys()
    assert differing - pinned == set(), (
        "tests/config/params.yaml differs from params.yaml in keys its header does not list: "
        "copy params.yaml's value, or add the key to a '# pinned:' line"
    )
    assert pinned - differing == set(), (
        "listed as pinned in tests/config/params.yaml but equal to params.yaml (or no key): "
        "drop them from the '# pinned:' lines"
    )
