"""Inversion quality per precision: the same images refined for the same steps in each precision.

The bundled demo model (generator, encoder, gaussianized prior: trained, not random) inverts the first
--images of its sample: encoder, then --steps of refinement (pixel + LPIPS + prior) in each precision,
every image from the same start. The final reconstructions are scored in fp32 by MSE and by LPIPS-VGG.
LPIPS here uses a random-weight VGG16 backbone (seeded: the real ImageNet weights cannot be downloaded on
the machines these figures come from); its distances rank reconstructions consistently but are not the
published LPIPS values.

Per precision: the median final MSE and LPIPS, their ratio to fp32's, and the share of images whose
LPIPS is more than 1% worse than their own fp32 result. TF32 (fp32 matmuls on tensor cores) is a row on
CUDA only. `auto` is checked against the rule it must keep: the precision it picks on this device costs at
most 1% in median final LPIPS.

  python -m benchmarks.precision_quality --images 64 --steps 100 --json quality.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.timing import machine_description, synchronize
from benchmarks.stand_in_weights import save_random_backbone
from pipeline.losses.lpips_loss import LPIPSLoss
from pipeline.precision import resolve_precision

AUTO_LPIPS_BUDGET = 0.01  # --precision auto may cost at most this fraction of median final LPIPS
WORSE_BY = 0.01  # an image counts as worse when its LPIPS exceeds its fp32 result by more than this fraction


@contextmanager
def tf32(enabled: bool):
    """fp32 with tensor-core (TF32) matmuls and convolutions while inside, on CUDA."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def precisions_for(device: torch.device, asked: list[str] | None) -> list[str]:
    available = ["fp32", "tf32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16", "fp16"]
    chosen = asked or available
    unknown = [p for p in chosen if p not in available]
    if unknown:
        raise SystemExit(f"--precisions: {unknown} not available on {device.type} (choose from {available})")
    return ["fp32", *[p for p in chosen if p != "fp32"]]  # fp32 first: the reference


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32, help="images refined at once")
    parser.add_argument("--precisions", default="", help="comma-separated (default: every one the device runs)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from pipeline.data.image_pool import load_image_pool
    from pipeline.demo import DemoBundle
    from pipeline.models.checkpoints import load_generator
    from pipeline.models.encoder import encode, load_encoder
    from pipeline.priors.load import load_prior
    from pipeline.stages.refine import refine

    device = torch.device(args.device)
    precisions = precisions_for(device, [p for p in args.precisions.split(",") if p] or None)
    demo = DemoBundle.locate()
    G = load_generator(demo.generator, device=device)
    E = load_encoder(demo.encoder, generator=G, device=device)
    prior = load_prior(demo.prior, generator=G).to(device)
    targets = load_image_pool(demo.sample, resolution=G.img_resolution, channels=G.img_channels,
                              max_images=args.images).images.to(device)
    with tempfile.TemporaryDirectory() as tmp:
        lpips = LPIPSLoss("vgg", str(save_random_backbone(Path(tmp) / "vgg16.pt", seed=0))).to(device)
    with torch.no_grad():
        init = encode(E, targets).float()

    def score(ws: torch.Tensor) -> tuple[list[float], list[float]]:
        mse, dist = [], []
        with torch.no_grad():
            for lo in range(0, len(ws), args.batch):
                x = G.synthesis(ws[lo : lo + args.batch], noise_mode="const").float()
                y = targets[lo : lo + args.batch]
                mse += ((x - y) ** 2).mean(dim=(1, 2, 3)).tolist()
                dist += lpips(x, y).tolist()
        return mse, dist

    rows = []
    reference: list[float] | None = None
    for precision in precisions:
        run_as = "fp32" if precision == "tf32" else precision
        start = time.perf_counter()
        with tf32(precision == "tf32"):
            ws = torch.cat([refine(G, targets[lo : lo + args.batch], init[lo : lo + args.batch], steps=args.steps,
                                   perceptual=lpips, prior=prior, precision=run_as).ws
                            for lo in range(0, len(targets), args.batch)])
        synchronize(device)
        seconds = time.perf_counter() - start
        mse, dist = score(ws.float())
        reference = reference or dist
        row = {"precision": precision, "images": len(targets), "steps": args.steps,
               "median_mse": statistics.median(mse), "median_lpips": statistics.median(dist),
               "share_worse_than_fp32": sum(d > r * (1 + WORSE_BY) for d, r in zip(dist, reference)) / len(dist),
               "seconds": seconds}
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["lpips_vs_fp32"] = row["median_lpips"] / base["median_lpips"]
        row["mse_vs_fp32"] = row["median_mse"] / base["median_mse"]
    auto, why = resolve_precision("auto", device)
    auto_row = next((r for r in rows if r["precision"] == auto), None)
    result = {"machine": machine_description(device), "device": str(device), "lpips_backbone": "random-weight VGG16",
              "model": "bundled demo (32 px, trained)", "auto": auto, "auto_why": why,
              "auto_lpips_cost": None if auto_row is None else auto_row["lpips_vs_fp32"] - 1,
              "auto_within_budget": None if auto_row is None else auto_row["lpips_vs_fp32"] <= 1 + AUTO_LPIPS_BUDGET,
              "rows": rows}
    print(f"# {result['machine']}; LPIPS with a random-weight VGG16; {len(targets)} images, {args.steps} steps")
    print("| precision | median MSE | median LPIPS | LPIPS vs fp32 | images > 1% worse | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['median_mse']:.5f} | {r['median_lpips']:.5f} | {r['lpips_vs_fp32']:.4f} | "
              f"{100 * r['share_worse_than_fp32']:.0f}% | {r['seconds']:.1f} |")
    print(f"auto picks {auto} here ({why}); LPIPS cost {result['auto_lpips_cost']}, within the 1% budget: "
          f"{result['auto_within_budget']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
