"""`latentmill invert` at dataset scale: a synthetic Parquet input of N rows through the real job.

Builds N small PNGs (the demo generator's resolution) in Parquet shards of `--shard-rows` rows, then
runs the CLI's orchestrator on an embedded Ray with the demo generator and encoder, `--stages encode`
(one encoder pass and one generator render per row), and reports:
- rows/s over the run, start-up apart, and the pipeline's efficiency against the compute ceiling
  measured in the same run: decode + encoder + one render per row, one single-core process per actor
  running side by side (and, for comparison, one process alone times the actors);
- the actors' busy fraction (time in the stages over time per shard: prefetching keeps it near 1
  when reading is faster than computing) and their peak memory, the driver's peak memory;
- a rerun with nothing to do (resume), `latentmill verify` (quick and full);
- a reader in a fresh process: `open_store(...).iter_batches` over the scalar columns, its time and
  its peak memory above the interpreter's own (flat in N: it holds a batch at a time).

  python -m benchmarks.invert_scale --rows 100000 --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from benchmarks.timing import MEMORY_PROBE, PEAK_RESET, machine_description, write_results

READER = """
import sys, time
from pipeline.store import open_store
""" + MEMORY_PROBE + """baseline = status("VmRSS:")  # the interpreter and its imports
""" + PEAK_RESET + """start = time.perf_counter()
store = open_store(sys.argv[1])
rows = ok = 0
for batch in store.iter_batches(["image_id", "status", "mse"]):
    rows += batch.num_rows
    ok += sum(s == "ok" for s in batch.column("status").to_pylist())
print(rows, ok, time.perf_counter() - start, status("VmHWM:") - baseline)
"""


def build_input(root: Path, rows: int, shard_rows: int, resolution: int) -> float:
    """N rows of PNG bytes (256 distinct images, each id unique) in Parquet shards; returns seconds."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    images = []
    for _ in range(256):
        base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(base).resize((resolution, resolution), Image.Resampling.BILINEAR).save(buffer, "PNG")
        images.append(buffer.getvalue())
    root.mkdir(parents=True, exist_ok=True)
    for shard, lo in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - lo)
        table = pa.table({"id": [f"img{lo + i:09d}" for i in range(n)],
                          "image": [images[(lo + i) % 256] for i in range(n)]})
        pq.write_table(table, root / f"part-{shard:05d}.parquet")
    return time.perf_counter() - start


def compute_ceiling(generator: str, encoder: str, batch: int, resolution: int, barrier=None) -> float:
    """Rows/s of decode + encoder + one render per row on one core, in this process (the work an actor does
    per row, without reading, Ray or writing). `barrier`: wait for the other processes measuring beside
    this one before timing."""
    from pipeline.data.decode import decode_image
    from pipeline.models.checkpoints import load_generator
    from pipeline.models.encoder import encode, load_encoder

    torch.set_num_threads(1)
    G = load_generator(generator)
    E = load_encoder(encoder, generator=G)
    buffer = io.BytesIO()
    Image.fromarray(np.full((resolution, resolution, 3), 128, np.uint8)).save(buffer, "PNG")
    data = buffer.getvalue()

    def one_batch() -> None:
        images = torch.from_numpy(np.stack([decode_image(data, resolution=resolution).image for _ in range(batch)]))
        with torch.no_grad():
            G.synthesis(encode(E, images), noise_mode="const")

    one_batch()
    if barrier is not None:
        barrier.wait()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        one_batch()
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(os.cpu_count() or 1)
    return batch / best


def _ceiling_worker(args: tuple, barrier, results) -> None:
    results.put(compute_ceiling(*args, barrier=barrier))


def side_by_side_ceiling(generator: str, encoder: str, batch: int, resolution: int, processes: int) -> float:
    """The compute ceiling of `processes` single-core workers running at the same time (the actors' case:
    on a shared machine they contend for caches, memory bandwidth and the host), the sum of their rows/s."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_ceiling_worker, args=((generator, encoder, batch, resolution), barrier, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    total = sum(results.get(timeout=600) for _ in workers)
    for worker in workers:
        worker.join()
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--shard-rows", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", default=None, help="where the input and store go (default: a temporary folder)")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    from jobs.invert import run
    from pipeline.demo import DemoBundle
    from pipeline.models.checkpoints import load_generator
    from pipeline.invert.config import InvertConfig
    from pipeline.store.store import open_store
    from pipeline.store.verify import verify_store

    bundle = DemoBundle.locate()
    resolution = load_generator(bundle.generator).img_resolution
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        built = build_input(root / "input", args.rows, args.shard_rows, resolution)
        alone = compute_ceiling(bundle.generator, bundle.encoder, args.batch_size, resolution) * args.concurrency
        ceiling = side_by_side_ceiling(bundle.generator, bundle.encoder, args.batch_size, resolution,
                                       args.concurrency)
        config = InvertConfig(input=str(root / "input"), output=str(root / "store"), generator=bundle.generator,
                              encoder=bundle.encoder, stages=("encode",), id_column="id",
                              batch_size=args.batch_size, concurrency=args.concurrency, progress=False)
        start = time.perf_counter()
        summary = run(config)
        wall = time.perf_counter() - start
        driver_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        rerun = run(config)
        resume_s = time.perf_counter() - start
        store = open_store(config.output)
        entries = store.finished.values()
        busy = sum(e["compute_seconds"] for e in entries) / max(sum(e["seconds"] for e in entries), 1e-9)
        actor_mb = max(e["peak_rss_mb"] for e in entries)
        timings = {}
        for name, full in (("verify_quick_s", False), ("verify_full_s", True)):
            start = time.perf_counter()
            report = verify_store(config.output, full=full)
            timings[name] = round(time.perf_counter() - start, 2)
            assert report.ok, report.lines()
        reader = subprocess.run([sys.executable, "-c", READER, config.output], capture_output=True, text=True,
                                check=True, cwd=Path(__file__).resolve().parents[1]).stdout.split()
        rows_read, ok_read, reader_s, reader_mb = int(reader[0]), int(reader[1]), float(reader[2]), float(reader[3])
        assert rows_read == args.rows == summary.rows and rerun.shards_done == 0
        steady = summary.rows / summary.seconds
        result = {"rows": args.rows, "shards": len(store.files), "input_build_s": round(built, 1),
                  "wall_s": round(wall, 1), "startup_s": round(summary.startup_seconds, 1),
                  "rows_per_s": round(steady, 1), "rows_per_s_wall": round(args.rows / wall, 1),
                  "ceiling_rows_per_s": round(ceiling, 1), "efficiency": round(steady / ceiling, 3),
                  "ceiling_alone_rows_per_s": round(alone, 1), "efficiency_vs_alone": round(steady / alone, 3),
                  "actor_busy_fraction": round(busy, 3), "actor_peak_mb": actor_mb,
                  "driver_peak_mb": round(driver_mb, 1), "resume_nothing_to_do_s": round(resume_s, 2),
                  **timings, "reader_s": round(reader_s, 2), "reader_peak_mb_above_imports": round(reader_mb, 1),
                  "ok": summary.ok, "concurrency": args.concurrency, "batch_size": args.batch_size}
    print(json.dumps(result, indent=2))
    device = torch.device("cpu")
    print(f"# {machine_description(device)}", file=sys.stderr)
    write_results(args.json_path, device, [result])


if __name__ == "__main__":
    main()
