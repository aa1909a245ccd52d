"""Flagging a store's rows: outliers (prior NLL), near-duplicates and bad reconstructions, at any size.

`flag_store` streams the ok rows of a claimed store (only the columns it needs, a batch at a time),
writes STORE/curation/flags.parquet (schema `flags` v2) and STORE/curation/summary.json through its
claim. Memory stays flat in the number of rows but for a few numbers per row:
- pass 1 reads each batch's latent (or, with `--duplicates-by identity`, the inputs' identity
  embeddings), computes the prior NLL and the features of the near-duplicate search, and keeps the
  scalar metrics. Small stores keep the full features and search exactly (blockwise, the reference);
  larger ones write projected features to a file (read back a range at a time) and search through an approximate
  index (pipeline/curation/similarity_search.py), on the GPU as an exact search over those;
- pass 2 (approximate search only) re-reads just the rows of pairs whose projected cosine lies near
  the threshold, and decides them by their exact cosine.
The search saves its progress as it goes, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pipeline.progress import progress_bar

from pipeline.devices import resolve_device
from pipeline.model_set import ModelSet
from pipeline.curation.curate import above_percentile, duplicate_groups, near_duplicate_pairs, percentile_rank
from pipeline.curation.curation_settings import CurateConfig
from pipeline.curation.cross_store import cross_store_duplicates
from pipeline.curation.similarity_search import (DuplicatePairs, FeatureFile, RandomProjection, SearchProgress,
                                              approximate_pairs, exact_cosines, projection_band, split_by_band)
from pipeline.priors.latent_prior import in_chunks
from pipeline.heap import release_free_heap
from pipeline.store import layout
from pipeline.store.flags_schema import FLAGS_VERSION, flags_schema
from pipeline.store.store import Store
from pipeline.store.writer import StoreWriter

NLL_COLUMNS = {"w_refined": "prior_nll_refined", "w_encoded": "prior_nll_encoded", "w_compressed": "prior_nll_compressed"}
METRICS = ("mse", "perceptual", "id_cosine_refined")
EXACT_MAX_FEATURES = 2**27  # rows x feature dims kept in memory for the exact search (512 MiB of float32)
EXACT_MAX_WORK = 2**42  # rows^2 x dims of the exact search (minutes on two cores), beyond which `auto` indexes
BATCH_ROWS = 8192


def load_search(store: Store, key: str, rows: int) -> SearchProgress | None:
    """A partial near-duplicate search kept across a kill (layout.SEARCH_PROGRESS), if it is this one's."""
    data = store.read_bytes(layout.SEARCH_PROGRESS)
    if data is None:
        return None
    with np.load(io.BytesIO(data), allow_pickle=False) as saved:
        if str(saved["key"]) != key or int(saved["rows"]) != rows:
            return None
        progress = SearchProgress(int(saved["next_row"]),
                                  DuplicatePairs(saved["first"], saved["second"], saved["cosine"]))
    print(f"curate: resuming the near-duplicate search at row {progress.next_row:,} of {rows:,} (an earlier run "
          "was interrupted)", file=sys.stderr)
    return progress


def save_search(writer: StoreWriter, key: str, rows: int, progress: SearchProgress) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), rows=np.array(rows), next_row=np.array(progress.next_row),
             first=progress.pairs.first, second=progress.pairs.second, cosine=progress.pairs.cosine)
    writer.write_bytes(layout.SEARCH_PROGRESS, buffer.getvalue())


@dataclass
class OkRows:
    """What pass 1 keeps of the ok rows: ids, scalar metrics and the search's features."""

    ids: list[pa.Array] = field(default_factory=list)
    shards: list[pa.Array] = field(default_factory=list)
    nll: list[np.ndarray] = field(default_factory=list)
    metrics: dict[str, list[np.ndarray]] = field(default_factory=lambda: {m: [] for m in METRICS})
    features: list[torch.Tensor] = field(default_factory=list)  # exact search: full features
    count: int = 0

    def column(self, name: str) -> np.ndarray:
        return np.concatenate(self.metrics[name]) if self.metrics[name] else np.zeros(0)


class FeatureSource:
    """The features of the duplicate search for a batch of ok rows: whitened latents (or latents minus
    the generator's w_avg, without a prior), or identity embeddings of the re-read inputs."""

    def __init__(self, store: Store, models: ModelSet, cfg: CurateConfig, device: torch.device) -> None:
        self.store, self.models, self.cfg, self.device = store, models, cfg, device

    @property
    def dim(self) -> int:
        if self.cfg.duplicates_by == "identity":
            with torch.no_grad():
                probe = torch.zeros(1, self.models.G.img_channels, self.models.G.img_resolution,
                                    self.models.G.img_resolution, device=self.device)
                return int(self.models.identity.embed(probe).shape[1])
        num_ws, w_dim = self.store.latent_shape
        return num_ws * w_dim

    def __call__(self, ws: torch.Tensor, image_ids: list[str], shards: list[str]) -> torch.Tensor:
        if self.cfg.duplicates_by == "identity":
            inputs = self.store.read_inputs(shards, image_ids)
            out = []
            with torch.no_grad():
                for start in range(0, len(image_ids), 256):
                    chunk = torch.stack([inputs[i] for i in image_ids[start : start + 256]]).to(self.device)
                    out.append(self.models.identity.embed(chunk).float())
            return torch.cat(out) if out else torch.zeros(0, self.dim, device=self.device)
        if self.models.prior is not None:
            return in_chunks(self.models.prior.whiten, ws).flatten(1)  # independent samples are near-orthogonal here
        return (ws - self.models.G.w_avg.to(ws.device)).flatten(1)


def _ok_batches(store: Store, cfg: CurateConfig, rows: np.ndarray | None = None):
    """(first row index, ok-row arrow batch) of the store, in order; rows (sorted): only batches holding these."""
    return store.ok_batches(cfg.column, ["image_id", "shard", NLL_COLUMNS[cfg.column], *METRICS],
                            batch_size=BATCH_ROWS, rows=rows)


def _latents(store: Store, batch: pa.RecordBatch, column: str, device: torch.device) -> torch.Tensor:
    """A batch's latent column as float32 [rows, num_ws, w_dim]."""
    return torch.from_numpy(store.batch_latents(batch, column)).to(device)


def read_ok_rows(store: Store, cfg: CurateConfig, features_of: FeatureSource, device: torch.device,
                 projected: FeatureFile | None, projection: RandomProjection | None, bar: Any) -> OkRows:
    """Pass 1: ids, metrics and the prior NLL of every ok row; the search features, full (exact) or
    projected into `projected` (approximate)."""
    kept, nll_column = OkRows(), NLL_COLUMNS[cfg.column]
    for offset, batch in _ok_batches(store, cfg):
        ws = _latents(store, batch, cfg.column, device)
        ids, shards = batch.column("image_id"), batch.column("shard")
        kept.ids.append(ids)
        kept.shards.append(shards)
        with torch.no_grad():
            if features_of.models.prior is not None:
                kept.nll.append(in_chunks(features_of.models.prior.nll, ws).double().cpu().numpy())
            elif nll_column in batch.schema.names:
                kept.nll.append(batch.column(nll_column).to_numpy(zero_copy_only=False).astype(float))
            else:
                kept.nll.append(np.full(batch.num_rows, np.nan))
            for name in METRICS:
                values = batch.column(name).to_numpy(zero_copy_only=False).astype(float) \
                    if name in batch.schema.names else np.full(batch.num_rows, np.nan)
                kept.metrics[name].append(values)
            features = features_of(ws, ids.to_pylist(), shards.to_pylist())
            if projected is None:
                kept.features.append(features.cpu())
            else:
                projected.write(offset, projection(features).cpu().numpy())
        kept.count = offset + batch.num_rows
        bar.update(batch.num_rows)
        release_free_heap()
    return kept


def full_features(store: Store, cfg: CurateConfig, features_of: FeatureSource, device: torch.device,
                  wanted: set[int]) -> dict[int, torch.Tensor]:
    """Pass 2: the full search features of the ok rows numbered in `wanted` (only their batches are read)."""
    found: dict[int, torch.Tensor] = {}
    rows = np.array(sorted(wanted), dtype=np.int64)
    for offset, batch in _ok_batches(store, cfg, rows):
        local = (rows[np.searchsorted(rows, offset) : np.searchsorted(rows, offset + batch.num_rows)] - offset).tolist()
        batch = batch.take(pa.array(local, pa.int64()))
        ws = _latents(store, batch, cfg.column, device)
        with torch.no_grad():
            features = features_of(ws, batch.column("image_id").to_pylist(), batch.column("shard").to_pylist())
        found.update({offset + r: f.cpu() for r, f in zip(local, features)})
        release_free_heap()
    return found


def choose_search(cfg: CurateConfig, rows: int, dim: int, device: torch.device) -> str:
    """'exact' for stores the exact search handles in minutes and memory allows, else 'approximate'."""
    if cfg.search != "auto":
        return cfg.search
    small = rows * dim <= EXACT_MAX_FEATURES and rows * rows * dim <= EXACT_MAX_WORK * (50 if device.type == "cuda" else 1)
    return "exact" if small else "approximate"


def find_pairs(store: StoreWriter, cfg: CurateConfig, key: str, device: torch.device,
               models: ModelSet) -> tuple[OkRows, Any, dict[str, Any]]:
    """Pass 1 and the search: the ok rows and their near-duplicate pairs (cosine >= the threshold)."""
    features_of = FeatureSource(store, models, cfg, device)
    rows = int(store.manifest.totals()["ok"])
    if rows == 0:
        raise ValueError(f"{store.uri}: no ok rows")
    dim = features_of.dim
    search = choose_search(cfg, rows, dim, device)
    bar = progress_bar(total=rows, desc="curate: read rows", unit="row", enabled=cfg.progress)
    with tempfile.TemporaryDirectory(prefix="latentmill-curate-") as tmp, contextlib.ExitStack() as cleanup:
        projection = projected = None
        if search == "approximate":
            projection = RandomProjection(dim)
            projected = FeatureFile(Path(tmp) / "features.f16", rows, projection.out_dim)
            cleanup.callback(projected.close)
        kept = read_ok_rows(store, cfg, features_of, device, projected, projection, bar)
        bar.close()
        if kept.count != rows:
            raise ValueError(f"{store.uri}: its manifest counts {rows} ok rows, its files hold {kept.count}; run "
                             f"`latentmill verify {store.uri}`")
        bar = progress_bar(total=rows, desc="curate: near-duplicate search", unit="row", enabled=cfg.progress)
        searched = (lambda done: (setattr(bar, "n", done), bar.refresh()))
        resume = load_search(store, key, rows)
        save = (lambda progress: save_search(store, key, rows, progress))
        info = {"search": search, "features": cfg.duplicates_by, "feature_dim": dim}
        if search == "exact":
            pairs = near_duplicate_pairs(torch.cat(kept.features).to(device), cfg.duplicate_threshold,
                                         block_size=cfg.block_size, resume=resume, on_progress=save, on_rows=searched)
            kept.features = []
        else:
            band = projection_band(cfg.duplicate_threshold, projection.out_dim, projection.matrix is None)
            radius = cfg.duplicate_threshold - band
            if device.type == "cuda":
                candidates = near_duplicate_pairs(torch.from_numpy(projected[0:rows].copy()).to(device), radius,
                                                  block_size=cfg.block_size, resume=resume, on_progress=save,
                                                  on_rows=searched)
            else:
                candidates = approximate_pairs(projected, radius, resume=resume, on_progress=save, on_rows=searched)
            sure, undecided = split_by_band(candidates, cfg.duplicate_threshold, band)
            rows_needed = set(undecided.first.tolist()) | set(undecided.second.tolist())
            if len(undecided):
                undecided.cosine = exact_cosines(undecided, full_features(store, cfg, features_of, device,
                                                                          rows_needed))
            decided = undecided.where(undecided.cosine >= cfg.duplicate_threshold)
            pairs = DuplicatePairs.concat([sure, decided])
            info.update(projected_dim=projection.out_dim, band=round(band, 4), candidate_pairs=len(candidates),
                        verified_pairs=len(undecided))
        bar.close()
    return kept, pairs, info


def _joined_reasons(reasons: list[tuple[str, np.ndarray]], n: int) -> pa.Array:
    """Each row's reasons joined by commas ("mse,identity"), null where none: each row's set of reasons as a
    bit mask picks its text from the 2^k possible ones, with no Python object per row."""
    mask = np.zeros(n, dtype=np.int64)
    for bit, (_, hit) in enumerate(reasons):
        mask |= hit.astype(np.int64) << bit
    texts = [",".join(name for bit, (name, _) in enumerate(reasons) if combo >> bit & 1) or None
             for combo in range(2 ** len(reasons))]
    return pc.take(pa.array(texts, pa.string()), pa.array(mask))


def flag_store(store: StoreWriter, cfg: CurateConfig, key: str) -> dict[str, Any]:
    """Flag the ok rows of `store`; `key` identifies the rows and settings (a resumed search must match it)."""
    device = resolve_device(cfg.device)
    by_identity = cfg.duplicates_by == "identity"
    models = store.load_models(device, prior=bool(store.metadata.get("prior")), identity=by_identity)
    kept, pairs, search = find_pairs(store, cfg, key, device, models)
    n = kept.count
    cross = cross_store_duplicates(
        store, cfg, features_of=lambda s: FeatureSource(s, models, cfg, device),
        full_features=lambda s, source, wanted: full_features(s, cfg, source, device, wanted), rows=n) \
        if cfg.against else None
    crossed = cross.found if cross is not None else np.zeros(n, dtype=bool)
    nll = np.concatenate(kept.nll)
    outlier = above_percentile(nll, cfg.outlier_percentile)
    groups = duplicate_groups(n, pairs)
    best = np.full(n, np.nan, dtype=np.float32)  # each row's highest cosine to another group member
    np.fmax.at(best, pairs.first, pairs.cosine)
    np.fmax.at(best, pairs.second, pairs.cosine)
    ids = pa.concat_arrays([a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in kept.ids])
    shards = pa.concat_arrays([a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in kept.shards])
    duplicate = groups != np.arange(n)

    bad = np.zeros(n, dtype=bool)
    reasons: list[tuple[str, np.ndarray]] = []
    for name, column, percentile in (("mse", "mse", cfg.mse_percentile),
                                     ("perceptual", "perceptual", cfg.perceptual_percentile)):
        values = kept.column(column)
        hit = above_percentile(values, percentile) if np.isfinite(values).any() else np.zeros(n, dtype=bool)
        reasons.append((name, hit))
        bad |= hit
    if cfg.min_identity is not None:
        hit = kept.column("id_cosine_refined") < cfg.min_identity
        reasons.append(("identity", hit))
        bad |= hit
    duplicate_of = pc.if_else(pa.array(duplicate), pc.take(ids, pa.array(groups)), pa.scalar(None, ids.type))
    table = pa.table({
        "image_id": ids, "shard": shards,
        "prior_nll": nll.astype(np.float32), "prior_nll_percentile": percentile_rank(nll).astype(np.float32),
        "outlier": outlier, "duplicate_group": groups,
        "duplicate_of": duplicate_of,
        "duplicate_cosine": pa.array(best, mask=np.isnan(best)),
        "duplicate": duplicate, "cross_duplicate": crossed,
        "cross_duplicate_of": pa.array(cross.of if cross is not None else [None] * n, pa.string()),
        "cross_duplicate_store": pa.array(cross.store if cross is not None else [None] * n, pa.string()),
        "cross_duplicate_cosine": pa.array(cross.cosine if cross is not None else np.zeros(n, np.float32),
                                           mask=~crossed),
        "bad_reconstruction": bad, "bad_reasons": _joined_reasons(reasons, n),
        "flagged": outlier | duplicate | crossed | bad, "schema_version": np.full(n, FLAGS_VERSION, dtype=np.int16),
    }, schema=flags_schema({"store": cfg.store, "settings": asdict(cfg), "search": search}))
    store.write_table(layout.FLAGS, table)
    summary = {"rows": n, "outliers": int(outlier.sum()), "duplicate_pairs": len(pairs),
               "duplicates": int(duplicate.sum()), "duplicate_groups": len(np.unique(groups[duplicate])),
               "cross_duplicates": int(crossed.sum()), "against": list(cfg.against),
               "bad_reconstructions": int(bad.sum()), "flagged": int((outlier | duplicate | crossed | bad).sum()),
               "duplicates_by": cfg.duplicates_by, "search": search, "settings": asdict(cfg)}
    store.write_json(layout.CURATION_SUMMARY, summary)
    store.remove(layout.SEARCH_PROGRESS)
    return summary
