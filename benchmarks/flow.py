"""The flow prior's costs: fit-flow's training time for 1e6 samples, and log_prob throughput, each
against the gaussianized prior it improves on (fit-prior on the same samples; its log_prob).

Runs fit-flow's own training step (pipeline/training/flow_task.py) in this process, so Ray Train's
start-up (about 20 s, once per job) is not in the figure. Generators: the bundled demo model
(64-d W) and the official 512-d mapping with random weights (what an FFHQ model's flow costs; its
held-out gain means nothing, its time does).

  python -m benchmarks.flow --generators demo,official --samples 1000000 --batch-size 500
  python -m benchmarks.flow --generators official --samples 50000 --device cuda --batch-size 5000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.generator import official_generator
from benchmarks.timing import machine_description, median_seconds, synchronize, write_results
from jobs.fit_flow import FitFlowConfig
from pipeline.training.flow_task import FlowTask
from pipeline.models.bundle import write_bundle
from pipeline.priors.gaussian import GaussianizedPrior, mapped_samples


def generator_file(name: str, root: Path) -> str:
    if name == "demo":
        from pipeline.demo import DemoBundle

        return DemoBundle.locate().generator
    path = root / "official.safetensors"
    write_bundle(str(path), {"G_ema": official_generator(256)})
    return str(path)


def fit_costs(generator: str, name: str, samples: int, batch_size: int, device: torch.device) -> dict:
    steps = max(1, samples // batch_size)
    cfg = FitFlowConfig(generator=generator, output="unused", steps=steps, batch_size=batch_size,
                        init_samples=100_000, eval_samples=10_000, progress=False)
    start = time.perf_counter()
    task = FlowTask(cfg, device)
    synchronize(device)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    for step in range(steps):
        task.update(step, torch.Generator(device=device).manual_seed(step))
    synchronize(device)
    train = time.perf_counter() - start
    figures = task.evaluate(steps)
    # the baseline: fit-prior's streaming moments on the same number of samples
    start = time.perf_counter()
    GaussianizedPrior.fit(task.G, num_samples=steps * batch_size, batch_size=10_000, device=device, progress=False)
    synchronize(device)
    baseline = time.perf_counter() - start
    return {"generator": name, "w_dim": task.G.w_dim, "samples": steps * batch_size, "batch_size": batch_size,
            "flow_parameters": sum(p.numel() for p in task.flow.parameters()),
            "setup_s": round(setup, 2), "train_s": round(train, 2),
            "train_s_per_1e6_samples": round(train / (steps * batch_size) * 1e6, 1),
            "fit_prior_s": round(baseline, 2), "flow_over_fit_prior": round(train / baseline, 1), **figures,
            "flow": task.flow, "G": task.G}


def log_prob_throughput(row: dict, device: torch.device, batch: int) -> dict:
    flow, G = row.pop("flow"), row.pop("G")
    prior = GaussianizedPrior.fit(G, num_samples=20_000, batch_size=10_000, device=device, progress=False)
    ws = mapped_samples(G, batch, torch.Generator(device=device).manual_seed(0))
    with torch.no_grad():
        flow_s = median_seconds(lambda: flow.log_prob(ws), device, warmup=2, repeats=5)
        gauss_s = median_seconds(lambda: prior.log_prob(ws), device, warmup=2, repeats=5)
    return {**row, "log_prob_batch": batch, "flow_log_prob_per_s": round(batch / flow_s),
            "gaussianized_log_prob_per_s": round(batch / gauss_s),
            "gaussianized_over_flow_speed": round(flow_s / gauss_s, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generators", default="demo,official")
    parser.add_argument("--samples", type=int, default=1_000_000, help="training samples timed")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--log-prob-batch", type=int, default=10_000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"machine: {machine_description(device)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.generators.split(","):
            row = fit_costs(generator_file(name, Path(tmp)), name, args.samples, args.batch_size, device)
            row = log_prob_throughput(row, device, args.log_prob_batch)
            print(row, flush=True)
            rows.append(row)
    write_results(args.json, device, rows)
    print("| generator | w_dim | samples | batch | flow params | fit-flow s per 1e6 | fit-prior s (same samples) | "
          "held-out gain, nats | log_prob/s flow | log_prob/s gaussianized |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['generator']} | {r['w_dim']} | {r['samples']:,} | {r['batch_size']} | {r['flow_parameters']:,} | "
              f"{r['train_s_per_1e6_samples']} | {r['fit_prior_s']} | {r['gain_nats']} | "
              f"{r['flow_log_prob_per_s']:,} | {r['gaussianized_log_prob_per_s']:,} |")


if __name__ == "__main__":
    main()
