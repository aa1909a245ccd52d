"""Choosing the autocast precision of refinement (`--precision auto`, the default), from what the device
can do: the same choice on every run on the same kind of device, never from a timing.

- CUDA: bf16 where the GPU supports it natively, else fp16 (with loss scaling in refinement).
- CPU: bf16 where the CPU has native bf16 instructions (AVX512-BF16 or AMX-BF16, read from its
  flags), else fp32: without them bf16 is emulated and slower than fp32.
A timing probe was tried first and read 0.37x to 39.5x for one command on one busy machine; a store
then refused its own resume. So the rule reads capabilities only. `LATENTMILL_CPU_BF16=0|1` forces
the CPU's capability either way (to test both choices on one machine).

A store records the precision each kind of device (`device_kind`) ran, so a cluster that mixes GPU
kinds, or GPUs and CPUs, keeps one recipe: each actor runs its kind's recorded precision.
"""

from __future__ import annotations

import functools
import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the settings read PRECISIONS without it
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")  # what --precision runs; "auto" picks one of them

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
FORCE_CPU_BF16 = "LATENTMILL_CPU_BF16"


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


def cpu_has_native_bf16() -> bool:
    """True if this CPU runs bf16 natively (or $LATENTMILL_CPU_BF16 says to act as if: 1, or not: 0)."""
    forced = os.environ.get(FORCE_CPU_BF16)
    if forced in ("0", "1"):
        return forced == "1"
    flags = cpu_flags()
    return flags is not None and any(flag in flags for flag in NATIVE_BF16_FLAGS)


def device_kind(device: str | torch.device) -> str:
    """The kind of device a precision choice belongs to: 'cuda:<GPU name>', 'cpu-bf16' or 'cpu'."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return "cpu-bf16" if cpu_has_native_bf16() else "cpu"
    return device.type


def resolve_precision(precision: str, device: str | torch.device,
                      recorded: dict[str, str] | None = None) -> tuple[str, str]:
    """(the precision to run, why): 'auto' becomes the precision `recorded` (a store's, by device kind)
    holds for this kind of device, else what the device runs natively; others stay as set."""
    if precision != "auto":
        if precision not in PRECISIONS:
            raise ValueError(f"--precision must be auto or one of {PRECISIONS}, got {precision!r}")
        return precision, "as set"
    import torch

    kind = device_kind(device)
    if recorded and kind in recorded:
        return recorded[kind], f"the store's precision for {kind}"
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", "the GPU supports bf16"
        return "fp16", "the GPU has no bf16: fp16 with loss scaling"
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return "bf16", "the CPU has native bf16: AVX512-BF16 or AMX"
        return "fp32", "the CPU has no native bf16 (no AVX512-BF16, no AMX): bf16 would be emulated"
    return "fp32", f"no reduced precision chosen for {device.type}"


def autocast_for(device: str | torch.device, precision: str) -> AbstractContextManager:
    """The autocast context of a resolved precision on `device` (fp32: none)."""
    if precision == "fp32":
        return nullcontext()
    import torch

    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
