"""Wall-clock timing for benchmarks: warm-up, device synchronization, median of repeats."""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, *, warmup: int = 1, repeats: int = 3) -> float:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def autocast(device: torch.device, dtype_name: str):
    """fp32 runs plainly; bf16/fp16 run under torch.autocast."""
    if dtype_name == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name])


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    from pipeline.precision import NATIVE_BF16_FLAGS, cpu_flags

    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = cpu_flags()
    bf16 = "unknown" if flags is None else ("native" if set(NATIVE_BF16_FLAGS) & flags else "none")
    return (f"CPU {model} ({torch.backends.cpu.get_cpu_capability()}, bf16 {bf16}), {torch.get_num_threads()} "
            f"threads, torch {torch.__version__}")


def write_results(path: str | None, device: torch.device, rows: list[dict]) -> None:
    """Save a benchmark's rows with the machine they were measured on (no-op without a path)."""
    if path:
        with open(path, "w") as f:
            json.dump({"machine": machine_description(device), "rows": rows}, f, indent=2)


# Lines at the top of a measured subprocess's code: `status(field)` reads /proc/self/status in MiB, and
# PEAK_RESET restarts the high-water mark, so a later status("VmHWM:") is the peak of what followed.
MEMORY_PROBE = """
def status(field):
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith(field))) / 1024
"""
PEAK_RESET = 'open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from here\n'


def growth_exponent(rows_before: int, seconds_before: float, rows: int, seconds: float) -> float:
    """The exponent of time in rows between two sizes (1: linear)."""
    return round(math.log(seconds / seconds_before) / math.log(rows / rows_before), 2)

