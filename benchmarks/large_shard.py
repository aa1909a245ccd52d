"""Memory of reading a multi-GB tar shard: the streamed reader against reading every member first.

Writes two webdataset tars of real PNG samples (noise images, which do not compress): a large one
(`--large-gb`, with one member of `--big-member-mb` among them, as a stray video or scan would be)
and a small one of 20 samples. Each is read in a fresh process through the planner and the reader an
actor uses (`read_shard`, every record decoded to 64 px as the actor's decode step does), and, as the
baseline, by reading every member into a list before decoding (what latentmill's reader did before
it streamed). Each process reports its wall time, its peak RSS, what it held once imported (torch,
Pillow, pyarrow) and the peak above that.

  python -m benchmarks.large_shard --large-gb 1.2 --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.timing import write_results

REPO = Path(__file__).resolve().parents[1]

READ = """
import resource, sys, tarfile, time
from pipeline.data.decode import DecodeSettings
from pipeline.data.planning import list_input, plan_listing
from pipeline.data.sources import read_shard
path, mode, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
decoding = DecodeSettings()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
rows = errors = 0
if mode == "streamed":
    for spec in plan_listing(list_input(path)).shards:
        for record in read_shard(spec, max_input_bytes=limit):
            rows += 1
            if record.error is not None or not decoding.decode(record.data, resolution=64, channels=3).ok:
                errors += 1
else:  # every member into a list first, then decoded
    with tarfile.open(path) as archive:
        members = [archive.extractfile(m).read() for m in archive if m.isfile()]
    for data in members:
        rows += 1
        errors += not decoding.decode(data, resolution=64, channels=3).ok
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(peak - before, rows, errors, seconds, peak, before)
"""


def _png(seed: int, side: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def write_tar(path: Path, *, total_bytes: int, big_member_bytes: int = 0, side: int = 512) -> tuple[int, int]:
    """A tar of distinct noise PNGs adding up to about `total_bytes`, with one member of `big_member_bytes`
    (zeros: not an image) a third of the way in; returns (members, bytes)."""
    images = [_png(seed, side) for seed in range(8)]
    count, written = 0, 0
    with tarfile.open(path, "w") as archive:
        while written < total_bytes:
            data = images[count % len(images)]
            if big_member_bytes and count == 3:
                info = tarfile.TarInfo("big.png")
                info.size = big_member_bytes
                archive.addfile(info, io.BytesIO(bytes(big_member_bytes)))
                written += big_member_bytes
            info = tarfile.TarInfo(f"{count:06d}.png")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
            written += len(data)
            count += 1
    return count + (1 if big_member_bytes else 0), path.stat().st_size


def read_peak(path: Path, mode: str, limit: int) -> dict:
    out = subprocess.run([sys.executable, "-c", READ, str(path), mode, str(limit)], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.split()
    return {"peak_rss_mb": round(int(out[4]) / 1024, 1), "after_imports_mb": round(int(out[5]) / 1024, 1),
            "above_imports_mb": round(int(out[0]) / 1024, 1), "rows": int(out[1]), "errors": int(out[2]),
            "seconds": round(float(out[3]), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large-gb", type=float, default=1.2)
    parser.add_argument("--big-member-mb", type=int, default=300)
    parser.add_argument("--max-input-mb", type=int, default=256, help="--max-input-bytes of the streamed reads")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        large, small = Path(tmp) / "large.tar", Path(tmp) / "small.tar"
        t0 = time.perf_counter()
        members, size = write_tar(large, total_bytes=int(args.large_gb * 2**30),
                                  big_member_bytes=args.big_member_mb << 20)
        print(f"wrote {large.name}: {members:,} members, {size / 2**30:.2f} GiB in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        small_members, small_size = write_tar(small, total_bytes=20 * len(_png(0, 512)))
        for name, path, n, nbytes in (("small", small, small_members, small_size),
                                      ("large", large, members, size)):
            for mode in ("streamed", "whole"):
                row = {"tar": name, "members": n, "gib": round(nbytes / 2**30, 3), "reader": mode,
                       **read_peak(path, mode, args.max_input_mb << 20)}
                rows.append(row)
                print(json.dumps(row))
    write_results(args.json, torch.device("cpu"), rows)


if __name__ == "__main__":
    main()
