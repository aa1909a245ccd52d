"""Near-duplicate search throughput of `latentmill curate`: rows/s of the blockwise cosine search.

Random features with planted duplicate pairs (checked: every planted pair must be found).
The baseline, measured in the same run where it fits in memory, is the one-shot full N x N
similarity matrix; the blockwise search does the same arithmetic (half of it: upper triangle)
in block_size x N memory, which is what lets 1M rows run.

  python -m benchmarks.curate --rows 20000,100000 --dim 512
  python -m benchmarks.curate --rows 100000,1000000 --dim 512 --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks.timing import machine_description, synchronize, write_results
from pipeline.stages.curate import near_duplicate_pairs


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="20000,100000", help="comma-separated row counts")
    parser.add_argument("--dim", type=int, default=512, help="feature size (512 = one w, or an identity embedding)")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--block-size", type=int, default=None, help="default: the library's (about 2^28 similarities)")
    parser.add_argument("--planted", type=int, default=100, help="duplicate pairs planted (all must be found)")
    parser.add_argument("--baseline-max-rows", type=int, default=20000, help="largest N for the full-matrix baseline")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"# {machine_description(device)}", file=sys.stderr)
    print("| rows | dim | blockwise s | rows/s | pairs found | full-matrix s | blockwise speed-up |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for n in map(int, args.rows.split(",")):
        x = features(n, args.dim, args.planted, device)
        seconds, pairs = timed(lambda: near_duplicate_pairs(x, args.threshold, block_size=args.block_size), device)
        planted = {(i, n - args.planted + i) for i in range(args.planted)}
        found = set(zip(pairs.first.tolist(), pairs.second.tolist()))
        if not planted <= found:
            raise SystemExit(f"missed {len(planted - found)} planted pairs at {n} rows")
        row = {"rows": n, "dim": args.dim, "seconds": round(seconds, 3), "rows_per_s": round(n / seconds, 1),
               "pairs": len(found)}
        baseline = ""
        if n <= args.baseline_max_rows:
            full_seconds, count = timed(lambda: full_matrix_pairs(x, args.threshold), device)
            assert count == len(found)
            row |= {"full_matrix_seconds": round(full_seconds, 3), "speedup": round(full_seconds / seconds, 2)}
            baseline = f"{full_seconds:.2f} | {full_seconds / seconds:.2f}x"
        else:
            baseline = "(does not fit) | -"
        rows.append(row)
        print(f"| {n:,} | {args.dim} | {seconds:.2f} | {n / seconds:,.0f} | {len(found)} | {baseline} |", flush=True)
    write_results(args.json_path, device, rows)


if __name__ == "__main__":
    main()
