"""`latentmill invert`: invert a dataset into a Parquet latent store on Ray.

1. Preflight (pipeline/invert/preflight.py): every setting, the input (exists, not empty: listed
   once), the output (a writable directory) and every model, loaded once on the driver and checked
   against the generator; all problems reported at once before Ray starts. A missing prior is
   fitted and cached, absent default weights downloaded when reachable.
2. Claim the store (one writer at a time), then prepare it (pipeline/invert/invert_store.py): plan
   a new store once, or follow the saved plan, compare the recipe (a different one is refused) and
   the fresh listing (new inputs become shards), move damaged finished shards aside to be redone.
3. Run the shards to do: on an actor pool (Ray, the default) or in this process (`runner`).
4. Write STORE/manifest.json (a summary of the store from its manifest) and return.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch

from pipeline.errors import LatentmillError
from pipeline.invert.config import InvertConfig
from pipeline.invert.invert_store import prepare_store
from pipeline.invert.preflight import preflight_invert
from pipeline.runtime.local_runner import run_shards_here
from pipeline.runtime.ray_runner import run_shards
from pipeline.invert.shard_book import RunSummary, ShardBook
from pipeline.store import layout
from pipeline.store.writer import StoreWriter, claim

Runner = Callable[..., RunSummary]  # run_shards (Ray) or local_runner.run_shards_here


class EveryRowFailedError(LatentmillError, RuntimeError):
    """A run made rows, not one of them is ok and neither is any row of its store: something is wrong
    beyond single inputs (a resume whose last few inputs are bad is not that)."""

    def __init__(self, message: str, summary: RunSummary) -> None:
        super().__init__(message)
        self.summary = summary


def run(config: InvertConfig, *, processor_class: type | None = None, runner: Runner | None = None) -> RunSummary:
    """Invert config.input into the store config.output; processor_class: see run_shards; runner: what
    runs the shards to do (default: --runner's, Ray actors or pipeline.runtime.local_runner.run_shards_here
    in this process)."""
    if runner is None:
        runner = run_shards_here if config.runner == "local" else run_shards
    started = time.perf_counter()
    checked = preflight_invert(config, device=torch.device("cpu"))
    config, models = checked.config, checked.models
    for line in checked.notes:
        print(f"latentmill: {line}", file=sys.stderr)
    with claim(config.output, wait=config.wait) as writer:
        prepared = prepare_store(writer, config, models, checked.listing)
        config = prepared.config
        for line in prepared.notes:
            print(f"latentmill: {line}", file=sys.stderr)
        if prepared.finished or prepared.redone:
            print(f"latentmill: {prepared.describe()}", file=sys.stderr)
        summary = RunSummary(shards_skipped=len(prepared.shards) - len(prepared.todo))
        if prepared.todo:
            book = ShardBook(summary, writer, config.max_retries)
            runner(config, prepared.todo, summary, book, writer.shard_writer(prepared.recipe_digest),
                   processor_class=processor_class, models=models, precisions=writer.precisions,
                   recipe_models=prepared.recipe_models, started=started)
        write_summary(writer, config, summary, planned=len(prepared.shards))
        store_ok = writer.manifest.totals()["ok"]
    if summary.rows and not summary.ok and not store_ok:  # nothing usable at all: not a few bad inputs
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(summary.error_reasons.items(), key=lambda kv: -kv[1]))
        raise EveryRowFailedError(f"every one of the {summary.rows} rows this run made is an error ({reasons}); the "
                                  f"rows are in {config.output}, `latentmill report {config.output}` lists them",
                                  summary)
    return summary


def write_summary(writer: StoreWriter, config: InvertConfig, summary: RunSummary, *, planned: int) -> None:
    """STORE/manifest.json: the store as its manifest says (no row is read) and this run's figures; the
    manifest's index, when this run changed the manifest; the store's totals into `summary`."""
    if summary.shards_done or summary.shards_failed or summary.retries or not writer.exists(layout.MANIFEST_INDEX):
        writer.reread()
        writer.write_manifest_index()
    manifest = writer.manifest
    summary.store_totals = {**manifest.totals(), "error_reasons": writer.error_reasons(),
                            "shards_failed": len(manifest.failed)}
    writer.write_json(layout.SUMMARY, {
        "input": config.input, "shards_planned": planned, "shards_finished": len(manifest.finished),
        "shards_failed": sorted(manifest.failed), **manifest.totals(), "settings": config.to_dict(),
        "precisions": dict(writer.precisions),
        "last_run": {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "startup_seconds": round(summary.startup_seconds, 2),
                     "shards_processed": summary.shards_done, "shards_skipped": summary.shards_skipped,
                     "retries": summary.retries, "requeued_after_node_loss": summary.requeued, "seconds": round(summary.seconds, 2),
                     "images_per_second": round(summary.images_per_second, 4)},
    })
