"""`latentmill verify STORE`: check every file of a store against its manifest, recipe and plan.

Quick checks (what invert runs on resume, from one listing and the manifest): each finished shard's
file exists with the size its entry recorded, and the entry names the store's recipe. Full checks
add, per shard: the file's sha256, every column read with each page's checksum verified, the row
count, the schema version, and the shard's own recorded recipe, models and settings against the
store's; then every id unique across the store, and every planned shard accounted for (finished,
failed, or not yet run). Damaged metadata (a torn manifest entry, an unreadable plan, recipe or
precision record) is named, never a traceback.

`repair_store` leaves a store the next invert completes: damaged shards' files go to
STORE/quarantine/ and their entries are dropped (so they are redone); a torn entry is dropped; an
unreadable recipe is rebuilt from what its finished shards recorded (when they agree), an unreadable
plan from the input (shards whose rows no longer match it are redone), the precision record from the
manifest.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.decode import input_id
from pipeline.data.planning import InputSettings, plan_input
from pipeline.data.sources import ShardSpec
from pipeline.errors import LatentmillError
from pipeline.store import layout
from pipeline.store.manifest import Manifest
from pipeline.store.parquet_files import DamagedFileError, open_parquet, sha256
from pipeline.store.schema import SCHEMA_VERSION, store_metadata
from pipeline.store.store import Store, StoreDamagedError, StoreNotFoundError
from pipeline.store.store_recipe import make_recipe, recipe_differences, recipe_digest
from pipeline.uris import list_sizes, read_if_exists


@dataclass
class ShardProblem:
    shard: str
    problem: str
    redo: bool = True  # the next invert redoes it (False: not a shard of the plan, only moved aside)


@dataclass
class VerifyReport:
    store: str
    planned: int = 0
    finished: int = 0
    failed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    rows: int = 0
    damaged: list[ShardProblem] = field(default_factory=list)  # repairable: redo the shard
    damaged_files: dict[str, str] = field(default_factory=dict)  # store file (layout name) -> its problem
    problems: list[str] = field(default_factory=list)  # store-wide (duplicate ids, ...)
    unlisted_files: list[str] = field(default_factory=list)  # data files without a manifest entry

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems and not self.damaged_files

    @property
    def repairable(self) -> bool:
        return bool(self.damaged or self.damaged_files)

    def lines(self) -> list[str]:
        out = [f"store {self.store}: {self.finished} of {self.planned} planned shards finished, {self.rows:,} rows"
               + (f", {len(self.failed)} failed ({', '.join(self.failed[:5])})" if self.failed else "")
               + (f", {len(self.pending)} not yet run" if self.pending else "")]
        out += [f"damaged file {name}: {problem}" for name, problem in self.damaged_files.items()]
        out += [f"damaged shard {p.shard}: {p.problem}" for p in self.damaged]
        out += [f"problem: {p}" for p in self.problems]
        if self.unlisted_files:
            out.append(f"{len(self.unlisted_files)} data file(s) without a manifest entry (left by an interrupted "
                       "write; not part of the store): " + ", ".join(self.unlisted_files[:5]))
        if self.ok:
            out.append("OK")
        elif self.repairable:
            out.append("PROBLEMS FOUND: `latentmill verify --repair` moves damaged shards aside and rebuilds damaged "
                       "records, so the next invert redoes what they held")
        else:
            out.append("PROBLEMS FOUND")
        return out


def _safely(report: VerifyReport, name: str, read: Any) -> Any:
    """read(), or None with the file recorded as damaged."""
    try:
        return read()
    except (StoreDamagedError, DamagedFileError, ValueError, KeyError, TypeError) as exc:
        report.damaged_files[name] = str(exc).split("; run `latentmill verify")[0]
        return None


def shard_problem(store: Store, shard: str, entry: dict[str, Any], *, size: int | None,
                  recipe: str | None) -> str | None:
    """What the quick checks find wrong with a finished shard (None: nothing): its file, its size, its recipe."""
    if size is None:
        return f"its data file {layout.shard_file(store.uri, shard)} is missing"
    if entry.get("bytes") is not None and int(entry["bytes"]) != size:
        return f"{size:,} bytes in its file, {int(entry['bytes']):,} recorded in its manifest entry"
    if recipe is not None and entry.get("recipe") not in (None, recipe):
        return "made with another recipe than the store's (its manifest entry names another)"
    return None


def misplaced_rows(table: pa.Table, shard: str, spec: ShardSpec | None) -> str | None:
    """What says a shard's file holds rows that are not its own: another shard's name in its `shard`
    column, or inputs its plan entry does not hold (another file, other members)."""
    names = set(table.column("shard").to_pylist())
    if names - {shard}:
        return f"its file holds rows of shard {sorted(map(str, names - {shard}))[0]} (files swapped or copied in)"
    if spec is None:
        return None
    if spec.layout == "folder":
        members = set(spec.members)
        strays = [i for i in table.column("image_id").to_pylist() if input_id(i) not in members]
    else:
        strays = [u for u in table.column("source_uri").to_pylist() if u != spec.uri and not u.startswith(spec.uri + "#")]
    if strays:
        return (f"{len(strays):,} of its rows come from inputs its plan entry does not hold ({strays[0]}): not this "
                f"shard's rows ({spec.file if spec.layout != 'folder' else 'its planned files'})")
    return None


def _full_problem(store: Store, shard: str, entry: dict[str, Any], recipe: dict[str, Any] | None,
                  ids: list[np.ndarray], defaults: dict[str, Any] | None, spec: ShardSpec | None) -> str | None:
    uri = layout.shard_file(store.uri, shard)
    data = read_if_exists(uri)
    if data is None:
        return f"its data file {uri} is missing"
    if entry.get("sha256") and sha256(data) != entry["sha256"]:
        return "its content differs from what its manifest entry recorded (sha256)"
    try:
        parquet = pq.ParquetFile(io.BytesIO(data), page_checksum_verification=True)
        table = parquet.read()  # every column, every page's checksum
    except (OSError, ValueError, pa.ArrowException) as exc:
        return f"{uri} is not a readable Parquet file ({type(exc).__name__}: {exc})"
    if table.num_rows != entry.get("rows"):
        return f"{table.num_rows} rows in {uri}, {entry.get('rows')} in its manifest entry"
    try:
        info = store_metadata(table.schema)
    except ValueError as exc:
        return str(exc)
    if info.get("schema_version") != SCHEMA_VERSION:
        return f"schema version {info.get('schema_version')}, expected {SCHEMA_VERSION}"
    misplaced = misplaced_rows(table, shard, spec)
    if misplaced:
        return misplaced
    ids.append(np.array([_id_hash(i) for i in table.column("image_id").to_pylist()], dtype=np.uint64))
    if recipe is None:
        return None
    if info.get("generator_fingerprint") != recipe.get("models", {}).get("generator"):
        return "made by another generator than the store's recipe names"
    if info.get("recipe_digest") not in (None, recipe_digest(recipe)):
        return "made with another recipe than the store's (its own metadata names another)"
    if "model_fingerprints" in info:
        own = make_recipe({**info.get("settings", {}), "input": recipe.get("input")}, info["model_fingerprints"])
        differences = recipe_differences(recipe, own, defaults=defaults)
        if differences:
            return "made with another recipe than the store's: " + "; ".join(differences[:3])
    return None


def _id_hash(image_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(image_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def verify_store(uri: str, *, full: bool = True, defaults: dict[str, Any] | None = None) -> VerifyReport:
    """Check the store at `uri`; `defaults`: each recipe setting's declared default (InvertConfig.defaults()),
    so a setting newer than a shard counts only when it is off its default."""
    store = Store(uri)
    report = VerifyReport(uri)
    manifest: Manifest = store.manifest
    recipe = _safely(report, layout.RECIPE, lambda: store.recipe)
    plan = _safely(report, layout.PLAN, lambda: store.input_plan if _has_plan(store) else None)
    _safely(report, layout.PRECISION, lambda: store.precisions)
    if plan is None and not manifest.finished and not manifest.torn and not report.damaged_files:
        fs, path = fsspec.core.url_to_fs(uri)
        report.problems.append("not a latentmill store: no plan and no finished shards" if fs.exists(path) else
                               "does not exist: no store here (make one with `latentmill invert --output ...`)")
        return report
    planned = plan.shard_ids() if plan is not None else sorted(manifest.finished)
    report.planned, report.finished = len(planned), len(manifest.finished)
    report.failed = sorted(manifest.failed)
    report.pending = [s for s in planned if s not in manifest.finished and s not in manifest.failed]
    if recipe is None and manifest.finished and layout.RECIPE not in report.damaged_files:
        report.damaged_files[layout.RECIPE] = "missing: the store does not record the recipe its rows were made with"
    for shard, problem in sorted(manifest.torn.items()):
        report.damaged.append(ShardProblem(shard, f"its manifest entry is {problem}"))
    unplanned = sorted(set(manifest.finished) - set(planned)) if plan is not None else []
    for shard in unplanned:
        report.damaged.append(ShardProblem(shard, "the plan does not list it (a shard copied in, or from another "
                                                  "store): its rows are not this store's", redo=False))
    specs = {spec.shard_id: spec for spec in plan.shards} if plan is not None else {}
    sizes = list_sizes(store.path(layout.LATENTS))
    digest = recipe_digest(recipe) if recipe is not None else None
    ids: list[np.ndarray] = []
    for shard, entry in sorted(manifest.finished.items()):
        if shard in unplanned:
            continue
        name = layout.shard_file_name(shard).rsplit("/", 1)[1]
        problem = shard_problem(store, shard, entry, size=sizes.get(name), recipe=digest)
        if problem is None and full:
            problem = _full_problem(store, shard, entry, recipe, ids, defaults, specs.get(shard))
        if problem:
            report.damaged.append(ShardProblem(shard, problem))
        else:
            report.rows += int(entry.get("rows", 0))
    if ids:
        report.problems += _duplicate_ids(store, np.concatenate(ids),
                                          [s for s in sorted(manifest.finished) if s not in
                                           {p.shard for p in report.damaged}])
    listed = {layout.SHARD_PREFIX + s + layout.SHARD_SUFFIX for s in manifest.finished}
    report.unlisted_files = sorted(n for n in sizes if n not in listed)
    return report


def _has_plan(store: Store) -> bool:
    return store.exists(layout.PLAN) or store.exists(layout.LEGACY_PLAN)


def _duplicate_ids(store: Store, hashes: np.ndarray, shards: list[str]) -> list[str]:
    """Ids that appear more than once: 8-byte hashes of every id first (flat memory at any size), then the
    ids behind repeated hashes read again to name them."""
    values, counts = np.unique(hashes, return_counts=True)
    suspects = set(values[counts > 1].tolist())
    if not suspects:
        return []
    seen: Counter[str] = Counter()
    for shard in shards:
        with open_parquet(layout.shard_file(store.uri, shard)) as parquet:
            for image_id in parquet.read(columns=["image_id"]).column("image_id").to_pylist():
                if _id_hash(image_id) in suspects:
                    seen[image_id] += 1
    duplicates = sorted(i for i, n in seen.items() if n > 1)
    return [f"{len(duplicates)} image ids appear more than once: {duplicates[:5]}"] if duplicates else []


class RepairError(LatentmillError, ValueError):
    """What --repair cannot mend by itself (the message says what to do)."""


def repair_store(writer: Any, report: VerifyReport) -> list[str]:
    """Mend what `report` found damaged, through a claimed store (StoreWriter); returns what was done."""
    done: list[str] = []
    for item in report.damaged:
        writer.remove(layout.entry_name(item.shard))  # first: no longer claimed finished
        moved = writer.quarantine(layout.shard_file_name(item.shard))
        what = "moved aside; the next invert redoes it" if item.redo else "moved aside (not a shard of the plan)"
        done.append(f"shard {item.shard}: {what}" + (f" ({moved})" if moved else ""))
    writer.reread()
    for name in list(report.damaged_files):
        if name == layout.RECIPE:
            done.append(_rebuild_recipe(writer))
        elif name in (layout.PLAN, layout.LEGACY_PLAN):
            done.append(_rebuild_plan(writer, name))
        elif name == layout.PRECISION:
            done.append(_rebuild_precisions(writer))
        writer.reread()
    return done


def _rebuild_recipe(writer: Any) -> str:
    moved = writer.quarantine(layout.RECIPE)
    finished = writer.manifest.finished
    if not finished:
        return f"{layout.RECIPE}: moved aside ({moved}); the next invert records its recipe anew"
    recorded = []
    for shard in sorted(finished):
        with open_parquet(layout.shard_file(writer.uri, shard)) as parquet:
            info = store_metadata(parquet.schema_arrow)
        if "model_fingerprints" not in info:
            raise RepairError(f"{layout.RECIPE} is damaged and shard {shard} predates recorded recipes: rerun invert "
                              "with --overwrite to redo the store")
        recorded.append((info.get("recipe_digest"), make_recipe(info["settings"], info["model_fingerprints"])))
    digests = {d for d, _ in recorded}
    recipe = recorded[0][1]
    if len(digests) > 1 or (digests != {None} and recipe_digest(recipe) not in digests):
        raise RepairError(f"{layout.RECIPE} is damaged and the finished shards do not record one recipe: rerun "
                          "invert with --overwrite to redo the store")
    writer.write_json(layout.RECIPE, recipe)
    return f"{layout.RECIPE}: rebuilt from what its {len(finished)} finished shards recorded"


def _rebuild_plan(writer: Any, name: str) -> str:
    recipe = writer.recipe
    if recipe is None:
        raise RepairError(f"{name} is damaged and the store has no readable recipe to plan its input again: rerun "
                          "invert with --overwrite")
    moved = writer.quarantine(name)
    recorded = {**recipe["settings"], "input": recipe["input"]}
    recorded.setdefault("shard_size", (recipe.get("plan") or {}).get("shard_size") or "auto")
    plan = plan_input(InputSettings(**{k: v for k, v in recorded.items() if k in InputSettings.__dataclass_fields__}))
    writer.write_table(layout.PLAN, plan.to_table())
    redo = []
    members = {spec.shard_id: spec for spec in plan.shards}
    for shard in sorted(writer.manifest.finished):
        spec = members.get(shard)
        if spec is None or (spec.layout == "folder" and not _same_inputs(writer, shard, spec.members)):
            writer.remove(layout.entry_name(shard))
            writer.quarantine(layout.shard_file_name(shard))
            redo.append(shard)
    return (f"{name}: moved aside ({moved}) and planned again from the input"
            + (f"; {len(redo)} shards no longer match it and will be redone ({', '.join(redo[:5])})" if redo else ""))


def _same_inputs(writer: Any, shard: str, members: list[str]) -> bool:
    with open_parquet(layout.shard_file(writer.uri, shard)) as parquet:
        ids = parquet.read(columns=["image_id"]).column("image_id").to_pylist()
    return {input_id(i) for i in ids} == set(members)


def _rebuild_precisions(writer: Any) -> str:
    moved = writer.quarantine(layout.PRECISION)
    kinds = {e["device_kind"]: {"precision": e["precision"]} for e in writer.manifest.finished.values()
             if e.get("device_kind") and e.get("precision")}
    writer.write_json(layout.PRECISION, kinds)
    return f"{layout.PRECISION}: moved aside ({moved}) and rebuilt from the manifest ({len(kinds)} kinds of device)"


__all__ = ["ShardProblem", "VerifyReport", "verify_store", "repair_store", "shard_problem", "RepairError",
           "StoreNotFoundError"]
