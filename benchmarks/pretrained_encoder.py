"""The encoders users already have, at full size: loading a pSp/e4e/ReStyle checkpoint against plain
torch.load of the same file, and encoding throughput against the machine's measured matmul rate.

A full-size checkpoint is written first, laid out as pSp's training saves it (`state_dict` with the
encoder under `encoder.*` and a 1024 px config-f rosinality decoder under `decoder.*`, `opts`,
`latent_avg`; random weights, about 1.2 GB for pSp's GradualStyleEncoder). Then:
- load: `torch.load(path, map_location='cpu', weights_only=True)` (the floor: no checks, no network
  built) against `load_encoder(path)` (restricted read, encoder and decoder built and checked);
- encode: images/s of `encode(E, images)` at 256 px (ReStyle: per iteration), FLOPs counted with
  torch's FlopCounterMode, GFLOP/s and the share of this machine's dense fp32 matmul rate.

  python -m benchmarks.pretrained_encoder --encoders psp,restyle --batch 8 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.generator import official_generator
from benchmarks.refine_official import flops, matmul_peak
from benchmarks.timing import machine_description, median_seconds, write_results
from pipeline.models import rosinality
from pipeline.models.encoder import encode, load_encoder
from pipeline.models.pretrained_encoder import PretrainedEncoder

KINDS = {  # name -> (family, encoder_type, input channels)
    "psp": ("psp", "GradualStyleEncoder", 3),
    "e4e": ("e4e", "Encoder4Editing", 3),
    "restyle": ("restyle", "BackboneEncoder", 6),
}


def write_full_size_checkpoint(path: Path, kind: str, resolution: int) -> int:
    """A pSp/e4e/ReStyle training checkpoint of full size with random weights; returns its size in bytes."""
    family, encoder_type, input_nc = KINDS[kind]
    G = official_generator(resolution)
    n_styles = G.num_ws
    torch.manual_seed(0)
    E = PretrainedEncoder(family, encoder_type, n_styles, resolution, input_nc=input_nc)
    with torch.no_grad():
        for p in E.parameters():
            p.normal_(0, 0.02)
    decoder = rosinality.to_rosinality({k: v for k, v in G.state_dict().items() if k != "mapping.w_avg"},
                                       resolution, 8)
    state = {**{f"encoder.{k[len('net.'):]}": v for k, v in E.state_dict().items() if k.startswith("net.")},
             **{f"decoder.{k}": v for k, v in decoder.items()}}
    opts = {"encoder_type": encoder_type, "input_nc": input_nc, "label_nc": 0, "start_from_latent_avg": True,
            "learn_in_w": False, ("stylegan_size" if family == "e4e" else "output_size"): resolution}
    if family == "restyle":
        opts["n_iters_per_batch"] = 5
    torch.save({"state_dict": state, "opts": opts, "latent_avg": G.w_avg.repeat(n_styles, 1)}, path)
    return path.stat().st_size


def best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
        del result
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", default="psp,restyle", help=f"from {','.join(KINDS)}")
    parser.add_argument("--resolution", type=int, default=1024, help="the decoder's output size")
    parser.add_argument("--batch", type=int, default=8, help="images encoded at once")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=1, help="ReStyle iterations timed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    peak = matmul_peak(device)
    print(f"# {machine_description(device)}; dense fp32 matmul {peak / 1e9:.0f} GFLOP/s", file=sys.stderr)
    rows = []
    print("| encoder | file | torch.load | load_encoder | ratio | img/s | GFLOP/img | GFLOP/s | of matmul peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for kind in args.encoders.split(","):
            path = Path(tmp) / f"{kind}.pt"
            size = write_full_size_checkpoint(path, kind, args.resolution)
            plain = best_seconds(lambda: torch.load(path, map_location="cpu", weights_only=True), args.repeats)
            ours = best_seconds(lambda: load_encoder(str(path)), args.repeats)
            E = load_encoder(str(path), device=device)
            images = torch.rand(args.batch, 3, 256, 256, device=device) * 2 - 1
            run = lambda: encode(E, images, iterations=args.iterations)  # noqa: E731
            with torch.no_grad():
                work = flops(run) / args.batch
                seconds = median_seconds(lambda: run(), device, repeats=args.repeats)
            ips = args.batch / seconds
            row = dict(encoder=kind, encoder_type=KINDS[kind][1], file_gb=size / 1e9, torch_load_s=plain,
                       load_encoder_s=ours, load_ratio=ours / plain, images_per_s=ips, gflop_per_image=work / 1e9,
                       gflops=work * ips / 1e9, matmul_peak_gflops=peak / 1e9, share_of_peak=work * ips / peak,
                       batch=args.batch, iterations=args.iterations if kind == "restyle" else None)
            rows.append(row)
            print(f"| {kind} ({KINDS[kind][1]}) | {size / 1e9:.2f} GB | {plain:.2f} s | {ours:.2f} s | "
                  f"{ours / plain:.2f}x | {ips:.2f} | {work / 1e9:.1f} | {work * ips / 1e9:.0f} | "
                  f"{work * ips / peak:.0%} |")
            del E
            path.unlink()
    write_results(args.json_path, device, rows)


if __name__ == "__main__":
    main()
