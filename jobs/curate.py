"""`latentmill curate STORE` / `python -m jobs.curate`: flag outliers, near-duplicates and bad reconstructions.

Reads the ok rows of a latent store, writes STORE/curation/flags.parquet (schema `flags` v1,
schemas/flags.v1.json) and STORE/curation/summary.json, and the report (`latentmill report`) shows
them. One process: the duplicate search is a blockwise matrix product, on the GPU when there is one.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import torch

from pipeline.priors.gaussian import GaussianizedPrior
from pipeline.stages.curate import (DuplicatePairs, SearchProgress, above_percentile, duplicate_groups,
                                   near_duplicate_pairs, percentile_rank)
from pipeline.store.flags_schema import FLAGS_VERSION, flags_schema
from pipeline.store.derived_outputs import inputs_key, reuse_or_compute
from pipeline.store.latent_store import latent_array, read_latents, read_store_metadata, write_parquet
from pipeline.uris import read_bytes, write_bytes

DUPLICATE_FEATURES = ("latent", "identity")


@dataclass
class CurateConfig:
    store: str
    column: str = "w_refined"  # latents tested: w_refined | w_encoded | w_compressed
    outlier_percentile: float = 99.0
    duplicate_threshold: float = 0.95
    duplicates_by: str = "latent"  # 'latent' (whitened in the prior's space) | 'identity' (input embeddings)
    mse_percentile: float = 95.0
    perceptual_percentile: float = 95.0
    min_identity: float | None = None  # identity cosine below this is a bad reconstruction
    block_size: int | None = None  # None: about 2^28 similarities per block
    device: str = "cpu"

    def validate(self) -> None:
        if self.duplicates_by not in DUPLICATE_FEATURES:
            raise ValueError(f"--duplicates-by must be one of {DUPLICATE_FEATURES}")
        if not -1 <= self.duplicate_threshold <= 1:
            raise ValueError("--duplicate-threshold is a cosine, between -1 and 1")
        for name in ("outlier_percentile", "mse_percentile", "perceptual_percentile"):
            if not 0 < getattr(self, name) < 100:
                raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 100")


def _identity_features(cfg: CurateConfig, meta: dict[str, Any], ok, device: torch.device) -> torch.Tensor:
    from pipeline.stages.identity import load_identity_model
    from pipeline.store.store_inputs import load_store_inputs_by_id

    settings = meta.get("settings", {})
    model, _ = load_identity_model(settings.get("identity_model", "facenet"),
                                   facenet_weights=settings.get("facenet_weights"), device=device)
    embeddings: dict[str, torch.Tensor] = {}
    for _, part in ok.groupby("shard", sort=False):  # each input shard is read once
        inputs = load_store_inputs_by_id(cfg.store, meta, part["shard"].tolist(), part["image_id"].tolist())
        ids = part["image_id"].tolist()
        for start in range(0, len(ids), 256):
            chunk = ids[start : start + 256]
            with torch.no_grad():
                embeddings.update(zip(chunk, model.embed(torch.stack([inputs[i] for i in chunk]).to(device))))
    return torch.stack([embeddings[i] for i in ok["image_id"]])


def run(cfg: CurateConfig) -> dict[str, Any]:
    """Flag the store's rows; reuses STORE/curation when neither the rows nor the settings changed."""
    cfg.validate()
    root = cfg.store.rstrip("/") + "/curation"
    key = inputs_key(cfg.store, {k: v for k, v in asdict(cfg).items() if k != "device"})
    return reuse_or_compute(
        root, key, outputs=[root + "/flags.parquet", root + "/summary.json"], compute=lambda: _curate(cfg, key),
        reuse=lambda: {**json.loads(read_bytes(root + "/summary.json", setting="curation")), "reused": True},
        what="curate (the store's rows and the settings)")


SEARCH_PROGRESS = "search-progress.npz"  # a partial near-duplicate search, kept across a kill


def _load_search(uri: str, key: str, rows: int) -> SearchProgress | None:
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        return None
    with np.load(io.BytesIO(fs.cat_file(path)), allow_pickle=False) as saved:
        if str(saved["key"]) != key or int(saved["rows"]) != rows:
            return None
        progress = SearchProgress(int(saved["next_row"]),
                                  DuplicatePairs(saved["first"], saved["second"], saved["cosine"]))
    print(f"curate: resuming the near-duplicate search at row {progress.next_row:,} of {rows:,} (an earlier run "
          "was interrupted)", file=sys.stderr)
    return progress


def _save_search(uri: str, key: str, rows: int, progress: SearchProgress) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), rows=np.array(rows), next_row=np.array(progress.next_row),
             first=progress.pairs.first, second=progress.pairs.second, cosine=progress.pairs.cosine)
    write_bytes(uri, buffer.getvalue())


def _curate(cfg: CurateConfig, key: str) -> dict[str, Any]:
    device = torch.device(cfg.device)
    meta = read_store_metadata(cfg.store)
    frame = read_latents(cfg.store)
    ok = frame[frame["status"] == "ok"].reset_index(drop=True)
    if ok.empty:
        raise ValueError(f"{cfg.store}: no ok rows to curate")
    if cfg.column not in ok or ok[cfg.column].isna().any():
        raise ValueError(f"--column {cfg.column}: not present for every ok row of {cfg.store}")
    ws = torch.from_numpy(latent_array(ok, cfg.column, meta["latent_shape"])).to(device)
    prior = GaussianizedPrior.load(meta["prior"]).to(device) if meta.get("prior") else None

    # outliers: prior NLL
    nll_column = {"w_refined": "prior_nll_refined", "w_encoded": "prior_nll_encoded",
                  "w_compressed": "prior_nll_compressed"}[cfg.column]
    if prior is not None:
        nll = prior.nll(ws).double().cpu().numpy()
    elif nll_column in ok:
        nll = ok[nll_column].to_numpy(float)
    else:
        nll = np.full(len(ok), np.nan)
    outlier = above_percentile(nll, cfg.outlier_percentile)

    # near-duplicates
    if cfg.duplicates_by == "identity":
        features = _identity_features(cfg, meta, ok, device)
    elif prior is not None:
        features = prior.whiten(ws).flatten(1)  # independent samples are near-orthogonal here
    else:
        features = (ws - ws.mean(dim=0)).flatten(1)
    progress_uri = cfg.store.rstrip("/") + "/curation/" + SEARCH_PROGRESS
    pairs = near_duplicate_pairs(features, cfg.duplicate_threshold, block_size=cfg.block_size,
                                 resume=_load_search(progress_uri, key, len(ok)),
                                 on_progress=lambda p: _save_search(progress_uri, key, len(ok), p))
    groups = duplicate_groups(len(ok), pairs)
    best = np.full(len(ok), np.nan, dtype=np.float32)  # each row's highest cosine to another group member
    np.fmax.at(best, pairs.first, pairs.cosine)
    np.fmax.at(best, pairs.second, pairs.cosine)
    ids = ok["image_id"].to_numpy()
    duplicate = groups != np.arange(len(ok))

    # bad reconstructions
    reasons = [[] for _ in range(len(ok))]
    tests = [("mse", "mse", cfg.mse_percentile), ("perceptual", "perceptual", cfg.perceptual_percentile)]
    for name, column, percentile in tests:
        if column in ok and ok[column].notna().any():
            for i in np.flatnonzero(above_percentile(ok[column].to_numpy(float), percentile)):
                reasons[i].append(name)
    if cfg.min_identity is not None and "id_cosine_refined" in ok:
        for i in np.flatnonzero(ok["id_cosine_refined"].to_numpy(float) < cfg.min_identity):
            reasons[i].append("identity")
    bad = np.array([bool(r) for r in reasons])

    table = pa.table({
        "image_id": ids.tolist(), "shard": ok["shard"].tolist(),
        "prior_nll": nll.astype(np.float32), "prior_nll_percentile": percentile_rank(nll).astype(np.float32),
        "outlier": outlier, "duplicate_group": groups,
        "duplicate_of": [ids[g] if d else None for g, d in zip(groups, duplicate)],
        "duplicate_cosine": [None if np.isnan(c) else float(c) for c in best],
        "duplicate": duplicate, "bad_reconstruction": bad,
        "bad_reasons": [",".join(r) or None for r in reasons],
        "flagged": outlier | duplicate | bad, "schema_version": np.full(len(ok), FLAGS_VERSION, dtype=np.int16),
    }, schema=flags_schema({"store": cfg.store, "settings": asdict(cfg)}))
    root = cfg.store.rstrip("/") + "/curation"
    write_parquet(root + "/flags.parquet", table)
    summary = {"rows": len(ok), "outliers": int(outlier.sum()), "duplicate_pairs": len(pairs.first),
               "duplicates": int(duplicate.sum()), "duplicate_groups": int(len(set(groups[duplicate]))),
               "bad_reconstructions": int(bad.sum()), "flagged": int((outlier | duplicate | bad).sum()),
               "duplicates_by": cfg.duplicates_by, "settings": asdict(cfg)}
    write_bytes(root + "/summary.json", json.dumps(summary, indent=2).encode())
    fs, path = fsspec.core.url_to_fs(progress_uri)
    if fs.exists(path):
        fs.rm(path)
    return summary


if __name__ == "__main__":
    from pipeline.cli import main

    main(["curate", *sys.argv[1:]])
