"""The type-checking parser of params.yaml: a mapping into a frozen dataclass, by its hints.

Also the helpers every section's checks share: `_require` and the prompt-template checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import string
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

from ruamel.yaml import YAML

from synthdet.errors import SynthdetError


class ParamsError(SynthdetError):
    """A parameter is unknown, missing, of the wrong type or out of range."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ParamsError(f"params: '{key}' {message}")


def _check_matrix_values(values: tuple, key: str) -> None:
    """A list dvc.yaml turns into one matrix stage per value: a value listed twice (1 and 1.0
    too, both 1.0 once parsed) would train the same detectors twice under two stage names."""
    repeated = sorted({value for value in values if values.count(value) > 1}, key=str)
    _require(
        not repeated,
        key,
        f"holds {', '.join(map(repr, repeated))} more than once (as read: {list(values)}): "
        "dvc.yaml makes one matrix stage per value, so the same detectors would be trained "
        "twice; list each value once",
    )


def _fields(template: str) -> set[str]:
    """The names of a format template's fields ('a {identifier}' -> {'identifier'})."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _check_prompt_templates(templates: tuple[str, ...], key: str, required: bool = True) -> None:
    if required:
        _require(len(templates) >= 1, key, "must hold at least one prompt")
    for i, template in enumerate(templates):
        try:
            template.format(identifier="", class_noun="")
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ParamsError(
                f"params: '{key}[{i}]' {template!r} is not a valid template "
                f"({exc!r}); the fields are {{identifier}} and {{class_noun}}"
            ) from exc


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the type hint `hint`, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return parse_section(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if origin is Literal:
        _require(value in args, key, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        _require(isinstance(value, list | tuple), key, f"must be a list, got {_describe(value)}")
        items = {i: (item, args[0], f"{key}[{i}]") for i, item in enumerate(value)}
        return tuple(_collect(_convert, items).values())
    if origin is dict:
        _require(isinstance(value, dict), key, f"must be a mapping, got {_describe(value)}")
        if args and dataclasses.is_dataclass(args[1]):  # dict[str, Section]: each value parsed
            sections = {name: (args[1], item, f"{key}.{name}") for name, item in value.items()}
            return _collect(parse_section, sections)
        return dict(value)
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        _require(ok, key, f"must be a number, got {_describe(value)}")
        _require(math.isfinite(value), key, f"must be a finite number, got {value!r}")
        return float(value)
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        _require(ok, key, f"must be an integer, got {_describe(value)}")
        return value
    _require(isinstance(value, hint), key, f"must be {hint.__name__}, got {_describe(value)}")
    return value


def parse_section(cls: type, raw: Any, where: str = "") -> Any:
    """Build dataclass `cls` from mapping `raw`; `where` is the dotted key prefix for messages.
    Every unknown, missing and ill-typed key of the section and its subsections is reported at
    once, each on its own line."""
    _require(
        isinstance(raw, dict), where or "params.yaml", f"must be a mapping, got {_describe(raw)}"
    )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    problems = []
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            problems.append(
                f"params: unknown key '{prefix}{key}'{hint}; known keys: {', '.join(fields)}"
            )
    # A key params.yaml lacks (e.g. removed with `-S '~key'`) is an error: params.yaml is the one
    # source of the values. The few code defaults equal the committed params.yaml's values
    # (tests/test_params_defaults.py), so taking one changes nothing.
    missing = [
        prefix + name
        for name, spec in fields.items()
        if name not in raw
        and spec.default is dataclasses.MISSING
        and spec.default_factory is dataclasses.MISSING
    ]
    problems += [
        f"params: '{key}' is missing; params.yaml sets every value: restore it there (e.g. from "
        f"git), or set it with -S '{key}=<value>'"
        for key in missing
    ]
    try:
        values = _collect(
            _convert,
            {name: (raw[name], hints[name], prefix + name) for name in fields if name in raw},
        )
    except ParamsError as exc:
        problems.append(str(exc))
    if problems:
        raise ParamsError("\n".join(problems))
    return cls(**values)


def _collect(parse: Callable[..., Any], calls: dict[Any, tuple]) -> dict[Any, Any]:
    """`parse(*arguments)` for each name -> arguments of `calls`: the results by name, or one
    ParamsError holding every failure's message, so one run reports every bad key."""
    results, problems = {}, []
    for name, arguments in calls.items():
        try:
            results[name] = parse(*arguments)
        except ParamsError as exc:
            problems.append(str(exc))
    if problems:
        raise ParamsError("\n".join(problems))
    return results


def read_yaml(text: str) -> Any:
    """YAML 1.2, read exactly as DVC reads params.yaml (ruamel.yaml, safe): `1e-4` is a number,
    `yes` / `no` / `on` / `off` are strings, and a repeated key is an error."""
    return YAML(typ="safe").load(text)
