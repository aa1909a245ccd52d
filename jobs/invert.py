"""`latentmill invert`: invert a dataset into a Parquet latent store on Ray.

1. Preflight (pipeline/runtime/preflight.py): every setting, the input (exists, not empty), the
   output (a writable directory) and every model, loaded once on the driver and checked against the
   generator; all problems reported at once before Ray starts. A missing prior is fitted and cached,
   absent default weights downloaded when reachable.
2. Claim the store (one writer at a time), then prepare it: the saved plan, the recipe compared with
   the store's (a different one is refused), damaged finished shards moved aside to be redone.
3. Run the shards to do on the actor pool.
4. Write STORE/manifest.json (a summary of the store, whose recipe is the run's) and return.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from pipeline.runtime.config import InvertConfig
from pipeline.runtime.invert_store import pin_precision, prepare_store
from pipeline.runtime.preflight import preflight_invert
from pipeline.runtime.ray_runner import RunSummary, run_shards
from pipeline.store.latent_store import failed_entries, manifest_entries
from pipeline.store.store_lock import claim_store
from pipeline.uris import write_bytes


def run(config: InvertConfig, *, processor_class: type | None = None) -> RunSummary:
    """Invert config.input into the store config.output; processor_class: see run_shards."""
    started = time.perf_counter()
    checked = preflight_invert(config, device=torch.device("cpu"))
    config, fresh_plan, models = checked.config, checked.shards, checked.models
    config, precision_line = pin_precision(config)
    for line in [*checked.notes, precision_line]:
        if line:
            print(f"latentmill: {line}", file=sys.stderr)
    with claim_store(config.output, wait=config.wait):
        prepared = prepare_store(config, models, fresh_plan=fresh_plan)
        if prepared.finished or prepared.redone:
            print(f"latentmill: {prepared.describe()}", file=sys.stderr)
        summary = RunSummary(shards_skipped=len(prepared.shards) - len(prepared.todo))
        if prepared.todo:
            run_shards(config, prepared.todo, summary, processor_class, models=models, started=started)
        entries = manifest_entries(config.output)
        totals = {"rows": sum(e["rows"] for e in entries.values()), "ok": sum(e["ok"] for e in entries.values()),
                  "errors": sum(e["errors"] for e in entries.values())}
        write_bytes(config.output.rstrip("/") + "/manifest.json", json.dumps({
            "input": config.input, "shards_planned": len(prepared.shards), "shards_finished": len(entries),
            "shards_failed": sorted(failed_entries(config.output)), **totals, "settings": config.to_dict(),
            "last_run": {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         "startup_seconds": round(summary.startup_seconds, 2),
                         "shards_processed": summary.shards_done, "shards_skipped": summary.shards_skipped,
                         "retries": summary.retries, "seconds": round(summary.seconds, 2),
                         "images_per_second": round(summary.images_per_second, 4)},
        }, indent=2).encode())
    return summary

