"""`latentmill rebalance STORE`: add realistic samples to under-represented groups.

The algorithm is pipeline/curation/store_rebalance.py; this job checks the settings, claims the store
(its summary and preview are copied into STORE/rebalance/ for the report), reuses --output when
neither the store's rows, the settings nor the labels changed, and otherwise runs it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from pipeline.curation.rebalance_settings import RebalanceConfig
from pipeline.curation.store_rebalance import rebalance_store
from pipeline.store import layout
from pipeline.store.derived_outputs import UriFolder, inputs_key, reuse_or_compute
from pipeline.store.store import open_store
from pipeline.store.writer import claim
from pipeline.uris import read_bytes

__all__ = ["RebalanceConfig", "run"]

SUMMARY = "summary.json"  # in --output


def run(cfg: RebalanceConfig) -> dict[str, Any]:
    """Rebalance the store's groups; reuses --output when neither the rows, the settings nor the labels changed."""
    cfg.validate()
    store = open_store(cfg.store)
    out = UriFolder(cfg.output)
    labels = [cfg.groups.split(":", 2)[2]] if cfg.groups.startswith("labels:") and cfg.groups.count(":") >= 2 else []
    with claim(store.uri, wait_hint="") as writer:
        key = inputs_key(writer, {k: v for k, v in asdict(cfg).items() if k not in ("device", "progress")},
                         depends_on=labels)
        return reuse_or_compute(
            out, key, outputs=[layout.join(cfg.output, SUMMARY), writer.path(layout.REBALANCE_SUMMARY)],
            compute=lambda: rebalance_store(writer, cfg),
            reuse=lambda: {**json.loads(read_bytes(layout.join(cfg.output, SUMMARY), setting="--output")),
                           "reused": True},
            what="rebalance (the store's rows, the settings and the labels)")
