"""Where everything of a latent store lives, relative to its root (any fsspec URI).

    STORE/latents/part-<shard>.parquet    the rows, one Parquet file per input shard (nothing else here)
    STORE/manifest/<shard>.json           written after the data file: the shard is done
    STORE/manifest/<shard>.failed.json    a shard that failed after its retries
    STORE/manifest.json                   a summary of the last run
    STORE/plan.json                       the input's shards (what re-reading the inputs follows)
    STORE/store.json                      the recipe: what every row was made with
    STORE/curation/                       flags.parquet and summary.json of `latentmill curate`
    STORE/rebalance/                      the summary and preview of `latentmill rebalance`
    STORE/report.html, STORE/report/      `latentmill report`
    STORE/quarantine/                     damaged shard files moved aside by `latentmill verify --repair`
    STORE/.lock                           held by the run writing the store
"""

from __future__ import annotations

import posixpath

LATENTS = "latents"
MANIFEST = "manifest"
SUMMARY = "manifest.json"
PLAN = "plan.json"
RECIPE = "store.json"
CURATION = "curation"
REBALANCE = "rebalance"
REPORT = "report.html"
REPORT_FILES = "report"
QUARANTINE = "quarantine"
LOCK = ".lock"


def join(store: str, *parts: str) -> str:
    return posixpath.join(store.rstrip("/"), *parts)


def shard_file(store: str, shard: str) -> str:
    return join(store, LATENTS, f"part-{shard}.parquet")


def manifest_file(store: str, shard: str, *, failed: bool = False) -> str:
    return join(store, MANIFEST, f"{shard}{'.failed' if failed else ''}.json")
