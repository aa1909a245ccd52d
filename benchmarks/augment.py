"""Throughput of `latentmill augment` against the generator's render ceiling, and its memory at two store sizes.

For each store size a synthetic store (benchmarks/store_readers.py: the demo generator's mapped latents,
its prior, 2% error rows) is augmented in a fresh process (`--runner local`, one worker, so the figure is
one replica's): variants per second over the run (the units' time, not the start-up), and, in the same
process before and after it, the render ceiling: G.synthesis alone on a batch of the same size (median
of 40 repeats each time; their mean), images per second. The ratio is what augment keeps of the ceiling (the rest: the source renders,
the edits, the prior's NLL, PNG encoding, the tar and Parquet writes). Peak memory is the process's high
water mark above what it held once the models were loaded; flat across sizes is the claim.

  python -m benchmarks.augment --rows 2000,8000 --json out.json
  python -m benchmarks.augment --rows 20000 --edits jitter:0.3 --variants 4 --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.store_readers import write_store
from benchmarks.timing import MEMORY_PROBE, PEAK_RESET, growth_exponent, machine_description, write_results

REPO = Path(__file__).resolve().parents[1]
EDITS = "jitter:0.3,mix:4-7,attribute:b16.conv0/3:2"

ONE_SIZE = """
import json, sys, time
import torch
from benchmarks.timing import median_seconds
from jobs.augment import AugmentConfig, run
from pipeline.demo import DemoBundle
from pipeline.models.checkpoints import load_generator
from pipeline.stages.chain import NOISE_MODE
store, out, edits, variants, batch, device = sys.argv[1:7]
G = load_generator(DemoBundle.locate().generator).to(device)
""" + MEMORY_PROBE + """ws = G.mapping(torch.randn(int(batch), G.z_dim, device=device), None).detach()
def ceiling():
    with torch.no_grad():
        return int(batch) / median_seconds(lambda: G.synthesis(ws, noise_mode=NOISE_MODE), torch.device(device),
                                           warmup=2, repeats=40)
before = ceiling()
baseline = status("VmRSS:")
""" + PEAK_RESET + """summary = run(AugmentConfig(store=store, output=out, edits=edits, variants=int(variants), batch_size=int(batch),
                            runner="local", device=device, progress=False))
peak = status("VmHWM:") - baseline
after = ceiling()
print(json.dumps({"variants": summary["last_run"]["variants_made"], "seconds": summary["last_run"]["seconds"],
                  "variants_per_second": summary["last_run"]["variants_per_second"],
                  "ceiling_images_per_second": (before + after) / 2, "ceiling_before": before,
                  "ceiling_after": after, "peak_mb_above_models": peak,
                  "accepted": summary["accepted"], "sources": summary["sources"]}))
"""


def run_size(store: str, out: str, edits: str, variants: int, batch: int, device: str) -> dict:
    result = subprocess.run([sys.executable, "-c", ONE_SIZE, store, out, edits, str(variants), str(batch), device],
                            capture_output=True, text=True, cwd=REPO)
    if result.returncode:
        raise SystemExit(f"augment failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="2000,8000", help="store sizes (rows; 2%% are error rows)")
    parser.add_argument("--shard-rows", type=int, default=1000)
    parser.add_argument("--edits", default=EDITS)
    parser.add_argument("--variants", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    results: list[dict] = []
    print("| store rows | variants | seconds | variants/s | render ceiling img/s | ratio | peak MiB | time exponent |")
    print("|---|---|---|---|---|---|---|---|")
    for n in map(int, args.rows.split(",")):
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            start = time.perf_counter()
            store = write_store(Path(tmp), n, args.shard_rows)
            print(f"# wrote {n:,} rows in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            row = {"rows": n, "edits": args.edits, "variants_per_edit": args.variants, "batch_size": args.batch_size,
                   **run_size(store, str(Path(tmp) / "augmented"), args.edits, args.variants, args.batch_size,
                              args.device)}
        row["ratio_to_ceiling"] = round(row["variants_per_second"] / row["ceiling_images_per_second"], 3)
        exponent = "-"
        if results and results[-1]["seconds"] > 0:
            row["time_exponent"] = growth_exponent(results[-1]["rows"], results[-1]["seconds"], n, row["seconds"])
            exponent = f"{row['time_exponent']:.2f}"
        results.append(row)
        print(f"| {n:,} | {row['variants']:,} | {row['seconds']:.1f} | {row['variants_per_second']:.0f} | "
              f"{row['ceiling_images_per_second']:.0f} | {row['ratio_to_ceiling']:.2f} | "
              f"{row['peak_mb_above_models']:.0f} | {exponent} |", flush=True)
    write_results(args.json_path, torch.device(args.device), results)
    print(f"# {machine_description(torch.device(args.device))}")


if __name__ == "__main__":
    main()
