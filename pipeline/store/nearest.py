"""The k ok rows nearest a query (an image_id or a latent), nearest first, by Euclidean distance in W+.

Where the store has a Lance export of the column that holds every finished shard (STORE/exports.json,
written by `latentmill export`), the export's IVF_PQ index finds candidates and Lance re-ranks
`refine_factor` times k of them by their exact distance, so the distances are exact. Otherwise the store
is scanned a batch at a time, keeping the k best: exact, memory flat, linear in the rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.store import layout

Store = Any  # pipeline.store.store.Store, whose `nearest` method calls this module (not imported: no circle)

NPROBES = 32  # IVF lists a query searches
REFINE_FACTOR = 10  # candidates re-ranked by their exact distance: this many times k
SCALARS = ("image_id", "source_uri", "shard", "mse", "perceptual", "id_cosine_refined", "prior_nll_refined",
           "prior_nll_encoded", "prior_nll_compressed")


def query_latent(store: Store, query: str | np.ndarray, column: str) -> tuple[np.ndarray, str | None]:
    """The query as a flat float32 vector [num_ws * w_dim], and its image_id when it names a row."""
    if not isinstance(query, str):
        vector = np.asarray(query, dtype=np.float32).reshape(-1)
        size = store.latent_shape[0] * store.latent_shape[1]
        if vector.size != size:
            raise ValueError(f"a latent of {size} values ({store.latent_shape[0]} x {store.latent_shape[1]}) is "
                             f"needed, got {vector.size}")
        return vector, None
    for _, batch in store.ok_batches(column, ["image_id"]):
        hit = pc.equal(batch.column("image_id"), query)
        if pc.any(hit).as_py():
            row = batch.filter(hit)
            return store.batch_latents(row, column)[0].reshape(-1), query
    raise KeyError(f"{query!r} is not an ok row of {store.uri}")


def usable_export(store: Store, column: str) -> str | None:
    """The Lance export of `column` that holds every finished shard of the store, if there is one."""
    record = store.read_json(layout.EXPORTS) or {}
    for uri, entry in record.items():
        if entry.get("column") == column and set(entry.get("shards", [])) >= set(store.manifest.finished) \
                and not entry.get("exclude_flagged"):
            return uri
    return None


def nearest(store: Store, query: str | np.ndarray, k: int = 10, column: str = "w_refined") -> pd.DataFrame:
    """The k ok rows nearest `query`, nearest first: their scalars and `distance` (Euclidean, in W+)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    export = usable_export(store, column)
    if export is not None:
        import lance

        dataset = lance.dataset(export)
        vector = _export_latent(dataset, query, column, store) if isinstance(query, str) else \
            query_latent(store, query, column)[0]
        return _from_index(dataset, vector, k, column)
    vector, _ = query_latent(store, query, column)
    return _scan(store, vector, k, column)


def _export_latent(dataset, image_id: str, column: str, store: Store) -> np.ndarray:
    """A row's latent from the export, found by its id through the export's BTREE index (no scan)."""
    quoted = image_id.replace("'", "''")
    found = dataset.to_table(columns=[column], filter=f"image_id = '{quoted}'")
    if found.num_rows == 0:
        raise KeyError(f"{image_id!r} is not an ok row of {store.uri}")
    return np.asarray(found.column(column)[0].values, dtype=np.float32)


def _from_index(dataset, vector: np.ndarray, k: int, column: str) -> pd.DataFrame:
    wanted = [c for c in SCALARS if c in dataset.schema.names]
    table = dataset.to_table(columns=wanted, nearest={"column": column, "q": vector, "k": k, "nprobes": NPROBES,
                                                      "refine_factor": REFINE_FACTOR})
    frame = table.to_pandas()
    frame["distance"] = np.sqrt(frame.pop("_distance").to_numpy(np.float64))  # Lance's L2 is squared
    return frame.sort_values("distance", kind="stable").reset_index(drop=True)


def _scan(store: Store, vector: np.ndarray, k: int, column: str) -> pd.DataFrame:
    wanted = [c for c in SCALARS if c in store.schema.names]
    best: pa.Table | None = None
    best_distance = np.zeros(0)
    target = vector.reshape(store.latent_shape)
    for _, batch in store.ok_batches(column, wanted):
        latents = store.batch_latents(batch, column)
        distance = np.sqrt(np.square(latents - target).sum(axis=(1, 2), dtype=np.float64))
        keep = np.argsort(distance, kind="stable")[:k]
        candidates = pa.Table.from_batches([batch.select(wanted)]).take(pa.array(keep))
        best = candidates if best is None else pa.concat_tables([best, candidates])
        best_distance = np.concatenate([best_distance, distance[keep]])
        order = np.argsort(best_distance, kind="stable")[:k]
        best, best_distance = best.take(pa.array(order)), best_distance[order]
    frame = best.to_pandas() if best is not None else pd.DataFrame(columns=wanted)
    frame["distance"] = best_distance
    return frame.reset_index(drop=True)
