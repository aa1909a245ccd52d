"""Refinement throughput at 256 px: latentmill's batched recipe vs the official projector's way.

Both run the official 256 px generator (random weights) and LPIPS-VGG (random backbone: speed does
not depend on the values), in the same process:
  baseline  one image at a time, fp32, one w for all layers, LPIPS-only loss, per-image noise maps
            optimized with their regularizer, w perturbation, --baseline-steps (official: 1000)
  ours      --batch images at once, --precision, W+, pixel + LPIPS + gaussianized prior,
            --steps steps (default 200: refinement starts from the encoder, not from w_avg)
Seconds per step come from timing runs of two lengths and dividing the difference, so fixed costs
(setup, the final evaluation) cancel. images/s = batch / (seconds per step * steps per image).

  python -m benchmarks.refine --batch 16 --precision bf16

With --official-repo DIR (an export of NVlabs/stylegan2-ada-pytorch), the baseline is the official
projector's `project()` itself, unmodified, beside latentmill's refine (benchmarks/refine_official.py):
per-step cost and FLOPs at --resolution for each of --batches, MFU against this machine's matmul
rate, and time to the official projector's LPIPS on the bundled demo model with its encoder.

  python -m benchmarks.refine --official-repo stylegan2-ada-pytorch --batches 1,2,4 --precision fp32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.generator import official_generator
from benchmarks.timing import machine_description, synchronize
from benchmarks.stand_in_weights import save_random_backbone
from pipeline.losses.lpips_loss import LPIPSLoss
from pipeline.priors.gaussian import GaussianizedPrior
from pipeline.stages.refine import refine


def seconds_per_step(run, device: torch.device, short: int, long: int, repeats: int = 3) -> float:
    """Seconds per step from a long and a short run (their set-up cancels out), each the best of `repeats`
    interleaved runs; where a busy machine leaves no positive difference, the long run's seconds per step
    (an upper bound that includes the set-up)."""
    run(1)  # warm-up (allocations, kernels)
    timings = {short: float("inf"), long: float("inf")}
    for _ in range(repeats):
        for steps in (short, long):
            synchronize(device)
            start = time.perf_counter()
            run(steps)
            synchronize(device)
            timings[steps] = min(timings[steps], time.perf_counter() - start)
    difference = (timings[long] - timings[short]) / (long - short)
    return difference if difference > 0 else timings[long] / long


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16, help="images refined at once by latentmill")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=200, help="latentmill steps per image")
    parser.add_argument("--baseline-steps", type=int, default=1000, help="official projector steps per image")
    parser.add_argument("--timing-steps", default="2,6", help="the two run lengths timed (short,long)")
    parser.add_argument("--fused-modconv", choices=["auto", "fused", "unfused"], default="unfused")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", dest="json_path", help="also write the results here")
    parser.add_argument("--official-repo", help="an export of NVlabs/stylegan2-ada-pytorch: compare with its project()")
    parser.add_argument("--official-cuda-plugins", action="store_true", help="with --official-repo: let the official "
                        "code build its CUDA kernels (default: its reference ops, as on a CPU)")
    parser.add_argument("--batches", default="1,2,4", help="with --official-repo: latentmill batch sizes timed")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats of each run length (with "
                        "--official-repo: interleaved across methods)")
    parser.add_argument("--channel-max", type=int, help="cap the generator's channels (a tiny network for smoke "
                        "runs; default: the official configuration's)")
    parser.add_argument("--equal-images", type=int, default=4, help="with --official-repo: demo images of part 2 "
                        "(0 skips it)")
    parser.add_argument("--official-steps", type=int, default=1000, help="with --official-repo: project() steps of "
                        "part 2 (its default)")
    parser.add_argument("--ladder", default="0,10,20,30,40,50,75,100,200,400", help="with --official-repo: refinement steps "
                        "tried after the encoder, until the official LPIPS is reached")
    args = parser.parse_args(argv)
    if args.official_repo:
        official_main(args)
        return
    device = torch.device(args.device)
    short, long = map(int, args.timing_steps.split(","))
    fused = {"auto": None, "fused": True, "unfused": False}[args.fused_modconv]

    G = official_generator(args.resolution, channel_max=args.channel_max).to(device).requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        lpips = LPIPSLoss("vgg", str(save_random_backbone(Path(tmp) / "vgg.pth"))).to(device)
    prior = GaussianizedPrior.fit(G, num_samples=20_000, batch_size=5_000, device=device, progress=False)
    torch.manual_seed(0)
    targets = torch.rand(args.batch, 3, args.resolution, args.resolution, device=device) * 2 - 1
    init = G.w_avg.expand(args.batch, G.num_ws, -1).clone()

    def baseline(steps: int) -> None:
        refine(G, targets[:1], init[:1], steps=steps, latent_space="w", pixel_weight=0.0, perceptual=lpips,
               optimize_noise=True, w_noise_factor=0.05, precision="fp32")

    def ours(steps: int) -> None:
        refine(G, targets, init, steps=steps, perceptual=lpips, prior=prior, precision=args.precision,
               fused_modconv=fused)

    print(f"# {machine_description(device)}", file=sys.stderr)
    base_step = seconds_per_step(baseline, device, short, long, args.repeats)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ours_step = seconds_per_step(ours, device, short, long, args.repeats)
    memory = torch.cuda.max_memory_allocated(device) / args.batch / 2**20 if device.type == "cuda" else None

    base_ips = 1 / (base_step * args.baseline_steps)
    ours_ips = args.batch / (ours_step * args.steps)
    per_step_ratio = (args.batch / ours_step) / (1 / base_step)
    result = dict(machine=machine_description(device), resolution=args.resolution, batch=args.batch,
                  precision=args.precision, steps=args.steps, baseline_steps=args.baseline_steps,
                  baseline_s_per_step=base_step, ours_s_per_step=ours_step, baseline_img_per_s=base_ips,
                  ours_img_per_s=ours_ips, ratio=ours_ips / base_ips, per_image_step_ratio=per_step_ratio,
                  gpu_mib_per_image=memory)
    print("| method | batch | precision | steps/image | s/step | images/s |")
    print("|---|---|---|---|---|---|")
    print(f"| official projector recipe | 1 | fp32 | {args.baseline_steps} | {base_step:.3f} | {base_ips:.5f} |")
    print(f"| latentmill refine | {args.batch} | {args.precision} | {args.steps} | {ours_step:.3f} | {ours_ips:.5f} |")
    print(f"\nratio (images/s): {ours_ips / base_ips:.1f}x; of which per-step throughput per image "
          f"{per_step_ratio:.2f}x and fewer steps {args.baseline_steps / args.steps:.1f}x; "
          f"GPU memory per image: {'n/a (CPU)' if memory is None else f'{memory:.0f} MiB'}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))


def official_main(args: argparse.Namespace) -> None:
    from benchmarks.official_code import OfficialCode
    from benchmarks.refine_official import equal_lpips_row, per_step_rows

    device = torch.device(args.device)
    short, long = map(int, args.timing_steps.split(","))
    official = OfficialCode(args.official_repo, cuda_plugins=args.official_cuda_plugins)
    if args.official_cuda_plugins:
        print(f"# official CUDA plugins: {'built and used' if official.cuda_plugins else 'unavailable, reference ops'}",
              file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        lpips = LPIPSLoss("vgg", str(save_random_backbone(Path(tmp) / "vgg.pth"))).to(device)
    print(f"# {machine_description(device)}", file=sys.stderr)
    G = official_generator(args.resolution, channel_max=args.channel_max).requires_grad_(False)
    rows = per_step_rows(official, G, lpips, batches=[int(b) for b in args.batches.split(",")],
                         precision=args.precision, short=short, long=long, repeats=args.repeats, device=device)
    print(f"Per image-step at {args.resolution} px, {args.precision}; peak (fp32 matmul, same run): "
          f"{rows[0]['peak_gflop_per_s']:.0f} GFLOP/s\n")
    print("| method | s / image-step | GFLOP / image-step | GFLOP/s | MFU | vs official |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['s_per_image_step']:.3f} | {r['gflop_per_image_step']:.1f} | "
              f"{r['gflop_per_s']:.1f} | {r['mfu']:.0%} | {r['speed_vs_official']:.2f}x |")
    result = {"machine": machine_description(device), "resolution": args.resolution, "precision": args.precision,
              "per_step": rows}
    if args.equal_images:
        equal = equal_lpips_row(official, lpips, images=args.equal_images, official_steps=args.official_steps,
                                ladder=[int(s) for s in args.ladder.split(",")], device=device)
        result["equal_lpips"] = equal
        print(f"\nDemo model, {equal['images']} images: official project() {equal['official_steps']} steps "
              f"{equal['official_s_per_image']:.2f} s/image to LPIPS {equal['official_lpips']:.4f}; latentmill "
              f"encoder + {equal['ours_steps']} steps {equal['ours_s_per_image']:.3f} s/image to LPIPS "
              f"{equal['ours_lpips']:.4f} ({'reached' if equal['reached'] else 'NOT reached'}): "
              f"{equal['speed_vs_official']:.1f}x")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
