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
from typing import Any, Literal

from ruamel.yaml import YAML

from synthdet.errors import SynthdetError


class ParamsError(SynthdetError):
    """A parameter is unknown, missing, of the wrong type or out of range."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ParamsError(f"params: '{key}' {message}")


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
        return tuple(_convert(item, args[0], f"{key}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        _require(isinstance(value, dict), key, f"must be a mapping, got {_describe(value)}")
        if args and dataclasses.is_dataclass(args[1]):  # dict[str, Section]: each value parsed
            return {
                name: parse_section(args[1], item, f"{key}.{name}") for name, item in value.items()
            }
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
    """Build dataclass `cls` from mapping `raw`; `where` is the dotted key prefix for messages."""
    _require(
        isinstance(raw, dict), where or "params.yaml", f"must be a mapping, got {_describe(raw)}"
    )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ParamsError(
                f"params: unknown key '{prefix}{key}'{hint}; known keys: {', '.join(fields)}"
            )
    values = {}
    for name, spec in fields.items():
        key = prefix + name
        if name not in raw:
            has_default = (
                spec.default is not dataclasses.MISSING
                or spec.default_factory is not dataclasses.MISSING
            )
            _require(has_default, key, "is missing")
            continue
        values[name] = _convert(raw[name], hints[name], key)
    return cls(**values)


def read_yaml(text: str) -> Any:
    """YAML 1.2, read exactly as DVC reads params.yaml (ruamel.yaml, safe): `1e-4` is a number,
    `yes` / `no` / `on` / `off` are strings, and a repeated key is an error."""
    return YAML(typ="safe").load(text)
