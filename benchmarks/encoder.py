"""Encoder throughput at 256 px: forward images/s, and training steps/s against the official generator.

A training step samples a batch from G (mapping + synthesis), encodes it, renders the prediction
and back-propagates pixel + latent losses through G into E, as `latentmill train-encoder` does
(perceptual loss off here, to time the encoder and generator alone). Random weights.

  python -m benchmarks.encoder --backbones convnet,resnet18 --batch-sizes 1,16 --train-batch 8
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.generator import official_generator
from benchmarks.timing import autocast, machine_description, median_seconds, write_results
from pipeline.models.encoder import Encoder, encode
from pipeline.training.encoder_training import LossWeights, encoder_losses, sample_training_batch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--backbones", default="convnet,resnet18")
    parser.add_argument("--batch-sizes", default="1,16", help="forward-pass batch sizes")
    parser.add_argument("--train-batch", type=int, default=8, help="batch of the timed training steps")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="autocast for the forward pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channel-max", type=int, help="cap the generator's channels (a tiny network for smoke "
                        "runs; default: the official configuration's)")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    G = official_generator(args.resolution, channel_max=args.channel_max).to(device).requires_grad_(False)
    rows = []
    print(f"# {machine_description(device)}", file=sys.stderr)
    print("| backbone | measure | batch | value |")
    print("|---|---|---|---|")
    for backbone in args.backbones.split(","):
        E = Encoder.for_generator(G, backbone=backbone).to(device)
        E.eval()
        for batch in map(int, args.batch_sizes.split(",")):
            images = torch.rand(batch, 3, args.resolution, args.resolution, device=device) * 2 - 1

            def forward() -> None:
                with torch.no_grad(), autocast(device, args.dtype):
                    encode(E, images)

            ips = batch / median_seconds(forward, device, repeats=args.repeats)
            rows.append(dict(backbone=backbone, measure=f"forward img/s ({args.dtype})", batch=batch, value=ips))
            print(f"| {backbone} | forward img/s ({args.dtype}) | {batch} | {ips:.2f} |", flush=True)
        E.train()
        optimizer = torch.optim.Adam(E.parameters(), lr=1e-4)
        rng = torch.Generator(device=device).manual_seed(0)

        def train_step() -> None:
            batch = sample_training_batch(G, args.train_batch, rng)
            loss = encoder_losses(E, G, batch, perceptual=None, weights=LossWeights())["total"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        sps = 1 / median_seconds(train_step, device, repeats=args.repeats)
        rows.append(dict(backbone=backbone, measure="train steps/s (fp32)", batch=args.train_batch, value=sps))
        print(f"| {backbone} | train steps/s (fp32) | {args.train_batch} | {sps:.3f} |", flush=True)
    write_results(args.json_path, device, rows)


if __name__ == "__main__":
    main()
