"""`latentmill rebalance STORE`: add realistic samples to under-represented groups.

The algorithm is pipeline/stages/store_rebalance.py; this job checks the settings, reuses --output
when neither the store's rows, the settings nor the labels changed, and otherwise runs it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from pipeline.stages.rebalance_settings import RebalanceConfig
from pipeline.stages.store_rebalance import rebalance_store
from pipeline.store import layout
from pipeline.store.derived_outputs import inputs_key, reuse_or_compute
from pipeline.store.store import open_store
from pipeline.uris import read_bytes

__all__ = ["RebalanceConfig", "run"]


def run(cfg: RebalanceConfig) -> dict[str, Any]:
    """Rebalance the store's groups; reuses --output when neither the rows, the settings nor the labels changed."""
    cfg.validate()
    store = open_store(cfg.store)
    out = cfg.output.rstrip("/")
    labels = [cfg.groups.split(":", 2)[2]] if cfg.groups.startswith("labels:") and cfg.groups.count(":") >= 2 else []
    key = inputs_key(cfg.store, {k: v for k, v in asdict(cfg).items() if k not in ("device", "progress")},
                     depends_on=labels)
    return reuse_or_compute(
        out, key, outputs=[out + "/summary.json", layout.join(store.uri, layout.REBALANCE, "summary.json")],
        compute=lambda: rebalance_store(store, cfg),
        reuse=lambda: {**json.loads(read_bytes(out + "/summary.json", setting="--output")), "reused": True},
        what="rebalance (the store's rows, the settings and the labels)")
