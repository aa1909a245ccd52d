"""`latentmill curate STORE`: flag outliers, near-duplicates and bad reconstructions.

Writes STORE/curation/flags.parquet and summary.json (pipeline/curation/store_curation.py) through
the store's claim, which `latentmill report` then shows; reused when neither the store's rows nor
the settings changed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from typing import Any

from pipeline.curation.curation_settings import CurateConfig
from pipeline.curation.store_curation import flag_store
from pipeline.store import layout
from pipeline.store.derived_outputs import StoreFolder, inputs_key, reuse_or_compute, store_state
from pipeline.store.store import open_store
from pipeline.store.writer import claim
from pipeline.uris import absolute

__all__ = ["CurateConfig", "run"]


def run(cfg: CurateConfig) -> dict[str, Any]:
    """Flag the store's rows; reuses STORE/curation when neither the rows nor the settings changed."""
    cfg.validate()
    cfg = dataclasses.replace(cfg, against=tuple(absolute(uri) for uri in cfg.against))
    store = open_store(cfg.store)
    with claim(store.uri, wait_hint="") as writer:
        settings = {k: v for k, v in asdict(cfg).items() if k not in ("device", "progress")}
        if cfg.against:  # what the other stores hold decides the flags too
            settings["against_state"] = {uri: store_state(open_store(uri)) for uri in cfg.against}
        key = inputs_key(writer, settings)
        return reuse_or_compute(
            StoreFolder(writer, layout.CURATION), key,
            outputs=[writer.path(layout.FLAGS), writer.path(layout.CURATION_SUMMARY)],
            compute=lambda: flag_store(writer, cfg, key),
            reuse=lambda: {**json.loads(writer.read_bytes(layout.CURATION_SUMMARY)), "reused": True},
            what="curate (the store's rows and the settings)")
