"""How many CPU threads torch computes with: one rule for every stage."""

from __future__ import annotations

import os

THREADS_ENV = "SYNTHDET_TORCH_THREADS"


def cpu_threads() -> int:
    """`SYNTHDET_TORCH_THREADS` when set (a machine shared with other jobs, where spinning threads
    slow each other down), else every CPU core this process may run on.

    Float summation order, hence the last bits of a trained model, depends on this number.
    """
    return int(os.environ.get(THREADS_ENV) or 0) or len(os.sched_getaffinity(0))
