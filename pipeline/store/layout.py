"""Where everything of a latent store lives, relative to its root (any fsspec URI): declared here once.

    STORE/latents/part-<shard>.parquet    the rows, one Parquet file per input shard (nothing else here)
    STORE/manifest/<shard>.json           written after the data file (with its size and sha256): the shard is done
    STORE/manifest/<shard>.failed.json    a shard that failed after its retries
    STORE/manifest/_index.parquet         every entry as the last run left it (read instead of 10,000 files)
    STORE/manifest.json                   a summary of the store after the last run
    STORE/plan.parquet                    the input's files and their shards (plan.json in older stores)
    STORE/store.json                      the recipe: what every row was made with
    STORE/precision.json                  the precision each kind of device ran `--precision auto` in
    STORE/curation/                       flags.parquet and summary.json of `latentmill curate`
    STORE/rebalance/                      the summary and preview of `latentmill rebalance`
    STORE/report.html, STORE/report/      `latentmill report`
    STORE/quarantine/                     damaged files moved aside by `latentmill verify --repair`
    STORE/.lock, STORE/.lease.json        held by the run writing the store (local disks, object stores)

Code never spells these names: it asks `join(store, NAME)` (or the helpers below), so a store's
layout can be read in one place.
"""

from __future__ import annotations

import posixpath

LATENTS = "latents"
MANIFEST = "manifest"
MANIFEST_INDEX = "manifest/_index.parquet"  # every entry at the end of the last run (a cache: entries are the truth)
SUMMARY = "manifest.json"
PLAN = "plan.parquet"
LEGACY_PLAN = "plan.json"
RECIPE = "store.json"
PRECISION = "precision.json"
CURATION = "curation"
FLAGS = "curation/flags.parquet"
CURATION_SUMMARY = "curation/summary.json"
SEARCH_PROGRESS = "curation/search-progress.npz"
REBALANCE = "rebalance"
REBALANCE_SUMMARY = "rebalance/summary.json"
REBALANCE_PREVIEW = "rebalance/preview.png"
EXPORTS = "exports.json"  # the exports `latentmill export` made of the store: URI -> column, shards, index
AUGMENT = "augment"
AUGMENT_SUMMARY = "augment/summary.json"
AUGMENT_PREVIEW = "augment/preview.png"
REPORT = "report.html"
REPORT_FILES = "report"
TRADEOFF = "report/tradeoff.json"
QUARANTINE = "quarantine"
LOCK = ".lock"
LEASE = ".lease.json"
INPUTS_RECORD = "inputs.json"  # in an output folder derived from a store: what it was computed from
SHARD_PREFIX, SHARD_SUFFIX = "part-", ".parquet"
# every name a store writes at its top: none may be a symlink (a write would land outside the store)
OWN_ENTRIES = (LOCK, LEASE, LATENTS, MANIFEST, SUMMARY, PLAN, LEGACY_PLAN, RECIPE, PRECISION, CURATION, REBALANCE,
               AUGMENT, EXPORTS, REPORT, REPORT_FILES, QUARANTINE)
ENTRY_SUFFIX, FAILED_SUFFIX = ".json", ".failed.json"


def join(store: str, *parts: str) -> str:
    """A path inside the store (or inside any folder URI)."""
    return posixpath.join(store.rstrip("/"), *parts)


def shard_file_name(shard: str) -> str:
    """A shard's data file, relative to the store."""
    return f"{LATENTS}/{SHARD_PREFIX}{shard}{SHARD_SUFFIX}"


def entry_name(shard: str, *, failed: bool = False) -> str:
    """A shard's manifest entry, relative to the store."""
    return f"{MANIFEST}/{shard}{FAILED_SUFFIX if failed else ENTRY_SUFFIX}"


def shard_file(store: str, shard: str) -> str:
    return join(store, shard_file_name(shard))


def manifest_file(store: str, shard: str, *, failed: bool = False) -> str:
    return join(store, entry_name(shard, failed=failed))
