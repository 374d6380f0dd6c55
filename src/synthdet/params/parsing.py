"""The type-checking parser of params.yaml: a mapping into a frozen dataclass, by its hints.

Also the helpers every section's checks share: `_require` and the prompt-template checks, and
the library option blocks' schemas (`train_detector.yolo`: ultralytics' default config and key
types; `personalize.lora`: peft's LoraConfig fields). Those are read from the installed
packages' files without importing them: importing ultralytics takes over a second (it loads
torch) and peft several, once per stage and test process, for a check that reads a few names.
tests/test_params_libraries.py checks that what is read is exactly what the imported libraries
hold.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib.util
import math
import string
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from ruamel.yaml import YAML

from synthdet.core.errors import SynthdetError


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


# ------------------------------------------------- library option blocks: their own schemas

# ultralytics' typed-key sets in ultralytics/cfg/__init__.py, as check_cfg uses them
ULTRALYTICS_KEY_SETS = (
    "CFG_FLOAT_KEYS",
    "CFG_FRACTION_KEYS",
    "CFG_INT_KEYS",
    "CFG_BOOL_KEYS",
    "CFG_STR_KEYS",
)

# peft's LoraConfig docstring calls `r` the "rank"; difflib cannot reach `r` from `rank`.
LORA_SYNONYMS = {"rank": "r"}


def _package_dir(name: str) -> Path:
    """The installed package's folder, found without running its __init__."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ParamsError(f"params: the package {name} is not installed; run `make install`")
    return Path(next(iter(spec.submodule_search_locations)))


def _module_constants(path: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """Module-level literals `NAME = frozenset({...})`, `NAME = {...}` of a source file."""
    found: dict[str, Any] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        if not (isinstance(target, ast.Name) and target.id in names):
            continue
        value = node.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "frozenset":
            value = value.args[0]
        found[target.id] = ast.literal_eval(value)
    missing = [name for name in names if name not in found]
    if missing:
        raise ParamsError(
            f"params: {path} no longer defines {', '.join(missing)} as literals, so "
            "train_detector.yolo cannot be checked; install the ultralytics version pyproject.toml "
            "pins (`make install`)"
        )
    return found


@functools.cache
def ultralytics_schema() -> tuple[dict[str, Any], dict[str, frozenset[str]], dict[str, int]]:
    """ultralytics' defaults (DEFAULT_CFG_DICT: every valid argument), its typed-key sets by
    name, and CFG_INT_MIN (the least value of some integer arguments)."""
    root = _package_dir("ultralytics")
    defaults = yaml.safe_load((root / "cfg" / "default.yaml").read_text(encoding="utf-8"))
    constants = _module_constants(
        root / "cfg" / "__init__.py", (*ULTRALYTICS_KEY_SETS, "CFG_INT_MIN")
    )
    key_sets = {name: frozenset(constants[name]) for name in ULTRALYTICS_KEY_SETS}
    return defaults, key_sets, constants["CFG_INT_MIN"]


@functools.cache
def lora_config_fields() -> frozenset[str]:
    """The dataclass fields of peft.LoraConfig, its bases' (PeftConfig) included."""
    root = _package_dir("peft")
    classes: dict[str, ast.ClassDef] = {}
    for module in ("config.py", "tuners/lora/config.py"):
        tree = ast.parse((root / module).read_text(encoding="utf-8"))
        classes.update((node.name, node) for node in tree.body if isinstance(node, ast.ClassDef))

    def fields(name: str) -> set[str]:
        node = classes.get(name)  # a base outside peft's config modules (a mixin) adds none
        if node is None:
            return set()
        own = {
            statement.target.id
            for statement in node.body
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
        }
        return own.union(*(fields(base.id) for base in node.bases if isinstance(base, ast.Name)))

    found = fields("LoraConfig")
    if not found:
        raise ParamsError(
            f"params: peft at {root} has no LoraConfig in tuners/lora/config.py, so "
            "personalize.lora cannot be checked; install the peft version pyproject.toml pins "
            "(`make install`)"
        )
    return frozenset(found)


def _unknown(key: str, valid: list[str], prefix: str, owner: str, synonyms: dict) -> str:
    close = [synonyms[key]] if key in synonyms else difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{prefix}.{close[0]}'?)" if close else ""
    return f"params: unknown key '{prefix}.{key}'{hint}; it is no {owner} argument"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _yolo_type_problem(key: str, value: Any, schema: tuple) -> str | None:
    """What ultralytics' check_cfg would refuse in `key: value`, as the fix to make."""
    defaults, sets, int_min = schema
    if value is None:
        typed = any(key in keys for keys in sets.values()) and key != "auto_augment"
        if typed and defaults.get(key) is not None:
            return f"must not be null (ultralytics' default: {defaults[key]!r})"
        return None
    if key in sets["CFG_FLOAT_KEYS"] and not _is_number(value):
        return f"must be a number, got {type(value).__name__} {value!r}"
    if key in sets["CFG_FRACTION_KEYS"]:
        if not _is_number(value):
            return f"must be a number in [0, 1], got {type(value).__name__} {value!r}"
        if not 0 <= value <= 1:
            return f"must be in [0, 1], got {value!r}"
    if key in sets["CFG_INT_KEYS"]:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"must be an integer, got {type(value).__name__} {value!r}"
        if key in int_min and value < int_min[key]:
            return f"must be >= {int_min[key]}, got {value!r}"
    if key in sets["CFG_BOOL_KEYS"] and not isinstance(value, bool):
        return f"must be true or false, got {type(value).__name__} {value!r}"
    if key in sets["CFG_STR_KEYS"] and not isinstance(value, str):
        return f"must be a string, got {type(value).__name__} {value!r}"
    return None


def yolo_problems(args: dict[str, Any], prefix: str, own_checks: frozenset[str]) -> list[str]:
    """Keys of `args` ultralytics does not know, and values of the wrong type or range by its
    CFG_*_KEYS sets; `prefix` names the block ('train_detector.yolo'). Keys in `own_checks` get
    synthdet's own value checks, with the reason, instead."""
    schema = ultralytics_schema()
    valid = list(schema[0])
    problems = []
    for key, value in args.items():
        if key not in schema[0]:
            problems.append(_unknown(str(key), valid, prefix, "ultralytics train", {}))
        elif key not in own_checks and (problem := _yolo_type_problem(key, value, schema)):
            problems.append(f"params: '{prefix}.{key}' {problem} (ultralytics' check_cfg)")
    return problems


def lora_problems(lora: dict[str, Any]) -> list[str]:
    """Keys of `personalize.lora` that are no peft.LoraConfig field."""
    fields = lora_config_fields()
    valid = sorted(fields)
    return [
        _unknown(str(key), valid, "personalize.lora", "peft.LoraConfig", LORA_SYNONYMS)
        for key in lora
        if key not in fields
    ]


def _cuda_indices(device: Any) -> list[int] | None:
    """The CUDA device indices `device` asks ultralytics for ([] for any one GPU: 'cuda', -1);
    None when it asks for none (unset, cpu, mps) or for a backend not checked here."""
    if device is None or isinstance(device, bool):
        return None
    parts = device if isinstance(device, list | tuple) else str(device).split(",")
    text = [str(part).strip().lower() for part in parts]
    other_backends = ("mps", "npu", "xpu", "tpu", "intel", "vulkan")  # ultralytics checks them
    if text in ([], [""], ["cpu"], ["none"]) or text[0].startswith(other_backends):
        return None
    indices = []
    for part in text:
        number = part.removeprefix("cuda").removeprefix(":")
        if number in ("", "-1"):
            continue  # 'cuda', -1: any (idle) GPU
        if not number.isdigit():
            return None  # not a CUDA request ultralytics would read; it says so itself
        indices.append(int(number))
    return indices


def device_problem(device: Any, key: str) -> str | None:
    """A CUDA `device` this machine lacks, as torch sees it (torch imported only then)."""
    indices = _cuda_indices(device)
    if indices is None:
        return None
    import torch  # only with a CUDA device asked for: the other stages need no torch at load

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count > 0 and all(index < count for index in indices):
        return None
    sees = (
        f"{count} CUDA device(s)" if count else "no CUDA device (torch.cuda.is_available() False)"
    )
    return (
        f"params: '{key}' is {device!r}, but torch sees {sees} on this machine, so ultralytics "
        "would stop when the first detector trains; remove it (ultralytics then uses a GPU if "
        "there is one, else the CPU), or set it to cpu"
        + (f" or to a device index below {count}" if count else "")
    )
