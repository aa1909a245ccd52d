"""Refinement memory per image on a GPU: measured peak against `--batch-size auto`'s estimate.

For each resolution (official architecture, random weights, LPIPS-VGG with a random backbone and the
gaussianized prior, as `latentmill invert` refines), runs refinement at two batch sizes and takes
the difference of the CUDA allocator's peaks per extra image; beside it, the estimate that
`pipeline/invert/batch_size.py` makes without running anything, and the batch `auto` would pick.
The estimate must not be below the measurement (an auto batch must fit). With --device cpu (Linux), the
measurement is the process's peak resident set instead, reset before each run (/proc/self/clear_refs).

  python -m benchmarks.refine_memory --archs stylegan2,stylegan3-t --resolutions 256,1024 --batches 2,6 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import torch

from benchmarks.generator import official_generator
from benchmarks.timing import machine_description
from benchmarks.stand_in_weights import save_random_backbone
from pipeline.losses.lpips_loss import LPIPSLoss
from pipeline.model_set import ModelSet
from pipeline.precision import resolve_precision
from pipeline.priors.gaussian import GaussianizedPrior
from pipeline.invert.batch_size import actor_memory_bytes, largest_batch, refine_bytes_per_image
from pipeline.stages.refine import refine


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: the peak), in KiB."""
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def peak_bytes(G, lpips, prior, batch: int, precision: str, device: torch.device) -> int:
    targets = torch.rand(batch, 3, G.img_resolution, G.img_resolution, device=device) * 2 - 1
    init = G.w_avg.expand(batch, G.num_ws, -1).clone()
    if device.type != "cuda":  # the peak resident set, reset to the current one first ("5": Linux 4.0+)
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS")
        refine(G, targets, init, steps=2, perceptual=lpips, prior=prior, precision=precision)
        return (_status_kib("VmHWM") - base) * 1024
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    refine(G, targets, init, steps=2, perceptual=lpips, prior=prior, precision=precision)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", default="256,1024")
    parser.add_argument("--archs", default="stylegan2", help="comma-separated: stylegan2, stylegan3-t, stylegan3-r")
    parser.add_argument("--batches", default="2,6", help="the two batch sizes measured (small,large)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu: peak resident set instead of the CUDA allocator's peak")
    parser.add_argument("--channel-max", type=int, help="cap the generator's channels (a tiny network for smoke "
                        "runs; default: the official configuration's)")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    precision, why = resolve_precision(args.precision, device)
    print(f"# {machine_description(device)}; precision {precision} ({why})")
    small, large = map(int, args.batches.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lpips = LPIPSLoss("vgg", str(save_random_backbone(Path(tmp) / "vgg.pth"))).to(device)
    print("| architecture | resolution | measured MiB / image | estimated MiB / image | estimate / measured | auto batch |")
    print("|---|---|---|---|---|---|")
    for arch, resolution in [(a, r) for a in args.archs.split(",") for r in map(int, args.resolutions.split(","))]:
        G = official_generator(resolution, arch, channel_max=args.channel_max).to(device).requires_grad_(False)
        prior = GaussianizedPrior.fit(G, num_samples=20_000, batch_size=5_000, device=device, progress=False)
        measured = (peak_bytes(G, lpips, prior, large, precision, device)
                    - peak_bytes(G, lpips, prior, small, precision, device)) / (large - small)
        estimated = refine_bytes_per_image(ModelSet(G=G, perceptual=lpips, prior=prior), precision)
        auto = largest_batch(estimated, actor_memory_bytes(device, num_gpus=1, cpus_per_actor=1), device)
        row = dict(architecture=arch, resolution=resolution, precision=precision, measured_mib=measured / 2**20,
                   estimated_mib=estimated / 2**20, ratio=estimated / measured, auto_batch=auto)
        rows.append(row)
        print(f"| {arch} | {resolution} | {row['measured_mib']:.0f} | {row['estimated_mib']:.0f} | {row['ratio']:.2f} | {auto} |",
              flush=True)
        del G, prior
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(dict(machine=machine_description(device), rows=rows), indent=2))


if __name__ == "__main__":
    main()
