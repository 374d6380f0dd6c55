"""One set of math kernels on every x86-64 CPU, so a run's float bits do not depend on the CPU.

torch, oneDNN and MKL each pick their kernels by the instruction sets the CPU has, and kernels
of different vector widths sum in different orders: the same commit trained on an AVX-512 and
on an AVX2 machine differs from the first optimizer step on (measured: a UNet step's gradients
and a YOLO step's loss, `benchmarks/kernels.py`). Before torch loads, `pin()` caps them at a
level every AVX2 CPU runs the same way:

- `ATEN_CPU_CAPABILITY=avx2`: torch's own vectorised kernels (PyTorch, "CPU capability");
- `ONEDNN_MAX_CPU_ISA=AVX2`: oneDNN convolutions and matmuls (oneDNN, "CPU ISA hints");
- `MKL_CBWR=COMPATIBLE`: MKL's BLAS in its conditional-numerical-reproducibility branch that
  Intel documents as the one giving the same results on Intel and non-Intel CPUs (MKL developer
  guide, "Obtaining numerically reproducible results"; AVX2/AVX512 branches hold on Intel only).

Measured on an AMD EPYC with AVX-512: with these three set, a UNet and a YOLO training step give
the same bytes natively and under an emulated AVX2-only machine; without them they differ.
A value already in the environment wins (set `SYNTHDET_NATIVE_KERNELS=1` to skip the pins and
run each library's fastest kernels, giving up cross-machine identity).
"""

from __future__ import annotations

import os
import sys
import warnings

NATIVE_ENV = "SYNTHDET_NATIVE_KERNELS"
PINNED = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
}


def pin() -> dict[str, str]:
    """Set the `PINNED` switches that the environment does not set already; return the ones in
    force. No-op with `SYNTHDET_NATIVE_KERNELS=1`. Runs when synthdet is imported, which every
    stage does before torch; imported after torch (a notebook, say), the libraries may already
    have read their switches, so it warns (`metrics/environment.json` records what was used)."""
    if os.environ.get(NATIVE_ENV) == "1":
        return {}
    missing = {name: value for name, value in PINNED.items() if name not in os.environ}
    if missing and "torch" in sys.modules:
        warnings.warn(
            f"synthdet was imported after torch, so {', '.join(missing)} may not take effect "
            "and float bits may depend on this CPU; import synthdet before torch, or set "
            f"{NATIVE_ENV}=1 to run the native kernels knowingly",
            stacklevel=2,
        )
    os.environ.update(missing)
    return {name: os.environ[name] for name in PINNED}
