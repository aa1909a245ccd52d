"""StyleGAN2 generator throughput: forward and forward+backward images/s.

Official architectures with random weights (speed does not depend on the values):
  256 px  = stylegan2-ada-pytorch 'paper256' (channel_base 16384, channel_max 512, 14 ws)
  1024 px = the FFHQ 1024 config-f network (channel_base 32768, channel_max 512, 18 ws)
Forward+backward takes gradients with respect to ws, as inversion does (G frozen).

  python -m benchmarks.generator --resolutions 256,1024 --batch-sizes 1,8,32 --dtypes fp32,bf16
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.timing import autocast, machine_description, median_seconds, write_results
from pipeline.models.stylegan2 import Generator

OFFICIAL_CONFIGS = {
    256: dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256),
    512: dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256),
    1024: dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256),
}


def official_generator(resolution: int) -> Generator:
    torch.manual_seed(0)
    return Generator(z_dim=512, w_dim=512, img_resolution=resolution, img_channels=3,
                     mapping_kwargs={"num_layers": 8}, synthesis_kwargs=OFFICIAL_CONFIGS[resolution]).eval()


def measure(G: Generator, batch: int, dtype: str, fused: bool, backward: bool, device: torch.device,
            repeats: int) -> float:
    ws = G.mapping(torch.randn(batch, G.z_dim, device=device)).detach()

    def step() -> None:
        x = ws.clone().requires_grad_(backward)
        with autocast(device, dtype), torch.set_grad_enabled(backward):
            img = G.synthesis(x, fused_modconv=fused)
        if backward:
            img.square().mean().backward()

    return batch / median_seconds(step, device, repeats=repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", default="256,1024", help="comma-separated, from 256/512/1024")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--dtypes", default="fp32,bf16", help="fp32, bf16 and/or fp16 (autocast)")
    parser.add_argument("--modes", default="fused,unfused", help="modulated-conv implementations to compare")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per figure (median reported)")
    parser.add_argument("--max-images", type=int, default=10**9,
                        help="skip settings whose batch exceeds this (keeps CPU runs short)")
    parser.add_argument("--json", dest="json_path", help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    print(f"# {machine_description(device)}", file=sys.stderr)
    print("| resolution | batch | dtype | modconv | forward img/s | fwd+bwd img/s |")
    print("|---|---|---|---|---|---|")
    for res in map(int, args.resolutions.split(",")):
        G = official_generator(res).to(device).requires_grad_(False)
        for batch in map(int, args.batch_sizes.split(",")):
            if batch > args.max_images:
                continue
            for dtype in args.dtypes.split(","):
                for mode in args.modes.split(","):
                    fused = mode == "fused"
                    fwd = measure(G, batch, dtype, fused, False, device, args.repeats)
                    bwd = measure(G, batch, dtype, fused, True, device, args.repeats)
                    rows.append(dict(resolution=res, batch=batch, dtype=dtype, modconv=mode,
                                     forward_img_per_s=fwd, forward_backward_img_per_s=bwd))
                    print(f"| {res} | {batch} | {dtype} | {mode} | {fwd:.2f} | {bwd:.2f} |", flush=True)
    write_results(args.json_path, device, rows)


if __name__ == "__main__":
    main()
