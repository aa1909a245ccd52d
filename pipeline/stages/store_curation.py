"""Flagging a store's rows: outliers (prior NLL), near-duplicates and bad reconstructions.

`flag_store` reads the ok rows of a claimed store, writes STORE/curation/flags.parquet (schema `flags`
v1, schemas/flags.v1.json) and STORE/curation/summary.json through its claim. The near-duplicate
search saves its
progress as it goes, so a killed run resumes where it stopped. One process: the search is a
blockwise matrix product, on the GPU when there is one.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import asdict
from typing import Any

import numpy as np
from tqdm.auto import tqdm
import pandas as pd
import pyarrow as pa
import torch

from pipeline.devices import resolve_device
from pipeline.stages.curate import (DuplicatePairs, SearchProgress, above_percentile, duplicate_groups,
                                   near_duplicate_pairs, percentile_rank)
from pipeline.stages.curation_settings import CurateConfig
from pipeline.stages.identity import IdentityModel
from pipeline.store import layout
from pipeline.store.flags_schema import FLAGS_VERSION, flags_schema
from pipeline.store.store import Store
from pipeline.store.writer import StoreWriter


def _identity_features(store: Store, model: IdentityModel, ok: pd.DataFrame, device: torch.device) -> torch.Tensor:
    embeddings: dict[str, torch.Tensor] = {}
    for _, part in ok.groupby("shard", sort=False):  # each input shard is read once
        inputs = store.read_inputs(part["shard"].tolist(), part["image_id"].tolist())
        ids = part["image_id"].tolist()
        for start in range(0, len(ids), 256):
            chunk = ids[start : start + 256]
            with torch.no_grad():
                embeddings.update(zip(chunk, model.embed(torch.stack([inputs[i] for i in chunk]).to(device))))
    return torch.stack([embeddings[i] for i in ok["image_id"]])


def _load_search(store: Store, key: str, rows: int) -> SearchProgress | None:
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


def _save_search(writer: StoreWriter, key: str, rows: int, progress: SearchProgress) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), rows=np.array(rows), next_row=np.array(progress.next_row),
             first=progress.pairs.first, second=progress.pairs.second, cosine=progress.pairs.cosine)
    writer.write_bytes(layout.SEARCH_PROGRESS, buffer.getvalue())


def flag_store(store: StoreWriter, cfg: CurateConfig, key: str) -> dict[str, Any]:
    """Flag the ok rows of `store`; `key` identifies the rows and settings (a resumed search must match it)."""
    device = resolve_device(cfg.device)
    ok = store.ok_rows(cfg.column)
    ws = torch.from_numpy(store.latents(ok, cfg.column)).to(device)
    has_prior, by_identity = bool(store.metadata.get("prior")), cfg.duplicates_by == "identity"
    # the generator once, for the prior's and the identity model's checks, only when one is needed
    models = store.load_models(device, prior=has_prior, identity=by_identity) if has_prior or by_identity else None
    prior = models.prior if models is not None else None

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
        features = _identity_features(store, models.identity, ok, device)
    elif prior is not None:
        features = prior.whiten(ws).flatten(1)  # independent samples are near-orthogonal here
    else:
        features = (ws - ws.mean(dim=0)).flatten(1)
    bar = tqdm(total=len(ok), desc="curate: near-duplicate search", unit="row", disable=not cfg.progress)

    def searched(rows: int) -> None:
        bar.n = rows
        bar.refresh()

    pairs = near_duplicate_pairs(features, cfg.duplicate_threshold, block_size=cfg.block_size,
                                 resume=_load_search(store, key, len(ok)),
                                 on_progress=lambda p: _save_search(store, key, len(ok), p), on_rows=searched)
    bar.close()
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
    store.write_table(layout.FLAGS, table)
    summary = {"rows": len(ok), "outliers": int(outlier.sum()), "duplicate_pairs": len(pairs.first),
               "duplicates": int(duplicate.sum()), "duplicate_groups": int(len(set(groups[duplicate]))),
               "bad_reconstructions": int(bad.sum()), "flagged": int((outlier | duplicate | bad).sum()),
               "duplicates_by": cfg.duplicates_by, "settings": asdict(cfg)}
    store.write_json(layout.CURATION_SUMMARY, summary)
    store.remove(layout.SEARCH_PROGRESS)
    return summary
