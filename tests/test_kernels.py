"""synthdet.core.kernels: the pinned kernels give the same bytes on an AVX-512 and an AVX2 CPU."""

from __future__ import annotations

import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from synthdet.core import kernels

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "benchmarks/kernels.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_synthdet_pins_the_kernels_before_torch_loads():
    assert {name: os.environ[name] for name in kernels.PINNED} == kernels.PINNED
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"


def test_a_value_the_user_set_wins_and_native_skips_the_pins(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    assert kernels.pin()["MKL_CBWR"] == "AUTO"
    monkeypatch.setenv(kernels.NATIVE_ENV, "1")
    assert kernels.pin() == {}


def test_a_unet_and_a_yolo_step_give_the_same_bytes_under_two_emulated_isas():
    """A micro personalisation (UNet) and detector (YOLO) training step in fresh processes:
    with the pins, this CPU and an emulated AVX2-only CPU give identical bytes; with the native
    kernels on an AVX-512 CPU they differ (so the comparison can fail)."""
    names = ["pinned", "pinned-on-avx2", "native", "native-on-avx2"]
    with ThreadPoolExecutor(2) as pool:
        found = pool.map(lambda name: bench.run_probe(bench.ENVIRONMENTS[name], "tiny"), names)
        probes = dict(zip(names, found, strict=True))
    digests = {name: (p["unet_grads"], p["yolo_weights"]) for name, p in probes.items()}
    assert digests["pinned"] == digests["pinned-on-avx2"]
    assert probes["pinned"]["capability"] == "AVX2"
    if probes["native"]["capability"] == "AVX512":
        assert digests["native"] != digests["native-on-avx2"]
