"""The library option blocks (`train_detector.yolo`, `personalize.lora`) checked against the
libraries' own schemas: ultralytics' default config and key types, peft's LoraConfig fields.

Both are read from the installed packages' files without importing them: importing ultralytics
takes over a second (it loads torch) and peft several, once per stage and test process, for a
check that reads a few names. tests/test_params_libraries.py checks that what is read here is
exactly what the imported libraries hold.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
from pathlib import Path
from typing import Any

import yaml

from synthdet.params.parsing import ParamsError

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
