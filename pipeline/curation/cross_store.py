"""Near-duplicates across stores (`latentmill curate STORE --against OTHER`): train/test leakage, the same
person in two datasets.

Both stores' features are the ones curate compares within a store (latents whitened by STORE's prior, or
identity embeddings of the inputs by STORE's identity model), projected by the same seeded map to 128
dimensions and written to files (pipeline/curation/similarity_search.py). An index of OTHER's projections
is built once and each row of STORE asks it for its few best matches: near-linear in both stores. Every
candidate within the projection's error band of the threshold or above is decided by its exact cosine on
the full features (one more pass over just the rows involved, in each store).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.curation.curation_settings import CurateConfig
from pipeline.curation.similarity_search import (FeatureFile, RandomProjection, cross_pairs, exact_cosines,
                                                 projection_band)
from pipeline.store.store import Store, open_store

BATCH_ROWS = 8192


@dataclass
class CrossDuplicates:
    """For each ok row of STORE (in store order): its best near-duplicate in another store, if any."""

    of: np.ndarray  # object [N]: the other store's image_id, or None
    store: np.ndarray  # object [N]: that store's URI, or None
    cosine: np.ndarray  # float32 [N], NaN where none

    @property
    def found(self) -> np.ndarray:
        return ~np.isnan(self.cosine)


def check_comparable(store: Store, other: Store, cfg: CurateConfig) -> None:
    """Latents are compared only between stores of one generator, in the chosen column."""
    if cfg.duplicates_by == "latent" and other.metadata.get("generator_fingerprint") != \
            store.metadata.get("generator_fingerprint"):
        raise ValueError(f"--against {other.uri}: made with another generator than {store.uri}, so their latents "
                         "are not comparable; use --duplicates-by identity to compare the images' identities")
    if cfg.duplicates_by == "latent" and cfg.column not in other.schema.names:
        raise ValueError(f"--against {other.uri}: it has no {cfg.column} column")


def project_rows(store: Store, cfg: CurateConfig, features_of, projection: RandomProjection, path: Path,
                 rows: int) -> tuple[FeatureFile, list[str]]:
    """The projected features of the store's ok rows in a file, and their image_ids."""
    projected = FeatureFile(path, rows, projection.out_dim)
    ids: list[str] = []
    for offset, batch in store.ok_batches(cfg.column, ["image_id", "shard"], batch_size=BATCH_ROWS):
        ws = torch.from_numpy(store.batch_latents(batch, cfg.column)).to(features_of.device)
        batch_ids = batch.column("image_id").to_pylist()
        with torch.no_grad():
            features = features_of(ws, batch_ids, batch.column("shard").to_pylist())
        projected.write(offset, projection(features).cpu().numpy())
        ids += batch_ids
    return projected, ids


def cross_store_duplicates(store: Store, cfg: CurateConfig, features_of, full_features, rows: int,
                           on_store: callable = None) -> CrossDuplicates:
    """Each ok row's best near-duplicate (cosine >= the threshold) among the ok rows of every --against store.
    features_of(store): the FeatureSource of a store; full_features(store, wanted rows): their full features."""
    best = CrossDuplicates(np.full(rows, None, object), np.full(rows, None, object), np.full(rows, np.nan, np.float32))
    mine = features_of(store)
    projection = RandomProjection(mine.dim)
    band = projection_band(cfg.duplicate_threshold, projection.out_dim, projection.matrix is None)
    with tempfile.TemporaryDirectory(prefix="latentmill-against-") as tmp:
        queries, _ = project_rows(store, cfg, mine, projection, Path(tmp) / "store.f16", rows)
        try:
            for uri in cfg.against:
                other = open_store(uri)
                check_comparable(store, other, cfg)
                other_rows = int(other.manifest.totals()["ok"])
                if other_rows == 0:
                    continue
                theirs = features_of(other)
                base, other_ids = project_rows(other, cfg, theirs, projection, Path(tmp) / "other.f16", other_rows)
                try:
                    pairs = cross_pairs(queries, base, cfg.duplicate_threshold - band)
                finally:
                    base.close()
                if len(pairs):
                    a = full_features(store, mine, set(pairs.first.tolist()))
                    b = full_features(other, theirs, set(pairs.second.tolist()))
                    pairs.cosine = exact_cosines(pairs, {**{("a", i): v for i, v in a.items()},
                                                         **{("b", j): v for j, v in b.items()}}, keys=("a", "b"))
                    pairs = pairs.where(pairs.cosine >= cfg.duplicate_threshold)
                for i, j, c in zip(pairs.first, pairs.second, pairs.cosine):
                    if not c <= best.cosine[i]:  # NaN (none yet) or lower
                        best.of[i], best.store[i], best.cosine[i] = other_ids[j], other.uri, c
                if on_store is not None:
                    on_store(uri, len(pairs))
        finally:
            queries.close()
    return best
