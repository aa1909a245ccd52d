"""Latent stores written directly (no inversion run), for tests of what reads stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipeline.models.bundle import write_bundle
from pipeline.models.stylegan2 import Generator
from pipeline.priors.gaussian import GaussianizedPrior
from pipeline.store.latent_store import write_shard
from pipeline.store.schema import SCHEMA_VERSION, latents_schema


def synthetic_store(root: Path, G: Generator, prior: GaussianizedPrior, ws: torch.Tensor, *,
                    mse: np.ndarray | None = None) -> str:
    """A one-shard store of ok rows img000, img001, ... holding ws [N, num_ws, w_dim] as w_refined."""
    generator = str(root / "G.safetensors")
    write_bundle(generator, {"G_ema": G})
    prior_uri = str(root / "prior.safetensors")
    prior.save(prior_uri)
    schema = latents_schema(G.num_ws, G.w_dim, metadata={
        "generator": generator, "generator_fingerprint": prior.generator_fingerprint, "prior": prior_uri,
        "img_resolution": G.img_resolution, "img_channels": G.img_channels, "noise_mode": "const"})
    n = len(ws)
    ids = [f"img{i:03d}" for i in range(n)]
    columns = {f.name: [None] * n for f in schema}
    columns.update(image_id=ids, source_uri=ids, shard=["s0"] * n, status=["ok"] * n,
                   w_refined=list(ws.flatten(1).numpy()),
                   mse=list(mse if mse is not None else np.linspace(0.01, 0.2, n)),
                   model_fingerprint=["x"] * n, schema_version=[SCHEMA_VERSION] * n)
    table = pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)
    store = str(root / "store")
    write_shard(store, "s0", table, {"shard": "s0", "rows": n, "ok": n, "errors": 0})
    return store



def invert_here(cfg):
    """What `latentmill invert` does, in this process and without Ray (claim the store, prepare it,
    process every shard to do); returns the store's rows. For tests of what reads or guards a store
    made by a real inversion; Ray itself is tested in test_invert_job.py."""
    from pipeline.runtime.invert_store import check_arguments, prepare_store
    from pipeline.runtime.shard_processor import ShardProcessor, load_models
    from pipeline.store.store import read_latents
    from pipeline.store.store_lock import claim_store

    check_arguments(cfg)
    models = load_models(cfg, torch.device("cpu"))
    with claim_store(cfg.output):
        prepared = prepare_store(cfg, models)
        processor = ShardProcessor(cfg, device="cpu")
        for spec in prepared.todo:
            processor.process(spec)
    return read_latents(cfg.output)
