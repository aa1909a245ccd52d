"""Opening a latent store: the one way every command reads one.

    store = open_store("out/faces")
    frame = store.to_pandas(latents_as_arrays=True)      # w_* columns as [num_ws, w_dim] arrays
    models = store.load_models(device, prior=True)       # the run's models, checked against the store
    inputs = store.read_inputs(shards, image_ids)        # the pixels each latent was fitted to

Metadata, plan and manifest are read once, lazily. Models are loaded through the one model
loader (pipeline/models/model_set.py) with the store's recorded generator fingerprint, so a
generator that is not the store's is refused; inputs are decoded with the run's recorded
DecodeSettings, so they are the exact pixels the latents were fitted to.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.decode import DecodeSettings, input_id
from pipeline.data.sources import ShardSpec, read_shard
from pipeline.errors import LatentmillError
from pipeline.store import layout
from pipeline.store.latent_store import latent_array, manifest_entries
from pipeline.store.layout import shard_file
from pipeline.store.schema import LATENT_SHAPED_COLUMNS, store_metadata
from pipeline.uris import read_json_if_exists

if TYPE_CHECKING:
    import torch

    from pipeline.models.model_set import ModelSet


class StoreNotFoundError(LatentmillError, FileNotFoundError):
    """The URI is not a latent store (or it has no finished shard yet)."""


@dataclass
class Store:
    uri: str

    @cached_property
    def manifest(self) -> dict[str, dict[str, Any]]:
        """Finished shards: shard id -> manifest entry."""
        return manifest_entries(self.uri)

    @cached_property
    def files(self) -> list[str]:
        """The Parquet files of finished shards (from the manifest already read, not a second listing)."""
        return [shard_file(self.uri, shard) for shard in sorted(self.manifest)]

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """Generator, models, latent shape and the run's settings, from the latents' schema."""
        fs, path = fsspec.core.url_to_fs(self.files[0])
        with fs.open(path, "rb") as f:
            return store_metadata(pq.read_schema(f))

    @property
    def settings(self) -> dict[str, Any]:
        return self.metadata.get("settings", {})

    @property
    def latent_shape(self) -> tuple[int, int]:
        return tuple(self.metadata["latent_shape"])

    @cached_property
    def plan(self) -> dict[str, ShardSpec]:
        saved = read_json_if_exists(layout.join(self.uri, layout.PLAN))
        if saved is None:
            raise StoreNotFoundError(f"{self.uri}: no {layout.PLAN}, so the inputs cannot be found again")
        return {s["shard_id"]: ShardSpec(**s) for s in saved["shards"]}

    @property
    def decode_settings(self) -> DecodeSettings:
        return DecodeSettings.recorded(self.settings)

    # --- rows ---

    def to_arrow(self, columns: Iterable[str] | None = None) -> pa.Table:
        """Every row of the store as one Arrow table (latent columns flat, as stored)."""
        tables = []
        for uri in self.files:
            fs, path = fsspec.core.url_to_fs(uri)
            with fs.open(path, "rb") as f:
                tables.append(pq.read_table(f, columns=list(columns) if columns else None))
        return pa.concat_tables(tables, promote_options="default")

    def to_pandas(self, columns: Iterable[str] | None = None, *, latents_as_arrays: bool = False,
                  meta_as_columns: bool = False) -> pd.DataFrame:
        """Every row as a DataFrame; latents_as_arrays reshapes each w_* (and z) value to [num_ws, w_dim];
        meta_as_columns expands each input's JSON sidecar (`meta`) into columns `meta.<key>`."""
        frame = self.to_arrow(columns).to_pandas()
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

    def error_reasons(self) -> dict[str, int]:
        """How many error rows the store holds, by reason (the text before the first colon), most first."""
        table = self.to_arrow(["status", "error"])
        reasons = Counter(error.split(":", 1)[0] for status, error in
                          zip(table.column("status").to_pylist(), table.column("error").to_pylist())
                          if status == "error" and error)
        return dict(reasons.most_common())

    def ok_rows(self, column: str, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """The ok rows that have `column`; refuses a store where some ok row lacks it."""
        frame = self.to_pandas(columns)
        ok = frame[frame["status"] == "ok"].reset_index(drop=True)
        if ok.empty:
            raise ValueError(f"{self.uri}: no ok rows")
        if column not in ok or ok[column].isna().any():
            raise ValueError(f"--column {column}: not present for every ok row of {self.uri}")
        return ok

    def latents(self, frame: pd.DataFrame, column: str) -> np.ndarray:
        """One latent column of `frame` as float32 [rows, num_ws, w_dim]."""
        return latent_array(frame, column, self.latent_shape)

    # --- models and inputs ---

    def load_models(self, device: str | torch.device = "cpu", *, generator: str | None = None,
                    encoder: bool = False, prior: bool = False, identity: bool = False,
                    perceptual: str = "none") -> ModelSet:
        """The store's generator (or `generator`, which must be the same network) and the recorded
        encoder, prior and identity model where asked for and recorded, all checked against it."""
        from pipeline.models.model_set import load_model_set

        meta = self.metadata
        models = load_model_set(generator or meta["generator"], device=device,
                                generator_fingerprint=meta["generator_fingerprint"],
                                generator_setting="--generator" if generator else f"the store's generator ({layout.RECIPE})")
        return self.add_models(models, encoder=encoder, prior=prior, identity=identity, perceptual=perceptual)

    def add_models(self, models: ModelSet, *, encoder: bool = False, prior: bool = False, identity: bool = False,
                   perceptual: str | None = None) -> ModelSet:
        """The recorded encoder, prior and identity model, where asked for and recorded, added to models
        already loaded by `load_models` (checked against their G; the generator is not loaded again)."""
        from pipeline.models.model_set import add_models

        meta, settings = self.metadata, self.settings
        return add_models(models, encoder=meta.get("encoder") if encoder else None,
                          prior=meta.get("prior") if prior else None, perceptual=perceptual,
                          lpips_weights=settings.get("lpips_weights"),
                          identity_model=settings.get("identity_model", "facenet") if identity else None,
                          facenet_weights=settings.get("facenet_weights"))

    def read_inputs(self, shards: Sequence[str], image_ids: Sequence[str]) -> dict[str, torch.Tensor]:
        """The decoded inputs ([C, R, R] in [-1, 1]) of rows given by (shard, image_id), by image_id,
        decoded as the run decoded them; each input shard involved is read once."""
        import torch

        decoding = self.decode_settings
        aligner = decoding.aligner()
        resolution, channels = self.metadata["img_resolution"], self.metadata["img_channels"]
        wanted: dict[str, set[str]] = {}
        for shard, image_id in zip(shards, image_ids):
            wanted.setdefault(shard, set()).add(image_id)
        found: dict[str, torch.Tensor] = {}
        for shard, ids in wanted.items():
            if shard not in self.plan:
                raise KeyError(f"{self.uri}: shard {shard!r} is not in {layout.PLAN}")
            inputs = {input_id(row_id) for row_id in ids}
            for record in read_shard(self.plan[shard]):
                if record.image_id in inputs and record.data is not None:
                    rows = decoding.decode_rows(record.data, resolution=resolution, channels=channels, aligner=aligner)
                    for row_id, decoded in zip(decoding.row_ids(record.image_id, rows), rows):
                        if decoded.ok and row_id in ids:
                            found[row_id] = torch.from_numpy(decoded.image)
        missing = [i for i in image_ids if i not in found]
        if missing:
            raise FileNotFoundError(f"{self.uri}: inputs no longer readable: {missing[:5]}")
        return found


def open_store(uri: str) -> Store:
    """The latent store at `uri`; refuses, with what to do, a URI that holds no finished shard."""
    store = Store(uri)
    if not store.files:
        fs, path = fsspec.core.url_to_fs(uri)
        what = "does not exist" if not fs.exists(path) else "has no finished shards (is this a latentmill store?)"
        raise StoreNotFoundError(f"{uri} {what}; make one with `latentmill invert --output {uri} ...`")
    return store



def read_latents(uri: str, *, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """All rows of the store at `uri` (latent columns flat, as stored)."""
    return open_store(uri).to_pandas(columns)


def read_store_metadata(uri: str) -> dict[str, Any]:
    """Generator, latent shape and settings recorded in the store's schema."""
    return open_store(uri).metadata
