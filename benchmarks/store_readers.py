"""Readers of a large store: time and memory of what reads a whole store, at several sizes.

Writes a synthetic store of N rows (the demo generator's latents, 8 x 64 float32 per row, w_refined
drawn from its mapping; 2% error rows; shards of `--shard-rows`) through the store's own writer, then
runs each reader in a fresh process and records its wall time and its peak memory above what the
process held once imports and models were loaded:
- `summary`: the end-of-run summary (counts and errors by reason, from the manifest);
- `iter_batches`: open_store(...).iter_batches over id, status and mse;
- `report_rows`: the report's pass over the scalar columns (sample, worst rows, counts);
- `curate`: `latentmill curate` (streamed rows, the approximate near-duplicate search beyond small stores);
- `rebalance`: `latentmill rebalance --groups kmeans:4 --method sample --max-new 64` (streamed groups,
  k-means on a sample, the latents of just the rows candidates come from).
Flat memory across sizes is the claim; the growth of each time is fitted between sizes.

  python -m benchmarks.store_readers --rows 100000,1000000 --json out.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from benchmarks.timing import MEMORY_PROBE, PEAK_RESET, growth_exponent, machine_description, write_results

REPO = Path(__file__).resolve().parents[1]
READERS = {
    "summary": "store = open_store(uri); rows = store.count_rows(); reasons = store.error_reasons()",
    "iter_batches": "store = open_store(uri)\nfor batch in store.iter_batches(['image_id', 'status', 'mse']): pass",
    "report_rows": "from pipeline.report.report_rows import collect\ncollect(open_store(uri))",
    "curate": "from jobs.curate import CurateConfig, run\nrun(CurateConfig(store=uri, progress=False, device='cpu'))",
    "rebalance": "from jobs.rebalance import RebalanceConfig, run\nrun(RebalanceConfig(store=uri, groups='kmeans:4', "
                 "method='sample', output=uri + '-rebalanced', max_new=64, progress=False, device='cpu'))",
}
PROLOGUE = """
import sys, time
import torch
from pipeline.store import open_store
from pipeline.demo import DemoBundle
from pipeline.models.checkpoints import load_generator
uri = sys.argv[1]
load_generator(DemoBundle.locate().generator)  # the models every reader may load, counted in the baseline
""" + MEMORY_PROBE + """baseline = status("VmRSS:")
""" + PEAK_RESET + """start = time.perf_counter()
"""
EPILOGUE = """
print(time.perf_counter() - start, status("VmHWM:") - baseline)
"""


def write_store(root: Path, rows: int, shard_rows: int, seed: int = 0) -> str:
    """A store of `rows` rows written through claim() / ShardWriter, as invert writes one (its latents drawn
    from G's mapping with `seed`)."""
    from pipeline.demo import DemoBundle
    from pipeline.models.checkpoints import load_generator
    from pipeline.models.fingerprint import fingerprint
    from pipeline.store.schema import SCHEMA_VERSION, latents_schema
    from pipeline.store.writer import claim

    bundle = DemoBundle.locate()
    G = load_generator(bundle.generator)
    schema = latents_schema(G.num_ws, G.w_dim, latent_columns=("w_refined",), metadata={
        "generator": bundle.generator, "generator_fingerprint": fingerprint(G), "prior": bundle.prior,
        "img_resolution": G.img_resolution, "img_channels": G.img_channels, "noise_mode": "const",
        "settings": {"stages": ["refine"]}})
    store = str(root / "store")
    generator = torch.Generator().manual_seed(seed)
    with claim(store) as writer:
        shard_writer = writer.shard_writer(None)
        for shard, lo in enumerate(range(0, rows, shard_rows)):
            n = min(shard_rows, rows - lo)
            with torch.no_grad():
                ws = G.mapping(torch.randn(n, G.z_dim, generator=generator))
            status = np.where(np.arange(lo, lo + n) % 50 == 7, "error", "ok")
            columns = {f.name: pa.nulls(n, f.type) for f in schema}
            columns.update(
                image_id=pa.array([f"img{lo + i:09d}" for i in range(n)]),
                source_uri=pa.array([f"synthetic#{lo + i}" for i in range(n)]), shard=pa.array([f"s{shard:05d}"] * n),
                status=pa.array(status), error=pa.array([None if s == "ok" else "corrupt: synthetic" for s in status]),
                w_refined=pa.FixedSizeListArray.from_arrays(pa.array(ws.flatten().numpy()), G.num_ws * G.w_dim),
                mse=pa.array(np.random.default_rng(lo).random(n).astype(np.float32)),
                model_fingerprint=pa.array([fingerprint(G)] * n), schema_version=pa.array([SCHEMA_VERSION] * n,
                                                                                          pa.int16()))
            table = pa.table([columns[f.name] for f in schema], schema=schema)
            ok = int((status == "ok").sum())
            shard_writer.write(f"s{shard:05d}", table, {"shard": f"s{shard:05d}", "rows": n, "ok": ok,
                                                         "errors": n - ok, "error_reasons": {"corrupt": n - ok}})
        writer.write_json("store.json", {"recipe_version": 2, "input": "synthetic", "models": {},
                                         "settings": {"stages": ["refine"]}})
    return store


def run_reader(name: str, store: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", PROLOGUE + READERS[name] + EPILOGUE, store], capture_output=True,
                         text=True, cwd=REPO)
    if out.returncode:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    seconds, megabytes = map(float, out.stdout.split()[-2:])
    return seconds, megabytes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--readers", default=",".join(READERS))
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    results: list[dict] = []
    print("| rows | reader | seconds | peak MiB above imports | time growth exponent |")
    print("|---|---|---|---|---|")
    for n in map(int, args.rows.split(",")):
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            start = time.perf_counter()
            store = write_store(Path(tmp), n, args.shard_rows)
            print(f"# wrote {n:,} rows in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            for name in args.readers.split(","):
                seconds, megabytes = run_reader(name, store)
                row = {"rows": n, "reader": name, "seconds": round(seconds, 4),
                       "peak_mb_above_imports": round(megabytes, 1)}
                earlier = [r for r in results if r["reader"] == name]
                exponent = "-"
                if earlier and earlier[-1]["seconds"] > 0 and seconds > 0:
                    row["time_exponent"] = growth_exponent(earlier[-1]["rows"], earlier[-1]["seconds"], n, seconds)
                    exponent = f"{row['time_exponent']:.2f}"
                results.append(row)
                print(f"| {n:,} | {name} | {seconds:.2f} | {megabytes:.0f} | {exponent} |", flush=True)
    device = torch.device("cpu")
    print(f"# {machine_description(device)}", file=sys.stderr)
    write_results(args.json_path, device, results)


if __name__ == "__main__":
    main()
