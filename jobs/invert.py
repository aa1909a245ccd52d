"""`latentmill invert` / `python -m jobs.invert`: invert a dataset into a Parquet latent store on Ray.

1. Validate the settings and load every model once on the driver (so a missing weight file or a
   prior made for another generator fails before any work, with the setting named).
2. Plan the input shards; the plan is saved in STORE/plan.json on the first run and reused by
   reruns, so a folder's shard membership cannot shift between a crash and its resume.
3. Skip shards with a manifest entry (unless --overwrite), run the rest on the actor pool.
4. Write STORE/manifest.json (a summary) and print where everything is.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import fsspec
import torch

from pipeline.data.sources import ShardSpec, plan_shards
from pipeline.runtime.config import InvertConfig
from pipeline.runtime.ray_runner import RunSummary, run_shards
from pipeline.runtime.shard_processor import load_models
from pipeline.store.latent_store import failed_entries, manifest_entries, remove_shard
from pipeline.uris import write_bytes


def _plan(config: InvertConfig) -> list[ShardSpec]:
    plan_uri = config.output.rstrip("/") + "/plan.json"
    fs, path = fsspec.core.url_to_fs(plan_uri)
    if fs.exists(path) and not config.overwrite:
        saved = json.loads(fs.cat_file(path))
        if saved["input"] != config.input:
            raise ValueError(f"--output {config.output} holds a store made from --input {saved['input']}; "
                             "use another --output, or --overwrite")
        return [ShardSpec(**spec) for spec in saved["shards"]]
    shards = plan_shards(config.input, layout=config.input_format, shard_size=config.shard_size,
                         image_column=config.image_column, id_column=config.id_column)
    write_bytes(plan_uri, json.dumps({"input": config.input, "shards": [dataclasses.asdict(s) for s in shards]},
                                     indent=1).encode())
    return shards


def run(config: InvertConfig) -> RunSummary:
    config.validate()
    load_models(config, torch.device("cpu"))  # fail fast on any weight or compatibility problem
    shards = _plan(config)
    if config.overwrite:
        for spec in shards:
            remove_shard(config.output, spec.shard_id)
    finished = manifest_entries(config.output)
    todo = [spec for spec in shards if spec.shard_id not in finished]
    summary = RunSummary(shards_skipped=len(shards) - len(todo))
    if todo:
        run_shards(config, todo, summary)
    entries = manifest_entries(config.output)
    totals = {"rows": sum(e["rows"] for e in entries.values()), "ok": sum(e["ok"] for e in entries.values()),
              "errors": sum(e["errors"] for e in entries.values())}
    write_bytes(config.output.rstrip("/") + "/manifest.json", json.dumps({
        "input": config.input, "shards_planned": len(shards), "shards_finished": len(entries),
        "shards_failed": sorted(failed_entries(config.output)), **totals, "settings": config.to_dict(),
        "last_run": {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "shards_processed": summary.shards_done, "shards_skipped": summary.shards_skipped,
                     "retries": summary.retries, "seconds": round(summary.seconds, 2),
                     "images_per_second": round(summary.images_per_second, 4)},
    }, indent=2).encode())
    return summary


if __name__ == "__main__":
    from pipeline.cli import main

    main(["invert", *sys.argv[1:]])
