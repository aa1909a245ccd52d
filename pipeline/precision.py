"""Choosing the autocast precision a device is fast at (`--precision auto`, the default).

CUDA: bf16 where the GPU supports it, else fp16 (with loss scaling in refinement). CPU: bf16 only
where it is faster than fp32. Machines differ: on a CPU with AVX512-BF16 or AMX, bf16 convolutions
and matmuls beat fp32; on one with only AVX2, bf16 is emulated and 30-80x slower. So the CPU choice
reads the CPU's flags (Linux) and, where they allow bf16, times a small matmul and convolution in
both precisions (well under a second) and keeps the faster. The choice is made once per process.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.stages.inversion_settings import PRECISIONS

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return None


def _seconds(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def cpu_bf16_speedup() -> float:
    """How much faster bf16 autocast runs a small matmul + convolution than fp32 on this CPU
    (below 1: slower). 0 when the CPU's flags say it has no native bf16 (no need to time it)."""
    flags = cpu_flags()
    if flags is not None and not any(flag in flags for flag in NATIVE_BF16_FLAGS):
        return 0.0
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(384, 384, generator=generator)
    x, w = torch.randn(4, 64, 32, 32, generator=generator), torch.randn(64, 64, 3, 3, generator=generator)

    def work(dtype: torch.dtype | None):
        def run() -> None:
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                a @ a
                F.conv2d(x, w, padding=1)
        return run

    return _seconds(work(None)) / _seconds(work(torch.bfloat16))


def resolve_precision(precision: str, device: str | torch.device) -> tuple[str, str]:
    """(the precision to run, why): 'auto' becomes what `device` is fast at; others stay as set."""
    if precision != "auto":
        if precision not in PRECISIONS:
            raise ValueError(f"--precision must be auto or one of {PRECISIONS}, got {precision!r}")
        return precision, "as set"
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", "the GPU supports bf16"
        return "fp16", "the GPU has no bf16: fp16 with loss scaling"
    if device.type == "cpu":
        speedup = cpu_bf16_speedup()
        if speedup >= 1.2:
            return "bf16", f"bf16 measured {speedup:.1f}x faster than fp32 on this CPU"
        if speedup == 0.0:
            return "fp32", "this CPU has no native bf16: no AVX512-BF16, no AMX"
        return "fp32", f"bf16 measured {speedup:.2f}x the speed of fp32 on this CPU"
    return "fp32", f"no reduced precision chosen for {device.type}"
