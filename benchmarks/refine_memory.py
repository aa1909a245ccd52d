"""Refinement memory per image on a GPU: measured peak against `--batch-size auto`'s estimate.

For each resolution (official architecture, random weights, LPIPS-VGG with a random backbone and the
gaussianized prior, as `latentmill invert` refines), runs refinement at two batch sizes and takes
the difference of the CUDA allocator's peaks per extra image; beside it, the estimate that
`pipeline/runtime/batch_size.py` makes without running anything, and the batch `auto` would pick.
The estimate must not be below the measurement (an auto batch must fit).

  python -m benchmarks.refine_memory --resolutions 256,1024 --batches 2,6 --precision fp32
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from benchmarks.generator import official_generator
from benchmarks.timing import machine_description
from pipeline.losses.lpips_loss import LPIPSLoss, save_random_backbone
from pipeline.models.model_set import ModelSet
from pipeline.precision import resolve_precision
from pipeline.priors.gaussian import GaussianizedPrior
from pipeline.runtime.batch_size import actor_memory_bytes, largest_batch, refine_bytes_per_image
from pipeline.stages.refine import refine


def peak_bytes(G, lpips, prior, batch: int, precision: str, device: torch.device) -> int:
    targets = torch.rand(batch, 3, G.img_resolution, G.img_resolution, device=device) * 2 - 1
    init = G.w_avg.expand(batch, G.num_ws, -1).clone()
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
    parser.add_argument("--batches", default="2,6", help="the two batch sizes measured (small,large)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"])
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    precision, why = resolve_precision(args.precision, device)
    print(f"# {machine_description(device)}; precision {precision} ({why})")
    small, large = map(int, args.batches.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lpips = LPIPSLoss("vgg", str(save_random_backbone(Path(tmp) / "vgg.pth"))).to(device)
    print("| resolution | measured MiB / image | estimated MiB / image | estimate / measured | auto batch |")
    print("|---|---|---|---|---|")
    for resolution in map(int, args.resolutions.split(",")):
        G = official_generator(resolution).to(device).requires_grad_(False)
        prior = GaussianizedPrior.fit(G, num_samples=20_000, batch_size=5_000, device=device, progress=False)
        measured = (peak_bytes(G, lpips, prior, large, precision, device)
                    - peak_bytes(G, lpips, prior, small, precision, device)) / (large - small)
        estimated = refine_bytes_per_image(ModelSet(G=G, perceptual=lpips, prior=prior))
        auto = largest_batch(estimated, actor_memory_bytes(device, num_gpus=1, cpus_per_actor=1), device)
        row = dict(resolution=resolution, precision=precision, measured_mib=measured / 2**20,
                   estimated_mib=estimated / 2**20, ratio=estimated / measured, auto_batch=auto)
        rows.append(row)
        print(f"| {resolution} | {row['measured_mib']:.0f} | {row['estimated_mib']:.0f} | {row['ratio']:.2f} | {auto} |",
              flush=True)
        del G, prior
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(dict(machine=machine_description(device), rows=rows), indent=2))


if __name__ == "__main__":
    main()
