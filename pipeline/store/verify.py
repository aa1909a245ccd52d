"""`latentmill verify STORE`: check every shard file against the manifest, the recipe and the plan.

Cheap checks (what invert runs on resume): each finished shard's file exists, its Parquet footer
reads, and its row count is the manifest's. Full checks add: the schema and its metadata (schema
version, latent shape, generator fingerprint = the recipe's), every id unique across the store, and
every planned shard accounted for (finished, failed, or not yet run). `repair` moves damaged shard
files aside (STORE/quarantine/) and drops their manifest entries, so the next invert redoes them.
"""

from __future__ import annotations

import posixpath
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow.parquet as pq

from pipeline.store.latent_store import failed_entries, manifest_entries, manifest_file, shard_file
from pipeline.store.schema import SCHEMA_VERSION, store_metadata
from pipeline.store.store_recipe import RECIPE_FILE
from pipeline.uris import read_json_if_exists


@dataclass
class ShardProblem:
    shard: str
    problem: str


@dataclass
class VerifyReport:
    store: str
    planned: int = 0
    finished: int = 0
    failed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    rows: int = 0
    damaged: list[ShardProblem] = field(default_factory=list)  # repairable: redo the shard
    problems: list[str] = field(default_factory=list)  # store-wide (duplicate ids, recipe, plan)
    unlisted_files: list[str] = field(default_factory=list)  # data files without a manifest entry

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems

    def lines(self) -> list[str]:
        out = [f"store {self.store}: {self.finished} of {self.planned} planned shards finished, {self.rows:,} rows"
               + (f", {len(self.failed)} failed ({', '.join(self.failed[:5])})" if self.failed else "")
               + (f", {len(self.pending)} not yet run" if self.pending else "")]
        out += [f"damaged shard {p.shard}: {p.problem}" for p in self.damaged]
        out += [f"problem: {p}" for p in self.problems]
        if self.unlisted_files:
            out.append(f"{len(self.unlisted_files)} data file(s) without a manifest entry (left by an interrupted "
                       "write; not part of the store): " + ", ".join(self.unlisted_files[:5]))
        if self.ok:
            out.append("OK")
        elif self.damaged:
            out.append("PROBLEMS FOUND: `latentmill verify --repair` moves damaged shards aside so the next invert "
                       "redoes them")
        else:
            out.append("PROBLEMS FOUND")
        return out


def _read_json(uri: str) -> Any:
    """A store's JSON file, or None where it is missing or unreadable (verify reports that, not raises)."""
    try:
        return read_json_if_exists(uri)
    except ValueError:
        return None


def check_shard(store: str, shard: str, entry: dict[str, Any], *, full: bool,
                recipe: dict[str, Any] | None = None) -> tuple[str | None, list[str]]:
    """(problem or None, the shard's image ids when `full`)."""
    fs, path = fsspec.core.url_to_fs(shard_file(store, shard))
    if not fs.exists(path):
        return f"its data file {shard_file(store, shard)} is missing", []
    try:
        with fs.open(path, "rb") as f:
            meta = pq.read_metadata(f)
            if meta.num_rows != entry.get("rows"):
                return f"{meta.num_rows} rows in {shard_file(store, shard)}, {entry.get('rows')} in its manifest entry", []
            if not full:
                return None, []
            schema = meta.schema.to_arrow_schema()
            info = store_metadata(schema)
            ids = pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist()
    except (OSError, ValueError, KeyError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) on bad footers
        return f"{shard_file(store, shard)} is not a readable Parquet file ({type(exc).__name__}: {exc})", []
    if info.get("schema_version") != SCHEMA_VERSION:
        return f"schema version {info.get('schema_version')}, expected {SCHEMA_VERSION}", ids
    expected = (recipe or {}).get("models", {}).get("generator")
    if expected and info.get("generator_fingerprint") != expected:
        return "made by another generator than the store's recipe names", ids
    return None, ids


def verify_store(store: str, *, full: bool = True) -> VerifyReport:
    fs, root = fsspec.core.url_to_fs(store)
    report = VerifyReport(store)
    plan = _read_json(posixpath.join(store.rstrip("/"), "plan.json"))
    recipe = _read_json(posixpath.join(store.rstrip("/"), RECIPE_FILE))
    entries = manifest_entries(store)
    failed = failed_entries(store)
    if plan is None and not entries:
        report.problems.append("not a latentmill store: no plan.json and no finished shards")
        return report
    planned = [s["shard_id"] for s in plan["shards"]] if plan else sorted(entries)
    report.planned, report.finished = len(planned), len(entries)
    report.failed = sorted(failed)
    report.pending = [s for s in planned if s not in entries and s not in failed]
    if recipe is None and entries:
        report.problems.append(f"no {RECIPE_FILE}: the store does not record the recipe its rows were made with")
    unplanned = sorted(set(entries) - set(planned))
    if unplanned:
        report.problems.append(f"finished shards that the plan does not list: {unplanned[:5]}")
    ids: Counter[str] = Counter()
    for shard, entry in sorted(entries.items()):
        problem, shard_ids = check_shard(store, shard, entry, full=full, recipe=recipe)
        if problem:
            report.damaged.append(ShardProblem(shard, problem))
        else:
            report.rows += int(entry.get("rows", 0))
            ids.update(shard_ids)
    duplicates = [i for i, n in ids.items() if n > 1]
    if duplicates:
        report.problems.append(f"{len(duplicates)} image ids appear more than once: {duplicates[:5]}")
    latents = posixpath.join(root, "latents")
    if fs.isdir(latents):
        listed = {posixpath.basename(fsspec.core.url_to_fs(shard_file(store, s))[1]) for s in entries}
        report.unlisted_files = sorted(posixpath.basename(p) for p in fs.ls(latents, detail=False)
                                       if posixpath.basename(p) not in listed)
    return report


def repair_store(store: str, report: VerifyReport) -> list[str]:
    """Move each damaged shard's file to STORE/quarantine/ and drop its manifest entry; returns what moved."""
    fs, root = fsspec.core.url_to_fs(store)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    moved = []
    for item in report.damaged:
        _, entry_path = fsspec.core.url_to_fs(manifest_file(store, item.shard))
        if fs.exists(entry_path):
            fs.rm(entry_path)  # first: the shard is no longer claimed as finished
        _, data = fsspec.core.url_to_fs(shard_file(store, item.shard))
        if fs.exists(data):
            target = posixpath.join(root, "quarantine", f"{posixpath.basename(data)}.{stamp}")
            fs.makedirs(posixpath.dirname(target), exist_ok=True)
            fs.mv(data, target)
            moved.append(target)
    return moved
