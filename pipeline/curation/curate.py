"""Curation: flag what should not be in a dataset (methods.md, section 4), pure torch and numpy.

- outliers: prior NLL above a percentile of the store (far from what the generator considers typical);
- near-duplicates: cosine similarity of whitened latents (or identity embeddings) above a threshold:
  exactly (blockwise, so no N x N matrix is built) for small stores and as the reference, through an
  approximate index at scale (pipeline/curation/similarity_search.py);
- bad reconstructions: MSE or perceptual distance above a percentile, identity cosine below a bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.curation.similarity_search import DuplicatePairs, SearchProgress


BLOCK_ELEMENTS = 2**28  # similarities held at once by default: 1 GiB of float32

def near_duplicate_pairs(features: torch.Tensor, threshold: float, *, block_size: int | None = None,
                         max_pairs: int = 10_000_000, resume: SearchProgress | None = None,
                         on_progress: Callable[[SearchProgress], None] | None = None,
                         progress_every_s: float = 60.0,
                         on_rows: Callable[[int], None] | None = None) -> DuplicatePairs:
    """All pairs of rows of features [N, D] whose cosine is at least `threshold`.

    Rows are normalized once; each block of `block_size` rows is compared with the rows after its
    start (upper triangle only), so memory is block_size x N and work is N^2 D / 2 multiply-adds.
    The default block holds about 2^28 similarities (4,096 rows at 65k, 256 at 1M). Runs on the
    tensor's device (a GPU for large N). A long search reports `SearchProgress` to `on_progress`
    every `progress_every_s` seconds; passing one back as `resume` continues from it (rows before
    its `next_row` are done, whatever block size found them). `on_rows` is told the rows searched
    after each block (for a progress bar).
    """
    x = F.normalize(features.float(), dim=1)
    n = x.shape[0]
    if block_size is None:
        block_size = max(64, min(4096, BLOCK_ELEMENTS // max(n, 1)))
    firsts, seconds, cosines = [], [], []
    first_row = 0
    if resume is not None:
        first_row = resume.next_row
        firsts, seconds = [torch.from_numpy(resume.pairs.first)], [torch.from_numpy(resume.pairs.second)]
        cosines = [torch.from_numpy(resume.pairs.cosine)]
    count = sum(len(f) for f in firsts)
    cat = (lambda parts, dtype: torch.cat(parts).numpy().astype(dtype) if parts else np.zeros(0, dtype))
    last_report = time.monotonic()
    for start in range(first_row, n, block_size):
        if on_progress is not None and start > first_row and time.monotonic() - last_report >= progress_every_s:
            on_progress(SearchProgress(start, DuplicatePairs(cat(firsts, np.int64), cat(seconds, np.int64),
                                                             cat(cosines, np.float32))))
            last_report = time.monotonic()
        block = x[start : start + block_size]
        sims = block @ x[start:].T  # [b, n - start]
        b = block.shape[0]
        # keep j > i: only the leading b x b square holds j <= i, so only it is masked
        sims[:, :b].masked_fill_(torch.ones(b, b, dtype=torch.bool, device=x.device).tril(), -2.0)
        i, j = torch.nonzero(sims >= threshold, as_tuple=True)
        count += len(i)
        if count > max_pairs:
            raise ValueError(f"more than {max_pairs:,} pairs reach cosine {threshold}; raise the threshold")
        firsts.append((i + start).cpu())
        seconds.append((j + start).cpu())
        cosines.append(sims[i, j].cpu())
        if on_rows is not None:
            on_rows(min(start + b, n))
    return DuplicatePairs(cat(firsts, np.int64), cat(seconds, np.int64), cat(cosines, np.float32))


def duplicate_groups(n: int, pairs: DuplicatePairs) -> np.ndarray:
    """Connected components of the duplicate graph: group id per row (its smallest member's index)."""
    if not len(pairs):
        return np.arange(n, dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs.first, pairs.second)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(n, dtype=np.int64))
    return smallest[labels]


def percentile_rank(values: np.ndarray) -> np.ndarray:
    """Percentile (0-100) of each value within the array; NaN stays NaN."""
    out = np.full(values.shape, np.nan, dtype=np.float64)
    finite = np.isfinite(values)
    if finite.any():
        ranks = values[finite].argsort().argsort()
        out[finite] = 100.0 * (ranks + 0.5) / finite.sum()
    return out


def above_percentile(values: np.ndarray, percentile: float) -> np.ndarray:
    """True where a value exceeds the given percentile of the finite values (False for NaN)."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=bool)
    cut = np.percentile(values[finite], percentile)
    return finite & (values > cut)
