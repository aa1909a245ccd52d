"""`latentmill export --format lance`, `nearest` and `curate --against` at scale, beside the exact search.

For each size a synthetic store (benchmarks/store_readers.py: the demo model's 8 x 64 latents, 2% error
rows) is written, then, each in a fresh process (time and peak memory above the imports):
- `export`: `latentmill export --format lance` of the whole store (Lance write and the IVF_PQ index);
- `query`: `--queries` calls of `open_store(STORE).nearest(image_id, k=10)`, answered from the export's
  index (re-ranked exactly): latency p50 / p99, and recall@10 against the exact answer (every row, brute
  force in memory); the exact streamed scan (`nearest` without an export) is timed on a few queries;
- `against` (with `--against-rows`): `latentmill curate STORE --against OTHER` where OTHER is a second
  store of that many rows holding copies of `--planted` rows of STORE (jittered by 1e-5: whitening
  amplifies W's thinnest directions, where 1e-3 already costs some twins 0.05 of cosine): time, memory,
  and how many planted twins were found.

  python -m benchmarks.export --rows 100000,1000000 --against-rows 1000000 --json out.json
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
PROLOGUE = """
import json, sys, time
import numpy as np
from pipeline.store import open_store
""" + MEMORY_PROBE + """baseline = status("VmRSS:")
""" + PEAK_RESET + """start = time.perf_counter()
"""
EXPORT = """
from jobs.export import ExportConfig, run
result = run(ExportConfig(store=sys.argv[1], output=sys.argv[2], progress=False))
print(json.dumps({"seconds": time.perf_counter() - start, "peak_mb": status("VmHWM:") - baseline,
                  "rows": result["rows"], "index": result["index"]}))
"""
QUERY = """
from pipeline.store import nearest as nearest_module
store = open_store(sys.argv[1])
queries, exact_queries = int(sys.argv[3]), int(sys.argv[4])
frame = store.to_pandas(["image_id", "status", "w_refined"])
frame = frame[frame["status"] == "ok"].reset_index(drop=True)
ids = frame["image_id"].to_numpy()
latents = np.stack(frame["w_refined"].to_numpy()).astype(np.float32)  # the brute-force reference, in memory
del frame
picks = np.random.default_rng(0).choice(len(ids), size=queries, replace=False)
latency, recall = [], []
store.nearest(ids[picks[0]], k=10)  # warm: the index and the dataset opened once
for i in picks:
    t0 = time.perf_counter()
    found = store.nearest(ids[i], k=10)
    latency.append(time.perf_counter() - t0)
    distance = np.square(latents - latents[i]).sum(axis=1)
    truth = set(ids[np.argpartition(distance, 10)[:10]])
    recall.append(len(truth & set(found["image_id"])) / 10)
scan = []
for i in picks[:exact_queries]:
    t0 = time.perf_counter()
    nearest_module._scan(store, latents[i], 10, "w_refined")
    scan.append(time.perf_counter() - t0)
print(json.dumps({"p50_ms": 1000 * float(np.percentile(latency, 50)),
                  "p99_ms": 1000 * float(np.percentile(latency, 99)),
                  "recall_at_10": float(np.mean(recall)), "min_recall_at_10": float(np.min(recall)),
                  "exact_scan_ms": 1000 * float(np.median(scan)), "queries": queries}))
"""
COMPARE = """
import lance
from pipeline.export.lance_export import index_parameters
dataset = lance.dataset(sys.argv[2])
table = dataset.to_table(columns=["image_id", "w_refined"])
ids = table.column("image_id").to_numpy(zero_copy_only=False)
latents = np.stack(table.column("w_refined").to_numpy(zero_copy_only=False)).astype(np.float32)
picks = np.random.default_rng(0).choice(len(ids), size=int(sys.argv[3]), replace=False)
params = index_parameters(len(ids), latents.shape[1])
kinds = {"IVF_PQ": params, "IVF_HNSW_SQ": {"num_partitions": params["num_partitions"]},
         "IVF_FLAT": {"num_partitions": params["num_partitions"]}}
out = {}
for kind, kw in kinds.items():
    t0 = time.perf_counter()
    dataset.create_index("w_refined", kind, name="w_refined_idx", metric="L2", replace=True, **kw)
    build = time.perf_counter() - t0
    dataset = lance.dataset(sys.argv[2])
    latency, recall = [], []
    for i in picks:
        t0 = time.perf_counter()
        hits = dataset.to_table(columns=["image_id"], nearest={"column": "w_refined", "q": latents[i], "k": 10,
                                                               "nprobes": 32, "refine_factor": 10})
        latency.append(time.perf_counter() - t0)
        truth = set(ids[np.argpartition(np.square(latents - latents[i]).sum(axis=1), 10)[:10]])
        recall.append(len(truth & set(hits.column("image_id").to_pylist())) / 10)
    out[kind] = {"build_s": round(build, 2), "p50_ms": round(1000 * float(np.percentile(latency, 50)), 2),
                 "p99_ms": round(1000 * float(np.percentile(latency, 99)), 2), "recall_at_10": float(np.mean(recall)),
                 "params": kw}
print(json.dumps(out))
"""
AGAINST = """
from jobs.curate import CurateConfig, run
summary = run(CurateConfig(store=sys.argv[1], against=(sys.argv[2],), progress=False, device="cpu"))
print(json.dumps({"seconds": time.perf_counter() - start, "peak_mb": status("VmHWM:") - baseline,
                  "cross_duplicates": summary["cross_duplicates"], "rows": summary["rows"]}))
"""


def in_process(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PROLOGUE + code, *args], capture_output=True, text=True, cwd=REPO)
    if result.returncode:
        raise SystemExit(f"failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def plant_twins(store: str, other_root: Path, rows: int, planted: int, shard_rows: int) -> str:
    """A second store of `rows` rows whose first `planted` ok rows are jittered copies of STORE's rows
    0, 7, 14, ... (the rest drawn afresh)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.store import open_store

    other = write_store(other_root, rows, shard_rows, seed=1)  # other images than STORE's
    mine = open_store(store).to_pandas(["image_id", "status", "w_refined"])
    mine = mine[mine["status"] == "ok"].reset_index(drop=True)
    sources = np.stack(mine["w_refined"].iloc[[7 * k for k in range(planted)]].to_numpy())
    first = sorted((Path(other) / "latents").glob("*.parquet"))[0]
    table = pq.read_table(first)
    ok = np.flatnonzero(np.asarray(table.column("status").to_pylist()) == "ok")[:planted]
    latents = np.stack(table.column("w_refined").to_numpy(zero_copy_only=False)).astype(np.float32)
    latents[ok] = sources + 1e-5 * np.random.default_rng(1).standard_normal(sources.shape).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(latents.reshape(-1)), latents.shape[1])
    table = table.set_column(table.schema.get_field_index("w_refined"), table.schema.field("w_refined"), column)
    from pipeline.store.writer import claim

    shard = first.name.removeprefix("part-").removesuffix(".parquet")
    entry = json.loads((Path(other) / "manifest" / f"{shard}.json").read_text())
    with claim(other) as writer:  # rewritten through the store's writer: its manifest entry matches it
        writer.shard_writer(None).write(shard, table, {k: v for k, v in entry.items()
                                                       if k not in ("bytes", "sha256", "recipe")})
    return other


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=3)
    parser.add_argument("--against-rows", type=int, default=0, help="a second store of this many rows (0: skip)")
    parser.add_argument("--planted", type=int, default=100)
    parser.add_argument("--compare-indexes", type=int, default=0, help="at the first size: build IVF_PQ, IVF_HNSW_SQ "
                        "and IVF_FLAT on the export and query each this many times (0: skip)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    results: list[dict] = []
    for n in map(int, args.rows.split(",")):
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            start = time.perf_counter()
            store = write_store(Path(tmp), n, args.shard_rows)
            print(f"# wrote {n:,} rows in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
            row: dict = {"rows": n, "export": in_process(EXPORT, store, str(Path(tmp) / "store.lance"))}
            print(f"# export {row['export']}", file=sys.stderr, flush=True)
            row["query"] = in_process(QUERY, store, "", str(args.queries), str(args.exact_queries))
            print(f"# query {row['query']}", file=sys.stderr, flush=True)
            if args.compare_indexes and not results:
                row["indexes"] = in_process(COMPARE, store, str(Path(tmp) / "store.lance"), str(args.compare_indexes))
                print(f"# indexes {row['indexes']}", file=sys.stderr, flush=True)
            if args.against_rows and n == max(map(int, args.rows.split(","))):
                other = plant_twins(store, Path(tmp) / "other", args.against_rows, args.planted, args.shard_rows)
                row["against"] = {"other_rows": args.against_rows, "planted": args.planted,
                                  **in_process(AGAINST, store, other)}
                print(f"# against {row['against']}", file=sys.stderr, flush=True)
        earlier = [r for r in results if r["export"]["seconds"] > 0]
        if earlier:
            row["export_time_exponent"] = growth_exponent(earlier[-1]["rows"], earlier[-1]["export"]["seconds"], n,
                                                          row["export"]["seconds"])
        results.append(row)
        print(json.dumps(row), flush=True)
    write_results(args.json_path, torch.device("cpu"), results)
    print(f"# {machine_description(torch.device('cpu'))}")


if __name__ == "__main__":
    main()
