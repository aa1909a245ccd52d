"""`latentmill curate STORE`: flag outliers, near-duplicates and bad reconstructions.

Writes STORE/curation/flags.parquet and summary.json (pipeline/stages/store_curation.py), which
`latentmill report` shows; reused when neither the store's rows nor the settings changed.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from pipeline.stages.curation_settings import CurateConfig
from pipeline.stages.store_curation import flag_store
from pipeline.store import layout
from pipeline.store.derived_outputs import inputs_key, reuse_or_compute
from pipeline.store.store import open_store
from pipeline.uris import read_bytes

__all__ = ["CurateConfig", "run"]


def run(cfg: CurateConfig) -> dict[str, Any]:
    """Flag the store's rows; reuses STORE/curation when neither the rows nor the settings changed."""
    cfg.validate()
    store = open_store(cfg.store)
    root = layout.join(store.uri, layout.CURATION)
    key = inputs_key(cfg.store, {k: v for k, v in asdict(cfg).items() if k not in ("device", "progress")})
    return reuse_or_compute(
        root, key, outputs=[root + "/flags.parquet", root + "/summary.json"], compute=lambda: flag_store(store, cfg, key),
        reuse=lambda: {**json.loads(read_bytes(root + "/summary.json", setting="curation")), "reused": True},
        what="curate (the store's rows and the settings)")
