"""A store's ok rows as a Lance dataset with a vector index: what teams that query by vector read.

Lance keeps a latent as `fixed_size_list<float32>[num_ws * w_dim]` (Delta, Spark and ClickHouse readers
turn it into a plain list), its vector indexes accept appends, and Lance, DuckDB, Polars and Ray Data read
it. One row per ok row: every column of the store but `status`, `error` and the latents not chosen.

Exactly once, from the dataset itself: every row carries its store `shard`, and a Lance write commits
whole or not at all, so the shards an export holds are the distinct `shard` values of its latest version.
A run appends only the finished store shards it lacks (whole shards, in groups of at most APPEND_ROWS
rows, one commit each); an unchanged store changes nothing (the same version); a killed export left
only whole commits, and its rerun appends the rest. The vector index (IVF_PQ, L2 on the chosen latent;
its parameters from the rows' count and dimension, recorded by Lance with the index) is built once the
dataset has INDEX_MIN_ROWS rows, and later appends are folded into it (`optimize_indices`, which also
updates the BTREE index on image_id that finds a row by its id).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.export.export_settings import INDEX_MIN_ROWS
from pipeline.progress import progress_bar
from pipeline.store import layout
from pipeline.store.parquet_files import open_parquet
from pipeline.store.schema import LATENT_SHAPED_COLUMNS
from pipeline.store.store import Store

EXPORT_SCHEMA_VERSION = 1
METADATA_KEY = "latentmill"
APPEND_ROWS = 1 << 18  # rows per Lance commit at most (whole store shards)
INDEX_TYPE, INDEX_METRIC = "IVF_PQ", "L2"
LEFT_OUT = ("status", "error")


class ExportMismatchError(ValueError):
    """OUTPUT holds an export of another store, generator or column."""


def lance_module() -> Any:
    try:
        import lance
    except ImportError:
        raise ValueError("--format lance needs the `pylance` package: pip install pylance") from None
    return lance


def index_parameters(rows: int, dim: int) -> dict[str, int]:
    """IVF partitions about sqrt(rows) (each ~sqrt(rows) rows; at most 4096, and at least 256 rows each, what
    Lance trains a partition on); PQ sub-vectors of 8 or more dimensions, at most 128 (dim must split evenly)."""
    partitions = max(1, min(4096, rows // 256, round(math.sqrt(rows))))
    target = max(1, min(128, dim // 8))
    sub_vectors = max(d for d in range(1, target + 1) if dim % d == 0)
    return {"num_partitions": partitions, "num_sub_vectors": sub_vectors}


@dataclass
class ExportResult:
    output: str
    column: str
    version: int
    rows: int
    appended_rows: int
    appended_shards: int
    index: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def export_schema(store: Store, column: str) -> pa.Schema:
    """The store's schema for the export: no status, error or other latents; the latent as float32."""
    dim = store.latent_shape[0] * store.latent_shape[1]
    fields = []
    for field in store.schema:
        if field.name in LEFT_OUT or (field.name in LATENT_SHAPED_COLUMNS and field.name != column):
            continue
        if field.name == column:
            field = pa.field(column, pa.list_(pa.float32(), dim), nullable=False, metadata=field.metadata)
        fields.append(field)
    meta = {"store": store.uri, "column": column, "latent_shape": list(store.latent_shape),
            "generator_fingerprint": store.metadata["generator_fingerprint"],
            "export_schema_version": EXPORT_SCHEMA_VERSION, "store_schema": store.metadata.get("schema_version")}
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(meta)})


def exported_shards(dataset: Any) -> set[str]:
    """The store shards the dataset's latest version holds (its rows carry them)."""
    shards: set[str] = set()
    for batch in dataset.to_batches(columns=["shard"]):
        shards.update(pc.unique(batch.column("shard")).to_pylist())
    return shards


def check_same_export(dataset: Any, schema: pa.Schema, output: str) -> None:
    """Refuse appending to an export of another store, generator or latent column."""
    raw = (dataset.schema.metadata or {}).get(METADATA_KEY.encode())
    there = json.loads(raw) if raw else {}
    here = json.loads(schema.metadata[METADATA_KEY.encode()])
    differences = [f"{key}: {there.get(key)!r} there, {here[key]!r} now"
                   for key in ("store", "column", "generator_fingerprint", "latent_shape")
                   if there.get(key) != here[key]]
    if differences:
        raise ExportMismatchError(f"{output} holds another export; an export never mixes stores or latents:\n"
                                  + "\n".join(f"  - {d}" for d in differences) + "\nUse another --output.")


def shard_batches(store: Store, shards: list[str], schema: pa.Schema, column: str, excluded: set[str],
                  progress: Any) -> Iterator[pa.RecordBatch]:
    """The ok rows of `shards`, a store shard's row group at a time, in the export's schema."""
    names = [f.name for f in schema]
    for shard in shards:
        with open_parquet(store.path(layout.shard_file_name(shard)), remedy=store.repair_hint) as parquet:
            wanted = [n for n in [*names, "status"] if n in parquet.schema_arrow.names]
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=wanted)
                table = table.filter(pc.equal(table.column("status"), "ok"))
                if excluded:
                    table = table.filter(pc.invert(pc.is_in(table.column("image_id"), pa.array(sorted(excluded)))))
                if table.num_rows == 0:
                    continue
                columns = [table.column(n).cast(f.type) if n in table.column_names else pa.nulls(table.num_rows, f.type)
                           for n, f in zip(names, schema)]
                yield from pa.table(columns, schema=schema).to_batches()
        progress.update(1)


def groups_of(store: Store, shards: list[str]) -> list[list[str]]:
    """Whole shards in groups of at most APPEND_ROWS ok rows (one commit each; a shard larger than that alone)."""
    finished = store.manifest.finished
    groups: list[list[str]] = [[]]
    rows = 0
    for shard in shards:
        ok = int(finished[shard].get("ok", 0))
        if groups[-1] and rows + ok > APPEND_ROWS:
            groups.append([])
            rows = 0
        groups[-1].append(shard)
        rows += ok
    return [g for g in groups if g]


def export_lance(store: Store, output: str, *, column: str = "w_refined", exclude_flagged: bool = False,
                 progress: bool = True) -> ExportResult:
    """Append the ok rows of the store's finished shards that `output` lacks; build or update the index."""
    lance = lance_module()
    if column not in store.schema.names:
        raise ValueError(f"--column {column}: {store.uri} has no such column (its latents: "
                         f"{[c for c in LATENT_SHAPED_COLUMNS if c in store.schema.names]})")
    schema = export_schema(store, column)
    excluded = store.flagged_ids() if exclude_flagged else set()
    try:
        dataset = lance.dataset(output)
    except (ValueError, FileNotFoundError, OSError):
        dataset = None
    done: set[str] = set()
    if dataset is not None:
        check_same_export(dataset, schema, output)
        done = exported_shards(dataset)
    todo = [s for s in sorted(store.manifest.finished) if s not in done]
    appended = 0
    bar = progress_bar(total=len(todo), desc="export", unit="shard", enabled=progress and bool(todo))
    for group in groups_of(store, todo):
        batches = shard_batches(store, group, schema, column, excluded, bar)
        reader = pa.RecordBatchReader.from_batches(schema, batches)
        dataset = lance.write_dataset(reader, output, schema=schema, mode="create" if dataset is None else "append")
        appended += sum(int(store.manifest.finished[s].get("ok", 0)) for s in group)
    bar.close()
    if dataset is None:
        raise ValueError(f"{store.uri}: no finished shards to export")
    if todo and dataset.describe_indices():  # the new rows into every index (vector and id)
        dataset.optimize.optimize_indices()
    index = _index(dataset, column)
    if not any("image_id" in i.field_names for i in dataset.describe_indices()):
        dataset.create_scalar_index("image_id", "BTREE")  # a row by its id without a scan (nearest's query)
    dataset = lance.dataset(output)
    return ExportResult(output, column, dataset.version, dataset.count_rows(), appended, len(todo), index)


def _index(dataset: Any, column: str) -> dict[str, Any] | None:
    """The dataset's vector index on `column`, made once there are INDEX_MIN_ROWS rows."""
    existing = [i.name for i in dataset.describe_indices() if column in i.field_names]
    rows = dataset.count_rows()
    if existing:
        return _describe(dataset, existing[0])
    if rows < INDEX_MIN_ROWS:
        return None
    dim = dataset.schema.field(column).type.list_size
    dataset.create_index(column, INDEX_TYPE, name=f"{column}_idx", metric=INDEX_METRIC, **index_parameters(rows, dim))
    return _describe(dataset, f"{column}_idx")


def _stats(dataset: Any, name: str) -> dict[str, Any]:
    os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")  # statistics without every centroid
    return dataset.stats.index_stats(name)


def _describe(dataset: Any, name: str) -> dict[str, Any]:
    """The index as Lance records it: kind, metric, rows indexed and not, partitions, PQ sub-vectors."""
    stats = _stats(dataset, name)
    segment = (stats.get("segments") or stats.get("indices") or [{}])[0]
    sub = segment.get("sub_index", {})
    return {"name": name, "type": stats.get("index_type", INDEX_TYPE), "metric": INDEX_METRIC,
            "indexed_rows": stats.get("num_indexed_rows"), "unindexed_rows": stats.get("num_unindexed_rows"),
            "num_partitions": segment.get("num_partitions"), "num_sub_vectors": sub.get("num_sub_vectors"),
            "nbits": sub.get("nbits"), "dimension": sub.get("dimension")}
