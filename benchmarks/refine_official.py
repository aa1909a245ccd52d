"""latentmill's refinement against NVlabs' projector `project()` itself, in one process.

Part 1, per-step cost at --resolution (official architecture, random weights, fp32 unless
--precision): the official loop (one image) and latentmill's refine at each of --batches, on the
same targets, with the same VGG16 weights on both sides, interleaved, --repeats times. Seconds per
step come from runs of two lengths (fixed costs cancel); FLOPs per step from torch's
FlopCounterMode the same way; MFU is achieved FLOP/s over this machine's dense fp32 matmul rate,
measured in the same run.

Part 2, time to equal LPIPS on the bundled demo model (trained, with its encoder): the official
projector's default 1000 steps from w_avg, one image at a time, against latentmill's encoder start
plus as few refinement steps as reach the same median LPIPS, in one batch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.official_code import OfficialCode
from benchmarks.timing import synchronize
from pipeline.losses.lpips_loss import LPIPSLoss
from pipeline.stages.refine import refine


def flops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Dense fp32 matmul FLOP/s on this machine, best of `repeats` (a shared machine's neighbours
    only ever slow it down, so the best is the ceiling)."""
    a = torch.randn(size, size, device=device)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ a
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def per_step_rows(official: OfficialCode, G, lpips: LPIPSLoss, *, batches: list[int], precision: str,
                  short: int, long: int, repeats: int, device: torch.device) -> list[dict]:
    """One row per method: seconds and FLOPs per image-step, achieved FLOP/s, MFU."""
    G_official = official.generator(G.cpu()).to(device)
    G = G.to(device)
    torch.manual_seed(0)
    targets = torch.rand(max(batches), 3, G.img_resolution, G.img_resolution, device=device) * 2 - 1
    init = G.w_avg.expand(len(targets), G.num_ws, -1).clone()

    def run_official(steps: int) -> None:
        official.project(G_official, targets[0], steps, device)

    def run_ours(batch: int) -> Callable[[int], None]:
        return lambda steps: refine(G, targets[:batch], init[:batch], steps=steps, perceptual=lpips,
                                    precision=precision)

    methods = {"official project()": (1, run_official)} | {f"latentmill refine, batch {b}": (b, run_ours(b))
                                                          for b in batches}
    peak = matmul_peak(device)
    times: dict[str, list[float]] = {name: [] for name in methods}
    with official.vgg16_from(lpips):
        for name, (_, run) in methods.items():
            run(1)  # warm-up: allocations, TorchScript's first runs
        for _ in range(repeats):  # interleaved, so drifts in machine load touch every method alike
            for name, (_, run) in methods.items():
                times[name].append((_seconds(lambda: run(long), device) - _seconds(lambda: run(short), device))
                                   / (long - short))
        step_flops = {name: (flops(lambda: run(2)) - flops(lambda: run(1))) for name, (_, run) in methods.items()}
    peak = max(peak, matmul_peak(device))  # measured before and after the timings: the higher is the ceiling
    rows = []
    for name, (batch, _) in methods.items():
        seconds = statistics.median(times[name])
        rows.append({"method": name, "batch": batch, "s_per_step": seconds, "s_per_image_step": seconds / batch,
                     "gflop_per_image_step": step_flops[name] / batch / 1e9,
                     "gflop_per_s": step_flops[name] / seconds / 1e9, "mfu": step_flops[name] / seconds / peak,
                     "peak_gflop_per_s": peak / 1e9})
    base = rows[0]["s_per_image_step"]
    for row in rows:
        row["speed_vs_official"] = base / row["s_per_image_step"]
    return rows


def equal_lpips_row(official: OfficialCode, lpips: LPIPSLoss, *, images: int, official_steps: int,
                    ladder: list[int], device: torch.device) -> dict:
    """Time per image to the official projector's median LPIPS, on the demo model with its encoder."""
    from pipeline.data.image_pool import load_image_pool
    from pipeline.demo import DemoBundle
    from pipeline.models.checkpoints import load_generator
    from pipeline.models.encoder import encode, load_encoder

    demo = DemoBundle.locate()
    G = load_generator(demo.generator, device=device)
    E = load_encoder(demo.encoder, generator=G, device=device)
    targets = load_image_pool(demo.sample, resolution=G.img_resolution, channels=G.img_channels,
                              max_images=images).images.to(device)
    G_official = official.generator(load_generator(demo.generator)).to(device)

    def render(ws: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return G.synthesis(ws, noise_mode="const").float()

    with official.vgg16_from(lpips):
        start = time.perf_counter()
        official_ws = torch.stack([official.project(G_official, t, official_steps, device) for t in targets])
        official_seconds = (time.perf_counter() - start) / len(targets)
    with torch.no_grad():
        official_lpips = statistics.median(lpips(render(official_ws), targets).tolist())
    reached = None
    for steps in ladder:
        start = time.perf_counter()
        with torch.no_grad():
            init = encode(E, targets).float()
        ws = refine(G, targets, init, steps=steps, perceptual=lpips).ws if steps else init
        seconds = (time.perf_counter() - start) / len(targets)
        with torch.no_grad():
            ours_lpips = statistics.median(lpips(render(ws), targets).tolist())
        reached = {"steps": steps, "s_per_image": seconds, "lpips": ours_lpips}
        if ours_lpips <= official_lpips:
            break
    return {"images": len(targets), "official_steps": official_steps, "official_s_per_image": official_seconds,
            "official_lpips": official_lpips, "ours_steps": reached["steps"], "ours_s_per_image": reached["s_per_image"],
            "ours_lpips": reached["lpips"], "reached": reached["lpips"] <= official_lpips,
            "speed_vs_official": official_seconds / reached["s_per_image"]}
