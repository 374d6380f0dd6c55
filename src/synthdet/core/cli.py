"""Shared entry point of the stage modules: params in, clean errors out."""

from __future__ import annotations

import sys
from collections.abc import Callable

from synthdet.core.errors import SynthdetError
from synthdet.params import Params, load_params


def run_stage(stage: Callable[[Params], None], params_path: str = "params.yaml") -> None:
    """Load params and call `stage`; user errors become one line on stderr and exit code 2."""
    try:
        stage(load_params(params_path))
    except SynthdetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            "interrupted: outputs are written atomically, nothing partial was kept", file=sys.stderr
        )
        sys.exit(130)
