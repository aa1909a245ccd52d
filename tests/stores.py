"""Latent stores written directly (no inversion run), for tests of what reads stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipeline.models.bundle import write_bundle
from pipeline.models.stylegan2 import Generator
from pipeline.priors.gaussian import GaussianizedPrior
from pipeline.store.schema import SCHEMA_VERSION, latents_schema
from pipeline.store.writer import claim


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
    with claim(store) as writer:
        writer.shard_writer(None).write("s0", table, {"shard": "s0", "rows": n, "ok": n, "errors": 0})
    return store



def invert_here(cfg):
    """`latentmill invert`'s orchestrator (jobs/invert.py: preflight, claim, prepare, run, summary) with the
    shards run in this process instead of on Ray actors; returns the store's rows. Ray's pool itself is
    tested in test_invert_job.py and test_store_chaos.py."""
    from jobs.invert import run
    from pipeline.runtime.local_runner import run_shards_here
    from pipeline.store.store import read_latents

    run(cfg, runner=run_shards_here)
    return read_latents(cfg.output)


def manifest_entries(store: str) -> dict:
    """The finished shards of a store: shard id -> manifest entry."""
    from pipeline.store.manifest import read_manifest

    return read_manifest(store).finished


def small_inverted_store(root: Path, fixture_dir: Path) -> dict:
    """A small store made by a real inversion (sg2ada 32 px fixture, encoder, prior, identity net) of a
    messy folder under root/input: {"uri": the store, "expected": what the folder holds}."""
    from pipeline.invert.config import InvertConfig
    from pipeline.models.checkpoints import load_generator
    from pipeline.models.embedding import EmbeddingNet
    from pipeline.models.encoder import Encoder
    from pipeline.priors.prior_cache import fit_prior_file
    from tests.datasets import messy_folder

    generator = str(fixture_dir / "sg2ada_32px.pkl")
    G = load_generator(generator)
    prior = str(root / "prior.safetensors")
    fit_prior_file(generator, prior, num_samples=5000, batch_size=5000)
    torch.manual_seed(0)
    write_bundle(str(root / "E.safetensors"), {"E": Encoder.for_generator(G, base_channels=8, max_channels=16)})
    write_bundle(str(root / "identity.safetensors"), {"identity": EmbeddingNet(resolution=16, base_channels=8,
                                                                                max_channels=16, embedding_dim=8)})
    expected = messy_folder(root / "input")
    config = InvertConfig(input=str(root / "input"), output=str(root / "store"), generator=generator,
                          encoder=str(root / "E.safetensors"), prior=prior,
                          identity_model=str(root / "identity.safetensors"), perceptual="discriminator", steps=3,
                          batch_size=4, shard_size=8, progress=False, precision="fp32")
    invert_here(config)
    return {"uri": str(root / "store"), "expected": expected}
