"""Near-duplicate search throughput of `latentmill curate`: rows/s, growth with the number of rows, and the
time projected to 10M rows.

Random features with planted duplicate pairs (checked: every planted pair must be found). The
search is the one curate runs: `--search approximate` (the default here; what curate's `auto` picks
beyond small stores): a seeded random projection to 128 dimensions, a faiss IVF index (HNSW over its
list centroids, 8-bit scalar quantisation), a range search, and the exact cosine of every pair near
the threshold; `--search exact` is the blockwise exact search (every pair). Where the exact search fits
(`--baseline-max-rows`), it runs too, as the reference: the recall of the approximate pairs against it.
The growth exponent is fitted between consecutive sizes; the 10M projection extends the largest size
with it.

  python -m benchmarks.curate --rows 50000,200000 --dim 512 --json F
  python -m benchmarks.curate --rows 100000,1000000 --dim 512 --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from benchmarks.timing import machine_description, synchronize, write_results
from pipeline.curation.curate import near_duplicate_pairs
from pipeline.curation.similarity_search import (DuplicatePairs, RandomProjection, approximate_pairs, exact_cosines,
                                              projection_band, split_by_band)

TEN_MILLION = 10_000_000


def features(n: int, dim: int, planted: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g)
    x[n - planted :] = x[:planted] + 0.01 * torch.randn(planted, dim, generator=g)
    return x.to(device)


def full_matrix_pairs(x: torch.Tensor, threshold: float) -> int:
    normed = torch.nn.functional.normalize(x, dim=1)
    return int(torch.triu(normed @ normed.T >= threshold, diagonal=1).sum())


def timed(fn, device: torch.device) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def approximate_search(x: torch.Tensor, threshold: float, block_size: int | None) -> DuplicatePairs:
    """What curate's approximate search does, on features held in memory."""
    projection = RandomProjection(x.shape[1])
    projected = projection(x)
    band = projection_band(threshold, projection.out_dim, projection.matrix is None)
    if x.device.type == "cuda":
        candidates = near_duplicate_pairs(projected.half(), threshold - band, block_size=block_size)
    else:
        candidates = approximate_pairs(projected.numpy().astype(np.float16), threshold - band)
    sure, undecided = split_by_band(candidates, threshold, band)
    rows = {int(i): x[int(i)].cpu() for i in set(undecided.first.tolist()) | set(undecided.second.tolist())}
    undecided.cosine = exact_cosines(undecided, rows)
    return DuplicatePairs.concat([sure, undecided.where(undecided.cosine >= threshold)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="50000,200000", help="comma-separated row counts")
    parser.add_argument("--dim", type=int, default=512, help="feature size (512 = one w, or an identity embedding)")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--search", default="approximate", choices=["approximate", "exact"])
    parser.add_argument("--block-size", type=int, default=None, help="exact search: default the library's "
                        "(about 2^28 similarities)")
    parser.add_argument("--planted", type=int, default=100, help="duplicate pairs planted (all must be found)")
    parser.add_argument("--baseline-max-rows", type=int, default=50000, help="largest N for the exact reference")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"# {machine_description(device)}; {args.search} search", file=sys.stderr)
    print("| rows | dim | search | seconds | rows/s | pairs found | exact s | recall vs exact | growth exponent "
          "| projected 10M rows |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows: list[dict] = []
    for n in map(int, args.rows.split(",")):
        x = features(n, args.dim, args.planted, device)
        run = (lambda: approximate_search(x, args.threshold, args.block_size)) if args.search == "approximate" \
            else (lambda: near_duplicate_pairs(x, args.threshold, block_size=args.block_size))
        seconds, pairs = timed(run, device)
        planted = {(i, n - args.planted + i) for i in range(args.planted)}
        found = set(zip(pairs.first.tolist(), pairs.second.tolist()))
        if not planted <= found:
            raise SystemExit(f"missed {len(planted - found)} planted pairs at {n} rows")
        row = {"rows": n, "dim": args.dim, "search": args.search, "seconds": round(seconds, 3),
               "rows_per_s": round(n / seconds, 1), "pairs": len(found)}
        exact_text = recall_text = "-"
        if n <= args.baseline_max_rows:
            exact_seconds, exact = timed(lambda: near_duplicate_pairs(x, args.threshold), device)
            reference = set(zip(exact.first.tolist(), exact.second.tolist()))
            recall = len(reference & found) / max(len(reference), 1)
            row |= {"exact_seconds": round(exact_seconds, 3), "recall_vs_exact": round(recall, 4),
                    "speedup": round(exact_seconds / seconds, 2)}
            exact_text, recall_text = f"{exact_seconds:.2f}", f"{recall:.4f}"
        exponent_text = projection_text = "-"
        if rows:
            previous = rows[-1]
            exponent = math.log(seconds / previous["seconds"]) / math.log(n / previous["rows"])
            projected_hours = seconds * (TEN_MILLION / n) ** exponent / 3600
            row |= {"growth_exponent": round(exponent, 3), "projected_10m_hours": round(projected_hours, 2)}
            exponent_text, projection_text = f"{exponent:.2f}", f"{projected_hours:.2f} h"
        rows.append(row)
        print(f"| {n:,} | {args.dim} | {args.search} | {seconds:.2f} | {n / seconds:,.0f} | {len(found)} | {exact_text} "
              f"| {recall_text} | {exponent_text} | {projection_text} |", flush=True)
    write_results(args.json_path, device, rows)


if __name__ == "__main__":
    main()
