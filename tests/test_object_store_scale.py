"""A store of many shards on an S3-compatible server 20 ms away: a rerun with nothing to do reads it in
listings and its manifest index, not in a request per shard (moto's server behind a latency proxy that
counts the requests, on loopback).

500 shards here; LATENTMILL_SCALE_SHARDS=10000 gives BENCHMARKS.md's figure (the time it prints)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SHARDS = int(os.environ.get("LATENTMILL_SCALE_SHARDS", "500"))
LATENCY_S = 0.02


def _tar(image: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("k.png")
        info.size = len(image)
        archive.addfile(info, io.BytesIO(image))
    return buffer.getvalue()


def _one_error_row_shards(config, shards, summary, book, shard_writer, **_):
    """A runner for setting the store up fast: each shard's file is one valid error row, its manifest
    entry as ShardWriter writes it (size, sha256, the recipe's digest), all uploaded in two batches (data
    files first, then entries) through s3fs's concurrent `pipe`."""
    import fsspec

    from pipeline.models.checkpoints import load_generator
    from pipeline.store import layout
    from pipeline.store.parquet_files import parquet_bytes, sha256
    from pipeline.store.schema import SCHEMA_VERSION, latents_schema

    G = load_generator(config.generator)
    schema = latents_schema(G.num_ws, G.w_dim, latent_columns=("w_refined",))
    files, entries = {}, {}
    for spec in shards:
        values = {f.name: pa.nulls(1, f.type) for f in schema}
        values.update(image_id=pa.array([f"{spec.shard_id}/k"]), source_uri=pa.array([spec.uri]),
                      shard=pa.array([spec.shard_id]), status=pa.array(["error"]), error=pa.array(["corrupt: set-up"]),
                      model_fingerprint=pa.array(["x"]), schema_version=pa.array([SCHEMA_VERSION], pa.int16()))
        data = parquet_bytes(pa.table([values[f.name] for f in schema], schema=schema))
        entry = {"shard": spec.shard_id, "rows": 1, "ok": 0, "errors": 1, "error_reasons": {"corrupt": 1},
                 "bytes": len(data), "sha256": sha256(data), "recipe": shard_writer.recipe}
        files[layout.shard_file(shard_writer.store, spec.shard_id)] = data
        entries[layout.manifest_file(shard_writer.store, spec.shard_id)] = json.dumps(entry).encode()
        book.done(entry)
    fs = fsspec.filesystem("s3")
    fs.pipe({fsspec.core.url_to_fs(k)[1]: v for k, v in files.items()})
    fs.pipe({fsspec.core.url_to_fs(k)[1]: v for k, v in entries.items()})
    return summary


def test_a_rerun_of_thousands_of_finished_shards_20ms_away_is_not_one_request_per_shard(tmp_path, monkeypatch):
    import fsspec

    from jobs.invert import EveryRowFailedError
    from jobs.invert import run
    from pipeline.models.bundle import write_bundle
    from pipeline.invert.config import InvertConfig
    from tests.conftest import tiny_generator
    from tests.datasets import colorful, png_bytes
    from tests.object_store import local_s3

    generator = str(tmp_path / "g.safetensors")
    write_bundle(generator, {"G_ema": tiny_generator(16)})
    with local_s3(latency_s=LATENCY_S) as s3:
        for key, value in s3.env(s3.direct).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3.direct})
        fs = fsspec.filesystem("s3", endpoint_url=s3.direct, skip_instance_cache=True)
        fs.mkdir("bucket")
        data = _tar(png_bytes(colorful()))
        fs.pipe({f"bucket/in/s{i:05d}.tar": data for i in range(SHARDS)})
        args = dict(input="s3://bucket/in", output="s3://bucket/store", generator=generator, stages=("refine",),
                    perceptual="none", steps=1, progress=False)
        with pytest.raises(EveryRowFailedError):  # every set-up row is an error row, and says so
            run(InvertConfig(**args), runner=_one_error_row_shards)

        command = [sys.executable, "-m", "latentmill", "invert", "--input", args["input"], "--output", args["output"],
                   "--generator", generator, "--stages", "refine", "--perceptual", "none", "--steps", "1",
                   "--no-progress"]
        env = {**os.environ, **s3.env(s3.slow)}
        s3.proxy.requests = 0
        start = time.perf_counter()
        rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        seconds = time.perf_counter() - start
        requests = s3.proxy.requests
    print(f"nothing-to-do rerun of {SHARDS:,} shards at {LATENCY_S * 1e3:.0f} ms a request: {seconds:.1f} s, "
          f"{requests} requests")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"all {SHARDS} shards already done; nothing to run" in rerun.stderr
    assert f"the store: {SHARDS} rows, 0 ok, {SHARDS} errors" in rerun.stdout
    # listings of a thousand keys a page, not a request per shard (or per input)
    assert 0 < requests < SHARDS / 10, f"a nothing-to-do rerun of {SHARDS} shards made {requests} requests"
