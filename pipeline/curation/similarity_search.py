"""Near-duplicate pairs at any size: an approximate index finds candidates, exact cosines decide.

The exact search (pipeline/curation/curate.py `near_duplicate_pairs`) compares every row with every
other: N^2 D work, ten days at 10M rows on two cores, and its features (10M x 18 x 512 whitened W+)
fit no machine. At scale:
1. Each row's features are projected to `PROJECTED_DIM` dimensions by a fixed, seeded random
   orthonormal map (Johnson-Lindenstrauss) and normalised, written batch by batch to a file
   (`FeatureFile`, N x 128 float16: 2.6 GB on disk at 10M rows) read back a range at a time with
   positional reads: neither held in memory nor mapped into the process, so its pages are the kernel's
   cache, never the process's resident memory. For a pair of cosine
   rho, the projected cosine errs by about (1 - rho^2) / sqrt(128): 0.009 at rho = 0.95, while
   unrelated pairs (near-orthogonal) stay about 11 standard deviations below any threshold.
2. faiss indexes them (`IVF{n}_HNSW32,SQ8`, inner product): an inverted file of about LIST_SIZE rows
   per list, the lists found through an HNSW graph of their centroids, 8-bit scalar quantisation
   (128 bytes a row). Each row's range search probes NPROBE lists: work per row does not grow with
   N, so the whole search is near-linear (the measured exponent is in BENCHMARKS.md).
3. A candidate pair is one whose projected cosine reaches the threshold minus the projection's
   error band. Pairs well above the band are duplicates (their cosine is the projected estimate);
   pairs inside the band are decided by their exact cosine on the full features, which the caller
   computes in one more pass over just those rows (`band_pairs`).
On a GPU without faiss's GPU build, step 2 is the exact blockwise search over the projected features
(N^2 x 128 multiply-adds: seconds at 10M rows on an H200).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

PROJECTED_DIM = 128
LIST_SIZE = 512  # rows per inverted list: the index's nlist is N / LIST_SIZE
NPROBE = 12  # lists searched per row
QUANTIZER_EF = 64  # HNSW search depth over the list centroids
TRAINING_ROWS_PER_LIST = 64  # k-means training sample: 64 rows per list ...
MIN_TRAINING_ROWS = 100_000  # ... and at least this many (all of a smaller store): the 8-bit quantiser learns
                             # each dimension's range from them, and a row outside it would be clipped
BAND_SIGMAS = 4.0  # the candidate band: this many standard deviations of the projection's error
QUANTIZATION_ERROR = 0.005  # cosine error of 8-bit scalar quantisation, added to the band
IO_CHUNK_BYTES = 1 << 30  # FeatureFile's reads and writes, a call at a time


@dataclass
class DuplicatePairs:
    """Pairs i < j with cosine(x_i, x_j) >= threshold."""

    first: np.ndarray  # int64 [P]
    second: np.ndarray  # int64 [P]
    cosine: np.ndarray  # float32 [P]

    @classmethod
    def empty(cls) -> DuplicatePairs:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))

    @classmethod
    def concat(cls, parts: list[DuplicatePairs]) -> DuplicatePairs:
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.first for p in parts]).astype(np.int64),
                   np.concatenate([p.second for p in parts]).astype(np.int64),
                   np.concatenate([p.cosine for p in parts]).astype(np.float32))

    def __len__(self) -> int:
        return len(self.first)

    def where(self, keep: np.ndarray) -> DuplicatePairs:
        return DuplicatePairs(self.first[keep], self.second[keep], self.cosine[keep])


@dataclass
class SearchProgress:
    """A partial near-duplicate search: every pair (i, j) with i < next_row is in `pairs`."""

    next_row: int
    pairs: DuplicatePairs


class RandomProjection:
    """A fixed orthonormal projection from `dim` to `out_dim` dimensions (the identity when dim <= out_dim),
    drawn from a seeded generator: the same map on every run and every worker."""

    def __init__(self, dim: int, out_dim: int = PROJECTED_DIM, seed: int = 0) -> None:
        self.dim, self.out_dim = dim, min(dim, out_dim)
        self.matrix = None
        if dim > out_dim:
            gaussian = torch.randn(dim, out_dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            self.matrix = torch.linalg.qr(gaussian).Q.float()  # [dim, out_dim], orthonormal columns

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """features [N, dim] -> unit rows [N, out_dim] (float32)."""
        x = features.float()
        if self.matrix is not None:
            x = x @ self.matrix.to(x.device)
        return torch.nn.functional.normalize(x, dim=1)


class FeatureFile:
    """Rows of float16 features in a file, written and read by row range (os.pwrite/os.pread): the
    approximate search's input at any N, with nothing but the current range in the process's memory."""

    def __init__(self, path: str | os.PathLike, rows: int, dim: int) -> None:
        self.shape = (rows, dim)
        self.row_bytes = dim * np.dtype(np.float16).itemsize
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self.fd, rows * self.row_bytes)

    def __len__(self) -> int:
        return self.shape[0]

    def write(self, first_row: int, values: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(values, dtype=np.float16).reshape(-1).view(np.uint8))
        offset, done = first_row * self.row_bytes, 0
        while done < len(data):  # a single call moves at most about 2 GiB
            done += os.pwrite(self.fd, data[done : done + IO_CHUNK_BYTES], offset + done)

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        """A range of rows (a slice with step 1) or the rows of a sorted index array, as float16."""
        if isinstance(rows, slice):
            lo, hi, step = rows.indices(self.shape[0])
            if step != 1:
                raise ValueError("FeatureFile reads contiguous ranges only")
            out = np.empty((max(0, hi - lo), self.shape[1]), dtype=np.float16)
            view, offset, done = memoryview(out.reshape(-1).view(np.uint8)), lo * self.row_bytes, 0
            while done < len(view):
                got = os.preadv(self.fd, [view[done : done + IO_CHUNK_BYTES]], offset + done)
                if got <= 0:
                    raise OSError(f"FeatureFile: short read at byte {offset + done}")
                done += got
            return out
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) > 1 and (np.diff(rows) < 0).any():
            raise ValueError("FeatureFile reads sorted row indices only")
        picked = [self[lo:hi][rows[(rows >= lo) & (rows < hi)] - lo] for lo, hi in _batches(self.shape[0], 65_536)]
        return np.concatenate(picked) if picked else np.zeros((0, self.shape[1]), np.float16)

    def close(self) -> None:
        os.close(self.fd)


def projection_band(threshold: float, projected_dim: int, exact: bool) -> float:
    """How far a projected (and quantised) cosine may stray from the exact one, near `threshold`."""
    if exact:
        return QUANTIZATION_ERROR
    return BAND_SIGMAS * (1 - threshold**2) / math.sqrt(projected_dim) + QUANTIZATION_ERROR


def _batches(n: int, size: int, start: int = 0) -> Iterator[tuple[int, int]]:
    for lo in range(start, n, size):
        yield lo, min(n, lo + size)


def approximate_pairs(features: np.ndarray | FeatureFile, radius: float, *, batch_size: int = 16_384,
                      resume: SearchProgress | None = None,
                      on_progress: Callable[[SearchProgress], None] | None = None, progress_every_s: float = 60.0,
                      on_rows: Callable[[int], None] | None = None, max_pairs: int = 50_000_000,
                      seed: int = 0) -> DuplicatePairs:
    """Every pair i < j of unit rows of `features` [N, d] (float16 or float32, an array or a FeatureFile)
    whose inner product the index finds at least `radius`, with that inner product. Resumable as the
    exact search is: `on_progress` gets SearchProgress every `progress_every_s` seconds."""
    n, _ = features.shape
    index = inner_product_index(features, batch_size=batch_size, seed=seed)
    parts = [resume.pairs] if resume is not None else []
    count = sum(len(p) for p in parts)
    last_report = time.monotonic()
    first_row = resume.next_row if resume is not None else 0
    for lo, hi in _batches(n, batch_size, first_row):
        if on_progress is not None and lo > first_row and time.monotonic() - last_report >= progress_every_s:
            on_progress(SearchProgress(lo, DuplicatePairs.concat(parts)))
            last_report = time.monotonic()
        limits, scores, found = index.range_search(np.ascontiguousarray(features[lo:hi], dtype=np.float32), radius)
        queries = np.repeat(np.arange(lo, hi, dtype=np.int64), np.diff(limits).astype(np.int64))
        keep = found > queries  # each pair once, from its first row (it finds the other either way)
        parts.append(DuplicatePairs(queries[keep], found[keep].astype(np.int64), scores[keep].astype(np.float32)))
        count += int(keep.sum())
        if count > max_pairs:
            raise ValueError(f"more than {max_pairs:,} pairs reach cosine {radius:.3f}; raise the threshold")
        if on_rows is not None:
            on_rows(hi)
    pairs = DuplicatePairs.concat(parts)
    return _unique(pairs)


def inner_product_index(features: np.ndarray | FeatureFile, *, batch_size: int = 16_384, seed: int = 0) -> Any:
    """A faiss index of unit rows [N, d] by inner product: IVF lists of about LIST_SIZE rows found through an
    HNSW graph of their centroids, 8-bit scalar quantisation, NPROBE lists searched a query."""
    import faiss

    n, d = features.shape
    nlist = max(1, n // LIST_SIZE)
    index = faiss.index_factory(d, f"IVF{nlist}_HNSW32,SQ8", faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, max(MIN_TRAINING_ROWS, TRAINING_ROWS_PER_LIST * nlist)),
                                replace=False))
    index.train(np.ascontiguousarray(features[sample], dtype=np.float32))
    for lo, hi in _batches(n, batch_size):
        index.add(np.ascontiguousarray(features[lo:hi], dtype=np.float32))
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = min(NPROBE, nlist)
    faiss.downcast_index(ivf.quantizer).hnsw.efSearch = QUANTIZER_EF
    return index


CROSS_NEIGHBOURS = 4  # candidates per row in the other store
EXACT_BASE_VALUES = 1 << 26  # an other store up to this many projected values is searched exactly (flat)


def cross_pairs(queries: np.ndarray | FeatureFile, base: np.ndarray | FeatureFile, radius: float, *,
                batch_size: int = 16_384, on_rows: Callable[[int], None] | None = None) -> DuplicatePairs:
    """Pairs (i in queries, j in base) of unit rows whose inner product the index finds at least `radius`: each
    query's CROSS_NEIGHBOURS best rows of `base` (an index of `base` built once; work per query does not grow
    with either side, so the whole search is near-linear in both)."""
    import faiss

    n = len(queries)
    if len(base) * base.shape[1] <= EXACT_BASE_VALUES:  # small: every row of base, exactly
        index = faiss.IndexFlatIP(base.shape[1])
        for lo, hi in _batches(len(base), batch_size):
            index.add(np.ascontiguousarray(base[lo:hi], dtype=np.float32))
    else:
        index = inner_product_index(base, batch_size=batch_size)
    parts = []
    for lo, hi in _batches(n, batch_size):
        scores, found = index.search(np.ascontiguousarray(queries[lo:hi], dtype=np.float32),
                                     min(CROSS_NEIGHBOURS, len(base)))
        keep = (found >= 0) & (scores >= radius)
        rows = np.repeat(np.arange(lo, hi, dtype=np.int64)[:, None], found.shape[1], axis=1)
        parts.append(DuplicatePairs(rows[keep], found[keep].astype(np.int64), scores[keep].astype(np.float32)))
        if on_rows is not None:
            on_rows(hi)
    return DuplicatePairs.concat(parts)


def _unique(pairs: DuplicatePairs) -> DuplicatePairs:
    """Each (i, j) once (a resumed search and the two directions can repeat one), the higher score kept."""
    if not len(pairs):
        return pairs
    order = np.lexsort((-pairs.cosine, pairs.second, pairs.first))
    pairs = pairs.where(order)
    first = np.ones(len(pairs), dtype=bool)
    first[1:] = (pairs.first[1:] != pairs.first[:-1]) | (pairs.second[1:] != pairs.second[:-1])
    return pairs.where(first)


def split_by_band(pairs: DuplicatePairs, threshold: float, band: float) -> tuple[DuplicatePairs, DuplicatePairs]:
    """(pairs surely at or above `threshold`, pairs within `band` of it whose exact cosine decides)."""
    sure = pairs.cosine >= threshold + band
    undecided = ~sure & (pairs.cosine >= threshold - band)
    return pairs.where(sure), pairs.where(undecided)


def exact_cosines(pairs: DuplicatePairs, rows: dict, keys: tuple[str, str] | None = None) -> np.ndarray:
    """The exact cosine of each pair, from full feature vectors by row index (keys: the pair's two sides are
    rows of two sets, found under (keys[0], i) and (keys[1], j))."""
    if not len(pairs):
        return np.zeros(0, np.float32)
    first, second = ((lambda i: (keys[0], int(i))), (lambda j: (keys[1], int(j)))) if keys else (int, int)
    a = torch.stack([rows[first(i)] for i in pairs.first]).float()
    b = torch.stack([rows[second(j)] for j in pairs.second]).float()
    return torch.nn.functional.cosine_similarity(a, b, dim=1).numpy().astype(np.float32)
