"""`latentmill export STORE --format lance --output URI`: the store's ok rows for other teams, exactly once.

The export itself is pipeline/export/lance_export.py; this job checks the settings, claims the store (its
rows do not change while they are exported) and records the export in STORE/exports.json (the column, the
shards it holds, its index), where `open_store(uri).nearest(...)` finds it.
"""

from __future__ import annotations

from typing import Any

from pipeline.export.export_settings import ExportConfig
from pipeline.export.lance_export import export_lance
from pipeline.store import layout
from pipeline.store.store import open_store
from pipeline.store.writer import claim
from pipeline.uris import absolute

__all__ = ["ExportConfig", "run"]


def run(cfg: ExportConfig) -> dict[str, Any]:
    """Export the store; returns what the output holds and what this run appended."""
    cfg.validate()
    store = open_store(cfg.store)
    output = absolute(cfg.output)
    with claim(store.uri, wait_hint="") as writer:
        result = export_lance(writer, output, column=cfg.column, exclude_flagged=cfg.exclude_flagged,
                              progress=cfg.progress)
        record = writer.read_json(layout.EXPORTS) or {}
        record[output] = {"format": cfg.format, "column": cfg.column, "version": result.version, "rows": result.rows,
                          "exclude_flagged": cfg.exclude_flagged, "index": result.index,
                          "shards": sorted(writer.manifest.finished)}
        if (writer.read_json(layout.EXPORTS) or {}).get(output) != record[output]:
            writer.write_json(layout.EXPORTS, record)
    return result.to_json()
