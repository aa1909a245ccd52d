"""What the report reads of a store, streamed: its numbers from every row, its pictures from a few.

One pass over the store's scalar columns (no latents; `z` only as each row's |z|^2) keeps, in memory
that does not grow with the store:
- a uniform sample of at most SAMPLE_ROWS rows (every row of a smaller store), chosen by a hash of the
  image id (the same rows on every run), for the histograms, medians and random contact sheets;
- exactly, over every row: the counts, the ok rows of highest MSE, the first error rows by id, and
  the |z|^2 statistics (how many rows fall outside the chi-square band, the least typical ones).
The rows a page shows get their latents from their own shard files only (`with_latents`).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.stats import chi2

from pipeline.store.layout import shard_file
from pipeline.store.parquet_files import read_parquet
from pipeline.store.schema import COLUMN_NAMES, LATENT_SHAPED_COLUMNS
from pipeline.store.store import Store

SAMPLE_ROWS = 100_000
SCALAR_COLUMNS = tuple(c for c in COLUMN_NAMES if c not in LATENT_SHAPED_COLUMNS
                       and c not in ("meta", "face_box", "face_landmarks"))


@dataclass
class ZStats:
    dof: int
    rows: int = 0
    outside: int = 0
    low: float = 0.0
    high: float = 0.0
    ratios: list[float] = field(default_factory=list)  # of the sampled rows, for the median
    atypical: list[tuple[float, str]] = field(default_factory=list)  # the 10 farthest from dof: (|z|^2/dof, id)


@dataclass
class ReportRows:
    sample: pd.DataFrame  # scalar columns of the sampled rows, sorted by image_id
    rows: int  # every row of the store
    ok: int
    error_reasons: dict[str, int]
    worst: pd.DataFrame  # the ok rows of highest MSE, highest first (over every row)
    error_rows: pd.DataFrame  # the first error rows by image_id
    z: ZStats | None

    @property
    def sampled(self) -> bool:
        return len(self.sample) < self.rows


def _sample_key(image_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(image_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def collect(store: Store, *, worst: int = 12, errors: int = 50, sample_rows: int = SAMPLE_ROWS,
            exclude: set[str] | None = None) -> ReportRows:
    """One pass over the store (see the module docstring); rows whose id is in `exclude` (the rows curate
    flagged, with --exclude-flagged) are left out of every count, sample and list."""
    left_out = exclude or None
    total = store.count_rows()
    cutoff = 2**64 if total <= sample_rows else int(sample_rows / total * 2**64)
    has_z = "z" in store.schema.names
    columns = [c for c in SCALAR_COLUMNS if c in store.schema.names] + (["z"] if has_z else [])
    z = None
    if has_z:
        num_ws, w_dim = store.latent_shape
        z = ZStats(num_ws * w_dim)
        z.low, z.high = (float(v) for v in chi2.ppf([0.01, 0.99], z.dof))
    sampled: list[pd.DataFrame] = []
    worst_heap: list[tuple[float, str, int, dict]] = []
    error_heap: list[tuple[str, int, dict]] = []  # max-heap by id through negated order: kept as the smallest ids
    counter = seen_rows = seen_ok = 0
    seen_reasons: dict[str, int] = {}
    for batch in store.iter_batches(columns):
        if left_out is not None:  # a set lookup per row: linear in the batch, whatever the number left out
            batch = batch.filter(pa.array([i not in left_out for i in batch.column("image_id").to_pylist()]))
        frame = batch.drop_columns(["z"]).to_pandas() if has_z else batch.to_pandas()
        if has_z:
            values = batch.column("z")
            norms = np.full(batch.num_rows, np.nan)
            present = values.is_valid().to_numpy(zero_copy_only=False)
            if present.any():
                flat = values.filter(pa.array(present)).flatten().to_numpy(zero_copy_only=False).astype(np.float64)
                norms[present] = (flat.reshape(int(present.sum()), -1) ** 2).sum(axis=1) / z.dof
            frame["z_ratio"] = norms
            ok_z = frame[(frame["status"] == "ok") & frame["z_ratio"].notna()]
            z.rows += len(ok_z)
            z.outside += int(((ok_z["z_ratio"] * z.dof < z.low) | (ok_z["z_ratio"] * z.dof > z.high)).sum())
            for ratio, image_id in zip(ok_z["z_ratio"], ok_z["image_id"]):
                item = (abs(np.log(max(ratio, 1e-12))), ratio, image_id)
                if len(z.atypical) < 10:
                    heapq.heappush(z.atypical, item)
                elif item > z.atypical[0]:
                    heapq.heapreplace(z.atypical, item)
        keys = np.array([_sample_key(i) for i in frame["image_id"]], dtype=np.uint64) if cutoff < 2**64 else None
        sampled.append(frame if keys is None else frame[keys < np.uint64(cutoff)])
        ok = frame[frame["status"] == "ok"]
        seen_rows, seen_ok = seen_rows + len(frame), seen_ok + len(ok)
        if left_out is not None and "error" in frame:
            for reason in frame.loc[frame["status"] != "ok", "error"].fillna("unknown").str.split(":").str[0]:
                seen_reasons[reason] = seen_reasons.get(reason, 0) + 1
        if "mse" in ok and worst:
            for record in ok[ok["mse"].notna()].to_dict("records"):
                item = (float(record["mse"]), record["image_id"], counter, record)
                counter += 1
                if len(worst_heap) < worst:
                    heapq.heappush(worst_heap, item)
                elif item[0] > worst_heap[0][0]:
                    heapq.heapreplace(worst_heap, item)
        for record in frame[frame["status"] != "ok"].to_dict("records"):
            item = (_Reversed(record["image_id"]), counter, record)
            counter += 1
            if len(error_heap) < errors:
                heapq.heappush(error_heap, item)
            elif item > error_heap[0]:
                heapq.heapreplace(error_heap, item)
    sample = pd.concat(sampled, ignore_index=True) if sampled else pd.DataFrame(columns=columns)
    sample = sample.sort_values("image_id", kind="stable").reset_index(drop=True)
    if z is not None:
        z.ratios = sample.loc[(sample["status"] == "ok") & sample["z_ratio"].notna(), "z_ratio"].tolist()
        z.atypical = [(ratio, image_id) for _, ratio, image_id in sorted(z.atypical, reverse=True)]
    worst_rows = pd.DataFrame([r for *_, r in sorted(worst_heap, key=lambda t: -t[0])], columns=sample.columns)
    error_rows = pd.DataFrame([r for *_, r in sorted(error_heap, key=lambda t: t[0].value)], columns=sample.columns)
    if left_out is not None:  # the rows left in, as counted in the pass
        return ReportRows(sample, seen_rows, seen_ok, seen_reasons, worst_rows, error_rows, z)
    totals = store.manifest.totals()
    reasons = store.error_reasons()
    return ReportRows(sample, totals["rows"], totals["ok"], reasons, worst_rows, error_rows, z)


class _Reversed:
    """Orders ids backwards, so a min-heap keeps the smallest ids."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __lt__(self, other: _Reversed) -> bool:
        return self.value > other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.value == other.value


def with_latents(store: Store, rows: pd.DataFrame, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """`rows` (with image_id and shard) and their latent columns, read from their own shard files only."""
    if rows.empty:
        return rows
    wanted = [c for c in (columns or LATENT_SHAPED_COLUMNS) if c in store.schema.names]
    parts = []
    for shard, part in rows.groupby("shard", sort=False):
        table = read_parquet(shard_file(store.uri, shard), ["image_id", *wanted], remedy=store.repair_hint)
        found = table.to_pandas()
        parts.append(found[found["image_id"].isin(set(part["image_id"]))])
    latents = pd.concat(parts, ignore_index=True).drop_duplicates("image_id")
    merged = rows.drop(columns=[c for c in wanted if c in rows]).merge(latents, on="image_id", how="left")
    for column in LATENT_SHAPED_COLUMNS:
        if column not in merged:
            merged[column] = None
    return merged.set_index(rows.index) if len(merged) == len(rows) else merged
