"""End-to-end `latentmill invert` throughput at 256 px on the embedded Ray.

Builds, in a temporary directory, the official 256 px generator (random weights), an encoder, a
fitted prior, LPIPS and FaceNet weight files (random), and a folder of synthetic 256 px images; then
runs the real job (all four stages) and reports images/s over the whole run (model loading and Ray
start included) and per image in the actors. On a GPU it also samples utilization every 0.5 s.

  python -m benchmarks.invert --images 64 --steps 200 --batch-size 16 --num-gpus 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import torch
from PIL import Image

from benchmarks.generator import official_generator
from benchmarks.timing import machine_description
from jobs.invert import run
from benchmarks.stand_in_weights import save_random_backbone
from pipeline.models.bundle import write_bundle
from pipeline.models.encoder import Encoder
from pipeline.priors.gaussian import GaussianizedPrior
from pipeline.invert.config import InvertConfig
from benchmarks.stand_in_weights import save_random_facenet
from pipeline.store.store import Store


def sample_utilization(stop: threading.Event, samples: list[float]) -> None:
    while not stop.is_set():
        samples.append(float(torch.cuda.utilization()))
        stop.wait(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--num-gpus", type=float, default=1.0 if torch.cuda.is_available() else 0.0)
    parser.add_argument("--cpus-per-actor", type=float, default=1.0,
                        help="Ray limits each actor's torch threads to this (matters on CPU)")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.num_gpus > 0 else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        G = official_generator(256)
        write_bundle(str(root / "g.safetensors"), {"G_ema": G})
        torch.manual_seed(0)
        write_bundle(str(root / "e.safetensors"), {"E": Encoder.for_generator(G)})
        GaussianizedPrior.fit(G, num_samples=20_000, batch_size=5000, progress=False).save(str(root / "p.safetensors"))
        (root / "in").mkdir()
        with torch.no_grad():
            for i in range(args.images):  # the generator's own samples: realistic inputs for its domain
                img = G(torch.randn(1, 512, generator=torch.Generator().manual_seed(i)))[0]
                array = ((img.clamp(-1, 1) + 1) * 127.5).byte().permute(1, 2, 0).numpy()
                Image.fromarray(array).save(root / "in" / f"{i:05d}.png")
        config = InvertConfig(
            input=str(root / "in"), output=str(root / "store"), generator=str(root / "g.safetensors"),
            encoder=str(root / "e.safetensors"), prior=str(root / "p.safetensors"),
            lpips_weights=str(save_random_backbone(root / "vgg.pth")),
            facenet_weights=save_random_facenet(str(root / "facenet.pt")), steps=args.steps,
            batch_size=args.batch_size, precision=args.precision, concurrency=args.concurrency,
            num_gpus=args.num_gpus, cpus_per_actor=args.cpus_per_actor, shard_size=max(args.batch_size, args.images // max(args.concurrency, 1)),
            progress=False)
        stop, samples = threading.Event(), []
        if device.type == "cuda":
            threading.Thread(target=sample_utilization, args=(stop, samples), daemon=True).start()
        start = time.perf_counter()
        summary = run(config)
        wall = time.perf_counter() - start
        stop.set()
        actor_seconds = sum(e["seconds"] for e in Store(config.output).finished.values())
    result = {"machine": machine_description(device), "images": args.images, "steps": args.steps,
              "batch_size": args.batch_size, "precision": args.precision, "concurrency": args.concurrency,
              "cpus_per_actor": args.cpus_per_actor,
              "ok": summary.ok, "wall_seconds": round(wall, 2), "images_per_second_wall": args.images / wall,
              "images_per_second_in_actors": args.images / actor_seconds,
              "gpu_utilization_mean": sum(samples) / len(samples) if samples else None}
    print(json.dumps(result, indent=2))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
