"""Opening a latent store: the one way every command reads one.

    store = open_store("out/faces")
    for batch in store.iter_batches(["image_id", "mse"]):   # streamed, a row group at a time
        ...
    frame = store.to_pandas(latents_as_arrays=True)      # small stores: every row at once
    store.to_ray_dataset(), store.to_duckdb()            # the same files for Ray Data and DuckDB
    models = store.load_models(device, prior=True)       # the run's models, checked against the store
    inputs = store.read_inputs(shards, image_ids)        # the pixels each latent was fitted to

Metadata, plan and manifest are read once, lazily; the manifest's entries are read concurrently and
carry each shard's counts (rows, ok, errors by reason), so summaries never read the rows. Every
Parquet page is checked against its checksum as it is read; a damaged file is named, with the way
out. Models are loaded through the one model loader (pipeline/model_set.py) with the store's
recorded generator fingerprint, so a generator that is not the store's is refused; inputs are
decoded with the run's recorded DecodeSettings, so they are the exact pixels the latents were
fitted to. Writing goes through a claimed store (pipeline/store/writer.py).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.decode import DecodeSettings
from pipeline.data.planning import InputPlan
from pipeline.data.sources import ShardSpec
from pipeline.errors import LatentmillError
from pipeline.store import layout
from pipeline.store.schema import latent_array
from pipeline.store.manifest import Manifest, read_manifest
from pipeline.store.parquet_files import DamagedFileError, iter_parquet, open_parquet, read_parquet
from pipeline.store.schema import LATENT_SHAPED_COLUMNS, store_metadata
from pipeline.store.table_spec import TableSpec
from pipeline.uris import is_local, read_if_exists

if TYPE_CHECKING:
    import torch

    from pipeline.model_set import ModelSet


class StoreNotFoundError(LatentmillError, FileNotFoundError):
    """The URI is not a latent store (or it has no finished shard yet)."""


class StoreDamagedError(LatentmillError, ValueError):
    """A file that describes the store (recipe, plan, manifest) cannot be read."""


@dataclass
class Store:
    uri: str

    def __post_init__(self) -> None:
        if is_local(self.uri) and Path(self.uri.removeprefix("file://")).expanduser().is_file():
            raise StoreNotFoundError(f"{self.uri} is a file, not a latentmill store (a store is the folder "
                                     "`latentmill invert --output` makes)")

    def path(self, name: str) -> str:
        """The URI of a file of the store (a name from pipeline/store/layout.py)."""
        return layout.join(self.uri, name)

    @property
    def repair_hint(self) -> str:
        return (f"run `latentmill verify --repair {self.uri}` to move it aside, then rerun the store's invert command "
                "to redo what it held")

    def read_bytes(self, name: str) -> bytes | None:
        return read_if_exists(self.path(name))

    def exists(self, name: str) -> bool:
        fs, path = fsspec.core.url_to_fs(self.path(name))
        return fs.exists(path)

    def read_json(self, name: str) -> Any:
        """A JSON file of the store, None where it is absent; StoreDamagedError naming it where unreadable."""
        data = self.read_bytes(name)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StoreDamagedError(f"{self.path(name)} is not readable JSON ({exc}); {self.repair_hint}") from None

    # --- what the store is ---

    @cached_property
    def manifest(self) -> Manifest:
        """Finished, failed and torn manifest entries."""
        return read_manifest(self.uri)

    @property
    def finished(self) -> dict[str, dict[str, Any]]:
        """Finished shards: shard id -> manifest entry."""
        return self.manifest.finished

    @cached_property
    def files(self) -> list[str]:
        """The Parquet files of finished shards (from the manifest already read, not a second listing)."""
        return [layout.shard_file(self.uri, shard) for shard in sorted(self.finished)]

    @cached_property
    def recipe(self) -> dict[str, Any] | None:
        """The store's recipe (store.json), None for a store that has none yet."""
        from pipeline.store.store_recipe import check_recipe_file

        value = self.read_json(layout.RECIPE)
        if value is None:
            return None
        try:
            return check_recipe_file(value)
        except ValueError as exc:
            raise StoreDamagedError(f"{self.path(layout.RECIPE)}: {exc}; {self.repair_hint}") from None

    @cached_property
    def precisions(self) -> dict[str, str]:
        """The precision each kind of device ran `--precision auto` in (pipeline/precision.py)."""
        value = self.read_json(layout.PRECISION) or {}
        return {kind: entry["precision"] for kind, entry in value.items() if isinstance(entry, dict)}

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """Generator, models, latent shape and the run's settings, from the latents' schema."""
        with open_parquet(self.files[0], remedy=self.repair_hint) as parquet:
            return store_metadata(parquet.schema_arrow)

    @cached_property
    def schema(self) -> pa.Schema:
        with open_parquet(self.files[0], remedy=self.repair_hint) as parquet:
            return parquet.schema_arrow

    @property
    def settings(self) -> dict[str, Any]:
        return self.metadata.get("settings", {})

    @property
    def latent_shape(self) -> tuple[int, int]:
        return tuple(self.metadata["latent_shape"])

    @cached_property
    def input_plan(self) -> InputPlan:
        """The saved plan of the store's input (plan.parquet, or plan.json of older stores)."""
        if self.exists(layout.PLAN):
            try:
                return InputPlan.from_table(read_parquet(self.path(layout.PLAN), remedy=self.repair_hint))
            except (DamagedFileError, ValueError, KeyError) as exc:
                raise StoreDamagedError(f"{self.path(layout.PLAN)} is unreadable ({exc}); {self.repair_hint}") from None
        legacy = self.read_json(layout.LEGACY_PLAN)
        if legacy is None:
            raise StoreNotFoundError(f"{self.uri}: no {layout.PLAN}, so the inputs cannot be found again")
        try:
            return InputPlan.from_legacy_json(legacy)
        except (TypeError, KeyError, IndexError) as exc:
            raise StoreDamagedError(f"{self.path(layout.LEGACY_PLAN)} is not a plan ({exc}); {self.repair_hint}") \
                from None

    @property
    def plan(self) -> dict[str, ShardSpec]:
        plan = self.input_plan
        unknown = plan.nested_paths_unknown()
        if unknown:
            raise StoreDamagedError(f"{self.path(layout.PLAN)} was made before shards were recorded by their path "
                                    f"relative to the input, and {len(unknown)} tar or Parquet shards may be nested "
                                    f"({', '.join(unknown[:3])}): rerun the store's `latentmill invert` command once "
                                    "to upgrade its plan")
        return {spec.shard_id: spec for spec in plan.shards}

    @property
    def decode_settings(self) -> DecodeSettings:
        return DecodeSettings.recorded(self.settings)

    def summary(self) -> dict[str, Any] | None:
        """STORE/manifest.json: the store after its last run (None before the first run ends)."""
        try:
            return self.read_json(layout.SUMMARY)
        except StoreDamagedError:
            return None

    # --- rows ---

    def iter_batches(self, columns: Iterable[str] | None = None, *, batch_size: int = 65_536,
                     ) -> Iterator[pa.RecordBatch]:
        """Every row, in record batches (a row group at a time, shard by shard): memory stays flat at any
        size. Columns a store's files lack (latents of stages that did not run) are left out."""
        columns = list(columns) if columns is not None else None
        for uri in self.files:
            yield from iter_parquet(uri, columns, batch_size=batch_size, remedy=self.repair_hint)

    def to_arrow(self, columns: Iterable[str] | None = None) -> pa.Table:
        """Every row of the store as one Arrow table (latent columns flat, as stored)."""
        columns = list(columns) if columns is not None else None
        tables = [read_parquet(uri, columns, remedy=self.repair_hint) for uri in self.files]
        return pa.concat_tables(tables, promote_options="default")

    def to_pandas(self, columns: Iterable[str] | None = None, *, latents_as_arrays: bool = False,
                  meta_as_columns: bool = False) -> pd.DataFrame:
        """Every row as a DataFrame (every asked-for column of the schema, None where a stage did not run);
        latents_as_arrays reshapes each w_* (and z) value to [num_ws, w_dim]; meta_as_columns expands each
        input's JSON sidecar (`meta`) into columns `meta.<key>`."""
        columns = list(columns) if columns is not None else None
        frame = self.to_arrow(columns).to_pandas()
        from pipeline.store.schema import COLUMN_NAMES

        for name in (columns if columns is not None else COLUMN_NAMES):
            if name not in frame:
                frame[name] = None
        if latents_as_arrays:
            for column in LATENT_SHAPED_COLUMNS:
                if column in frame:
                    frame[column] = [None if v is None else np.asarray(v, np.float32).reshape(self.latent_shape)
                                     for v in frame[column]]
        if meta_as_columns and "meta" in frame:
            parsed = [json.loads(v) if isinstance(v, str) else {} for v in frame["meta"]]
            expanded = pd.json_normalize([p if isinstance(p, dict) else {"value": p} for p in parsed])
            expanded.columns = [f"meta.{c}" for c in expanded.columns]
            frame = pd.concat([frame.drop(columns="meta"), expanded.set_index(frame.index)], axis=1)
        return frame

    def to_ray_dataset(self, columns: Iterable[str] | None = None):
        """The rows as a Ray Dataset (streamed by Ray Data; the files of finished shards only)."""
        import ray.data

        return ray.data.read_parquet(self.files, columns=list(columns) if columns is not None else None)

    def to_duckdb(self, connection=None):
        """The rows as a DuckDB relation over the files of finished shards (queried lazily, streamed)."""
        import duckdb

        files = [fsspec.core.url_to_fs(uri)[1] if uri.startswith("file://") else uri for uri in self.files]
        return (connection or duckdb).read_parquet(files)

    def count_rows(self) -> int:
        return int(self.manifest.totals()["rows"])

    def error_reasons(self) -> dict[str, int]:
        """How many error rows the store holds, by reason (the text before the first colon), most first:
        from the manifest's counts (stores made before they were recorded: from the rows)."""
        if all("error_reasons" in entry for entry in self.finished.values()):
            return self.manifest.totals()["error_reasons"]
        reasons: Counter[str] = Counter()
        for batch in self.iter_batches(["status", "error"]):
            for status, error in zip(batch.column("status").to_pylist(), batch.column("error").to_pylist()):
                if status == "error" and error:
                    reasons[error.split(":", 1)[0]] += 1
        return dict(reasons.most_common())

    def ok_batches(self, column: str, columns: Iterable[str] = (), *, batch_size: int = 8192,
                   rows: np.ndarray | None = None) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(index of its first ok row, batch) over the ok rows, in store order, with `column` (refused where
        an ok row lacks it) and `columns`; a batch at a time, so memory stays flat at any size.
        rows: sorted ok-row indices; only batches holding some of them are given."""
        wanted = list(dict.fromkeys(["status", column, *columns]))
        offset = 0
        for batch in self.iter_batches(wanted, batch_size=batch_size):
            batch = batch.filter(pc.equal(batch.column("status"), "ok"))
            if batch.num_rows == 0:
                continue
            if column not in batch.schema.names or batch.column(column).null_count:
                raise ValueError(f"--column {column}: not present for every ok row of {self.uri}")
            if rows is None or np.searchsorted(rows, offset + batch.num_rows) > np.searchsorted(rows, offset):
                yield offset, batch
            offset += batch.num_rows

    def batch_latents(self, batch: pa.RecordBatch, column: str) -> np.ndarray:
        """One latent column of an Arrow batch as float32 [rows, num_ws, w_dim] (through Arrow, not lists)."""
        values = batch.column(column).flatten().to_numpy(zero_copy_only=False)
        return values.astype(np.float32).reshape(batch.num_rows, *self.latent_shape)

    def latents(self, frame: pd.DataFrame, column: str) -> np.ndarray:
        """One latent column of `frame` as float32 [rows, num_ws, w_dim]."""
        return latent_array(frame, column, self.latent_shape)

    def flagged_ids(self) -> set[str]:
        """The ids `latentmill curate` flagged (curation/flags.parquet), for --exclude-flagged; refused, with
        the command to run, where the store was never curated."""
        from pipeline.store.flags_schema import FLAGS

        found = self.read_table(layout.FLAGS, FLAGS)
        if found is None:
            raise ValueError(f"--exclude-flagged: {self.uri} has no {layout.FLAGS}; run `latentmill curate {self.uri}` "
                             "first")
        table = found[0].select(["image_id", "flagged"])
        return set(table.filter(pc.fill_null(table.column("flagged"), False)).column("image_id").to_pylist())

    def read_table(self, name: str, spec: TableSpec) -> tuple[pa.Table, dict[str, Any]] | None:
        """A table the store holds besides its rows (e.g. layout.FLAGS, spec FLAGS) and its metadata, or
        None where it was never written; checked to be that table."""
        if self.read_bytes(name) is None:
            return None
        table = read_parquet(self.path(name), remedy=f"rerun the command that writes it (or {self.repair_hint})")
        try:
            return table, spec.metadata(table.schema)
        except ValueError as exc:
            raise StoreDamagedError(f"{self.path(name)}: {exc}") from None

    def nearest(self, query: str | np.ndarray, k: int = 10, column: str = "w_refined") -> pd.DataFrame:
        """The k ok rows nearest `query` (an image_id or a latent [num_ws, w_dim]), nearest first, with their
        Euclidean `distance` in W+: from the store's Lance export and its index when one holds every shard
        (`latentmill export`), else by an exact scan a batch at a time (pipeline/store/nearest.py)."""
        from pipeline.store.nearest import nearest

        return nearest(self, query, k, column)

    # --- models and inputs: made by pipeline/store/store_models.py and store_inputs.py from this store's records ---

    def load_models(self, device: str | torch.device = "cpu", *, generator: str | None = None,
                    encoder: bool = False, prior: bool = False, identity: bool = False,
                    perceptual: str = "none") -> ModelSet:
        """The store's generator (or `generator`, which must be the same network) and the recorded
        encoder, prior and identity model where asked for and recorded, all checked against it."""
        from pipeline.store.store_models import load_store_models

        return load_store_models(self, device, generator=generator, encoder=encoder, prior=prior, identity=identity,
                                 perceptual=perceptual)

    def add_models(self, models: ModelSet, *, encoder: bool = False, prior: bool = False, identity: bool = False,
                   perceptual: str | None = None) -> ModelSet:
        """The recorded encoder, prior and identity model, where asked for and recorded, added to models
        already loaded by `load_models` (checked against their G; the generator is not loaded again)."""
        from pipeline.store.store_models import add_store_models

        return add_store_models(self, models, encoder=encoder, prior=prior, identity=identity, perceptual=perceptual)

    def read_inputs(self, shards: Sequence[str], image_ids: Sequence[str], *,
                    missing_ok: bool = False) -> dict[str, torch.Tensor]:
        """The decoded inputs ([C, R, R] in [-1, 1]) of rows given by (shard, image_id), by image_id,
        decoded as the run decoded them; each input shard involved is read once. An input no longer
        readable is a FileNotFoundError naming it, or (missing_ok) absent from the result."""
        from pipeline.store.store_inputs import read_store_inputs

        return read_store_inputs(self, shards, image_ids, missing_ok=missing_ok)


def open_store(uri: str) -> Store:
    """The latent store at `uri`; refuses, with what to do, a URI that holds no finished shard."""
    store = Store(uri)
    if not store.files:
        fs, path = fsspec.core.url_to_fs(uri)
        if not fs.exists(path):
            what = "does not exist"
        elif store.exists(layout.PLAN) or store.exists(layout.LEGACY_PLAN):
            what = "is a latentmill store without finished shards yet (its run has not finished a shard)"
        else:
            what = "holds no latentmill store (no plan, no finished shards)"
        raise StoreNotFoundError(f"{uri} {what}; make one with `latentmill invert --output {uri} ...`")
    return store


def read_latents(uri: str, *, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """All rows of the store at `uri` (latent columns flat, as stored)."""
    return open_store(uri).to_pandas(columns)


def read_store_metadata(uri: str) -> dict[str, Any]:
    """Generator, latent shape and settings recorded in the store's schema."""
    return open_store(uri).metadata
