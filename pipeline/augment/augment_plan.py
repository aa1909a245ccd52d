"""What a run of `latentmill augment` works from: its units of work, its reference sample, its ledger.

- Units: each finished store shard's ok rows, in pieces of at most --shard-size. A unit is the unit of work
  and of resume: one worker makes its variants and writes OUT/parts/<unit>.parquet and its tar shard, then
  its ledger entry OUT/ledger/<unit>.json, last. A unit with an entry is never run again; one without is
  run whole (a killed worker's files are rewritten, byte for byte the same).
- The reference (OUT/augment.json, OUT/donors.parquet), made on the first run from a uniform sample of the
  store's ok rows and then kept: the prior-NLL bounds of the quality filter, each attribute channel's
  std, and the donors of mix and compose. Later runs (after the store grew) reuse it, so a row's variants
  never depend on when it was added. A run with other settings is refused: an output never mixes recipes.
- samples.parquet gathers the parts of finished units (streamed, a row group at a time) and names the units
  it holds in its metadata; parts it holds are then removed. A kill at any point leaves each unit's rows
  either in samples.parquet or in its part, never both counted.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.augment.augment_settings import AugmentConfig
from pipeline.sampling import stream_seed
from pipeline.store import layout
from pipeline.store.augment_schema import AUGMENT
from pipeline.store.file_names import safe_file_name
from pipeline.store.parquet_files import open_parquet
from pipeline.store.store import Store
from pipeline.uris import list_sizes, read_many, remove_if_exists

RECIPE = "augment.json"
DONORS = "donors.parquet"
SAMPLES = "samples.parquet"
SUMMARY = "summary.json"
PREVIEW = "preview.png"
PARTS, LEDGER, IMAGES = "parts", "ledger", "images"
REFERENCE_ROWS = 4096  # the uniform sample of ok rows the NLL bounds and channel stds are estimated on
DONOR_LATENT_BYTES = 1 << 26  # mix donors: at most this many bytes of latents (all of the sample if smaller)
DONOR_INPUT_ROWS = 256  # compose donors: at most this many rows ...
DONOR_INPUT_BYTES = 1 << 28  # ... and this many bytes of decoded inputs
# settings that do not change which samples are made (where and how fast they are made)
RUN_SETTINGS = ("device", "progress", "address", "verbose", "batch_size", "runner", "concurrency", "num_gpus",
                "cpus_per_actor", "placement_timeout", "max_retries", "output")


@dataclass(frozen=True)
class Unit:
    """A piece of a store shard: its ok rows start..stop (in the shard's order)."""

    shard_id: str  # the unit's name (what runners and the ledger call it)
    store_shard: str
    start: int
    stop: int
    source_sha256: str  # the store shard's file, as its manifest entry records it

    @property
    def rows(self) -> int:
        return self.stop - self.start


def unit_name(store_shard: str, index: int) -> str:
    return safe_file_name(f"{store_shard}.{index:05d}")


def plan_units(store: Store, shard_size: int) -> list[Unit]:
    """Every finished store shard's ok rows in pieces of at most shard_size, in the store's shard order."""
    units = []
    for shard, entry in sorted(store.manifest.finished.items()):
        ok = int(entry.get("ok", 0))
        for index, start in enumerate(range(0, ok, shard_size)):
            units.append(Unit(unit_name(shard, index), shard, start, min(ok, start + shard_size),
                              str(entry.get("sha256", ""))))
    return units


def out_path(output: str, *parts: str) -> str:
    return posixpath.join(output.rstrip("/"), *parts)


def tar_name(unit: str) -> str:
    """A unit's tar shard, relative to OUT."""
    return f"{IMAGES}/augment-{unit}.tar"


def recipe_of(cfg: AugmentConfig, store: Store) -> dict[str, Any]:
    """What decides the samples: the settings (not where or how fast they run), the store and its generator."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in RUN_SETTINGS}
    return {"settings": settings, "store": store.uri, "generator_fingerprint": store.metadata["generator_fingerprint"],
            "schema": AUGMENT.name, "schema_version": AUGMENT.version}


class RecipeMismatchError(ValueError):
    """OUT was made with other settings or from another store."""


def check_recipe(stored: dict[str, Any], wanted: dict[str, Any], output: str) -> None:
    lines = []
    for key in ("store", "generator_fingerprint"):
        if stored.get(key) != wanted[key]:
            lines.append(f"{key}: {stored.get(key)!r} there, {wanted[key]!r} now")
    before, now = stored.get("settings", {}), wanted["settings"]
    lines += [f"--{k.replace('_', '-')}: {before.get(k)!r} there, {now[k]!r} now"
              for k in now if before.get(k) != now[k]]
    if lines:
        raise RecipeMismatchError(f"{output} holds variants made otherwise; an output never mixes recipes:\n"
                                  + "\n".join(f"  - {line}" for line in lines)
                                  + "\nUse another --output, or the settings it was made with.")


@dataclass
class Reference:
    """What every worker needs besides the models, the same for every unit and every run of an output."""

    nll_cut: dict[str, float]  # latent column -> the filter's bound
    style_std: dict[str, list[float]]  # StyleSpace layer -> per-channel std (only layers an edit names)
    donor_ids: list[str]  # mix donors (ok rows of the sample), their latents in OUT/donors.parquet
    compose_donors: list[tuple[str, str]] = field(default_factory=list)  # (store shard, image_id) of compose donors
    sample_rows: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reference:
        data = dict(data)
        data["compose_donors"] = [tuple(pair) for pair in data.get("compose_donors", [])]
        return cls(**data)


def sample_positions(store: Store, rows: int, seed: int) -> dict[str, np.ndarray]:
    """A uniform sample of at most `rows` ok rows, as store shard -> sorted indices among its ok rows (from
    the manifest's counts; only the shards holding them are read later)."""
    finished = sorted(store.manifest.finished.items())
    counts = np.array([int(e.get("ok", 0)) for _, e in finished], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return {}
    rng = np.random.default_rng(stream_seed(seed, "augment reference sample"))
    picked = np.sort(rng.choice(total, size=min(rows, total), replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    which = np.searchsorted(starts, picked, side="right") - 1
    return {finished[i][0]: picked[which == i] - starts[i] for i in np.unique(which)}


def read_sample(store: Store, positions: dict[str, np.ndarray], columns: list[str]) -> pa.Table:
    """The sampled ok rows' columns (image_id, shard and `columns`), read shard by shard."""
    parts = []
    for shard, index in positions.items():
        with open_parquet(store.path(layout.shard_file_name(shard)), remedy=store.repair_hint) as parquet:
            names = [c for c in ["image_id", "status", *columns] if c in parquet.schema_arrow.names]
            table = parquet.read(columns=names)
        table = table.filter(pc.equal(table.column("status"), "ok")).take(pa.array(index))
        parts.append(table.append_column("shard", pa.array([shard] * table.num_rows, pa.string())))
    return pa.concat_tables(parts, promote_options="default") if parts else pa.table({})


# --- the ledger ---

def done_units(output: str) -> dict[str, dict[str, Any]]:
    """The ledger: unit -> its entry, for every unit finished in an earlier run (one listing, then the entries
    fetched concurrently)."""
    names = [n for n in list_sizes(out_path(output, LEDGER)) if n.endswith(".json") and not n.endswith(".failed.json")]
    done = {}
    for uri, data in read_many([out_path(output, LEDGER, n) for n in names]).items():
        if isinstance(data, Exception):
            raise data
        entry = json.loads(data)
        done[entry["unit"]] = entry
    return done


def ledger_file(output: str, unit: str, *, failed: bool = False) -> str:
    return out_path(output, LEDGER, f"{unit}{'.failed' if failed else ''}.json")


def gathered_units(output: str) -> list[str]:
    """The units whose rows samples.parquet holds (its metadata names them)."""
    fs, path = fsspec.core.url_to_fs(out_path(output, SAMPLES))
    if not fs.exists(path):
        return []
    with fs.open(path, "rb") as handle:
        return list(AUGMENT.metadata(pq.ParquetFile(handle).schema_arrow).get("units", []))


def gather(output: str, units: list[Unit], done: dict[str, dict[str, Any]], metadata: dict[str, Any]) -> bool:
    """samples.parquet = its rows so far plus the parts of finished units it lacks, in plan order, streamed
    one unit (a row group) at a time into a new file that then replaces it; the parts it now holds are
    removed. False where there was nothing to add (no file changed)."""
    held = gathered_units(output)
    for unit in held:  # a kill after the last gather, before its parts were removed
        remove_if_exists(out_path(output, PARTS, f"{unit}.parquet"))
    ready = [u.shard_id for u in units if u.shard_id in done and u.shard_id not in held]
    if not ready:
        return False
    order = {u.shard_id: i for i, u in enumerate(units)}
    everything = sorted([*held, *ready], key=lambda u: order.get(u, len(order)))
    schema = AUGMENT.schema({**metadata, "units": everything})
    fs, path = fsspec.core.url_to_fs(out_path(output, SAMPLES))
    tmp = f"{path.rsplit('/', 1)[0]}/.{SAMPLES}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with contextlib.ExitStack() as stack:
            old = None
            if held:
                old = pq.ParquetFile(stack.enter_context(fs.open(path, "rb")))
            sink = stack.enter_context(fs.open(tmp, "wb"))
            writer = stack.enter_context(pq.ParquetWriter(sink, schema, compression="zstd", write_page_checksum=True))
            old_units = {u: i for i, u in enumerate(held)}
            for unit in everything:
                if unit in old_units:
                    table = old.read_row_group(old_units[unit])
                else:
                    with open_parquet(out_path(output, PARTS, f"{unit}.parquet")) as part:
                        table = part.read()
                writer.write_table(table.cast(schema), row_group_size=max(1, table.num_rows))
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)
    for unit in ready:
        remove_if_exists(out_path(output, PARTS, f"{unit}.parquet"))
    return True
