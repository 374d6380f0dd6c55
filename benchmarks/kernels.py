"""Pinned kernels (synthdet.core.kernels) vs each library's native ones: same bytes? how slow?

    python benchmarks/kernels.py [--rounds 3]         # writes metrics/bench/kernels.json
    python benchmarks/kernels.py --probe [--size tiny]  # one probe, JSON on stdout

A probe, in a fresh process (the switches are read when the libraries load), trains a UNet
(the shipped builtin:orchard checkpoint's, at the default 192 px: 48x48 latents) and a YOLOv8n
(from its yaml, 192 px, batch 8) for a few steps on fixed random inputs, and prints SHA-256
digests of the UNet's gradients and the YOLO's weights after the steps, with the CPU seconds
each part took. The driver runs four environments, alternating in rounds so a load change on a
shared machine hits all of them:
- `native`: SYNTHDET_NATIVE_KERNELS=1 (each library's fastest kernels for this CPU);
- `native-on-avx2`: the same, on an emulated AVX2-only CPU (ATEN_CPU_CAPABILITY=avx2,
  ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2);
- `pinned` and `pinned-on-avx2`: synthdet's pins (the default), on this CPU and emulated AVX2.
Cross-machine identity holds where `pinned` == `pinned-on-avx2`; its cost is the pinned/native
ratio of CPU seconds (median over rounds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import synthdet  # noqa: F401  (pins the kernels before torch loads, unless SYNTHDET_NATIVE_KERNELS=1)

ROOT = Path(__file__).resolve().parents[1]
EMULATED_AVX2 = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}
ENVIRONMENTS = {
    "native": {"SYNTHDET_NATIVE_KERNELS": "1"},
    "native-on-avx2": {"SYNTHDET_NATIVE_KERNELS": "1", **EMULATED_AVX2},
    "pinned": {},
    "pinned-on-avx2": EMULATED_AVX2,
}
SIZES = {  # name: (UNet latent px, YOLO image px, steps)
    "default": (48, 192, 15),
    "tiny": (16, 64, 2),
}


def _digest(tensors) -> str:
    sha = hashlib.sha256()
    for tensor in tensors:
        sha.update(tensor.detach().contiguous().numpy().tobytes())
    return sha.hexdigest()[:16]


def probe(size: str) -> dict:
    """One probe in this process (see the module docstring)."""
    import torch
    from diffusers import UNet2DConditionModel
    from ultralytics.nn.tasks import DetectionModel

    latent, pixels, steps = SIZES[size]
    torch.set_num_threads(1)  # one thread: the digest must not depend on the core count
    torch.manual_seed(0)
    if size == "tiny":
        unet = UNet2DConditionModel(
            sample_size=latent,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=16,
        )
    else:
        unet = UNet2DConditionModel.from_pretrained(ROOT / "models/builtin/orchard/unet")
    latents = torch.randn(2, unet.config.in_channels, latent, latent)
    text = torch.randn(2, 16, unet.config.cross_attention_dim)
    started = time.process_time()
    for _ in range(steps):
        unet(latents, torch.tensor([10, 500]), text).sample.pow(2).mean().backward()
    unet_seconds = time.process_time() - started
    torch.manual_seed(0)
    yolo = DetectionModel("yolov8n.yaml", nc=1, verbose=False)
    optimizer = torch.optim.SGD(yolo.parameters(), lr=0.01)
    images = torch.rand(8 if size == "default" else 2, 3, pixels, pixels)
    started = time.process_time()
    for _ in range(steps):
        optimizer.zero_grad()
        outputs = yolo(images)
        outputs = outputs.values() if isinstance(outputs, dict) else outputs
        sum(o.float().pow(2).mean() for o in outputs if torch.is_tensor(o)).backward()
        optimizer.step()
    yolo_seconds = time.process_time() - started
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "unet_grads": _digest(p.grad for p in unet.parameters() if p.grad is not None),
        "yolo_weights": _digest(yolo.parameters()),
        "unet_cpu_seconds": round(unet_seconds, 3),
        "yolo_cpu_seconds": round(yolo_seconds, 3),
    }


def run_probe(environment: dict[str, str], size: str) -> dict:
    """`probe(size)` in a fresh process with `environment` over a copy of os.environ without any
    kernel switch (so the caller's own settings do not leak in)."""
    base = {k: v for k, v in os.environ.items() if k not in {*EMULATED_AVX2, "MKL_CBWR"}}
    base.pop("SYNTHDET_NATIVE_KERNELS", None)
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--probe", "--size", size],
        env={**base, **environment},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", action="store_true", help="run one probe, print JSON")
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "metrics/bench/kernels.json")
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.size)))
        return
    results: dict[str, list[dict]] = {name: [] for name in ENVIRONMENTS}
    for round_ in range(args.rounds):
        for name, environment in ENVIRONMENTS.items():
            results[name].append(run_probe(environment, args.size))
            print(round_, name, results[name][-1], flush=True)
    summary: dict[str, object] = {
        "cpu": platform.processor() or platform.machine(),
        "rounds": args.rounds,
        "size": args.size,
    }
    for name, probes in results.items():
        summary[f"{name}.capability"] = probes[0]["capability"]
        for key in ("unet_grads", "yolo_weights"):
            digests = {p[key] for p in probes}
            summary[f"{name}.{key}"] = digests.pop() if len(digests) == 1 else "varies"
        for key in ("unet_cpu_seconds", "yolo_cpu_seconds"):
            summary[f"{name}.{key}"] = statistics.median(p[key] for p in probes)
    for key in ("unet_grads", "yolo_weights"):
        summary[f"identical_across_isas.native.{key}"] = int(
            summary[f"native.{key}"] == summary[f"native-on-avx2.{key}"]
        )
        summary[f"identical_across_isas.pinned.{key}"] = int(
            summary[f"pinned.{key}"] == summary[f"pinned-on-avx2.{key}"]
        )
    for key in ("unet_cpu_seconds", "yolo_cpu_seconds"):
        summary[f"pinned_over_native.{key}"] = round(
            summary[f"pinned.{key}"] / summary[f"native.{key}"], 3
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
