"""Writing and reading the rows of a latent store (its file layout: pipeline/store/layout.py).

A shard's Parquet file is written atomically (temp + rename on local disks), then its manifest
entry: a rerun lists `manifest/*.json` and skips finished shards, so a killed job resumes with no
duplicates and no gaps (img2dataset's incremental mode). Readers go through `open_store`.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterable
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store import layout
from pipeline.store.layout import manifest_file, shard_file
from pipeline.store.schema import LATENT_SHAPED_COLUMNS
from pipeline.uris import write_bytes


def write_parquet(uri: str, table: pa.Table, *, compression: str = "snappy") -> None:
    """One Parquet file at any fsspec URI, appearing atomically where the filesystem allows."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=compression)
    write_bytes(uri, buffer.getvalue())


def write_shard(store: str, shard: str, table: pa.Table, entry: dict[str, Any]) -> None:
    """Data first, manifest entry last: a crash between them leaves the shard unfinished, not half-done."""
    write_parquet(shard_file(store, shard), table, compression="zstd")
    write_bytes(manifest_file(store, shard), json.dumps(entry, indent=2, default=str).encode())
    fs, path = fsspec.core.url_to_fs(manifest_file(store, shard, failed=True))
    if fs.exists(path):
        fs.rm(path)


def record_failure(store: str, shard: str, entry: dict[str, Any]) -> None:
    write_bytes(manifest_file(store, shard, failed=True), json.dumps(entry, indent=2, default=str).encode())


def manifest_entries(store: str) -> dict[str, dict[str, Any]]:
    """Finished shards: shard id -> its manifest entry."""
    fs, root = fsspec.core.url_to_fs(layout.join(store, layout.MANIFEST))
    if not fs.isdir(root):
        return {}
    entries = {}
    for path in fs.glob(posixpath.join(root, "*.json")):
        name = posixpath.basename(path)
        if not name.endswith(".failed.json"):
            entries[name[: -len(".json")]] = json.loads(fs.cat_file(path))
    return entries


def failed_entries(store: str) -> dict[str, dict[str, Any]]:
    fs, root = fsspec.core.url_to_fs(layout.join(store, layout.MANIFEST))
    if not fs.isdir(root):
        return {}
    return {posixpath.basename(p)[: -len(".failed.json")]: json.loads(fs.cat_file(p))
            for p in fs.glob(posixpath.join(root, "*.failed.json"))}


def remove_shard(store: str, shard: str) -> None:
    """Forget a shard (for --overwrite): manifest entry first, then its data."""
    for uri in (manifest_file(store, shard), manifest_file(store, shard, failed=True), shard_file(store, shard)):
        fs, path = fsspec.core.url_to_fs(uri)
        if fs.exists(path):
            fs.rm(path)


def latent_array(frame: pd.DataFrame, column: str, latent_shape: Iterable[int]) -> np.ndarray:
    """One latent column as float32 [rows, num_ws, w_dim]; rows must all be non-null."""
    if column not in LATENT_SHAPED_COLUMNS:
        raise ValueError(f"{column!r} is not a latent column ({LATENT_SHAPED_COLUMNS})")
    values = frame[column].to_list()
    if any(v is None for v in values):
        raise ValueError(f"some selected rows have no {column} (error rows, or the stage was off)")
    return np.stack(values).astype(np.float32).reshape(len(values), *latent_shape)
