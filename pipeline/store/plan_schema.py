"""The `plan` table saved with every store (STORE/plan.parquet): the input's files and their shards.

One row per planned file: each input (a folder's image, a tar or a Parquet file) and each sidecar
(`x.mask.png`, `x.json`) with the shard it belongs to and what the listing said of it (size, a
version: mtime or ETag, and kind), so a rerun can tell new, vanished and changed inputs from a fresh
listing without opening a file. The input URI, layout and planning settings are in the metadata.
Paths are escaped where a name is not UTF-8 (pipeline/data/names.py), so they are text.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.store.table_spec import TableSpec

PLAN = TableSpec("plan", 1, (
    ("shard_id", pa.string(), False, "the shard (unit of work and of resume) the file belongs to"),
    ("path", pa.string(), False, "the file's path relative to the input's base folder (escaped: a byte that is not "
                                 "UTF-8 as \\xNN, a backslash doubled); plans of version 1 kept only a tar or "
                                 "Parquet shard's base name"),
    ("role", pa.string(), False, "'input' (an image, a tar or a Parquet file), 'sidecar' (the preceding input's "
                                 "mask, JSON or text) or 'metadata' (a per-sample metadata Parquet or statistics "
                                 "file beside the shard, as img2dataset writes them: never a row)"),
    ("size", pa.int64(), True, "size in bytes when listed"),
    ("version", pa.string(), True, "what changes with the content: mtime in ns (local files) or the ETag"),
    ("kind", pa.string(), False, "'file', or what else it is (fifo, socket, device, ...): those are error rows"),
    ("options", pa.string(), True, "the shard's reading options as JSON (Parquet columns, renamed ids, its layout "
                                   "where it differs from the plan's), on its first row"),
    ("schema_version", pa.int16(), False, "version of this schema"),
))
