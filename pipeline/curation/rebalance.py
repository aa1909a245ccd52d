"""Rebalancing by latent regression (methods.md, section 3): new samples for under-represented groups.

Pure torch. Groups come from labels, StyleSpace attribute scores or k-means clusters of latents;
`target_counts` says how many rows each group needs; new samples are made either by composition
(a part of a group member pasted onto another image, re-projected through E and G, which turns
the collage into one realistic image that keeps the part) or by sampling the group's
distribution in the whitened gaussianized space; `quality` scores candidates for the filter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.models.encoder import Encoder, encode
from pipeline.models.stylegan2 import Generator
from pipeline.priors.latent_prior import in_chunks
from pipeline.priors.load import Prior

PART_KINDS = ("half", "quadrants", "blob")


def target_counts(counts: Mapping[str, int], proportions: Mapping[str, float] | None = None) -> dict[str, int]:
    """The smallest group sizes with the target proportions (uniform if None) that remove no row.

    total = max_g count_g / p_g; a group's target is round(total * p_g), never below its count.
    """
    groups = list(counts)
    if proportions is None:
        proportions = {g: 1.0 / len(groups) for g in groups}
    unknown = set(proportions) - set(groups)
    if unknown:
        raise ValueError(f"--target names groups the store does not have: {sorted(unknown)}; groups: {groups}")
    missing = [g for g in groups if proportions.get(g, 0) <= 0 and counts[g] > 0]
    if missing:
        raise ValueError(f"--target gives no share to non-empty groups {missing}; every group needs one")
    total_share = sum(proportions.values())
    shares = {g: proportions[g] / total_share for g in groups}
    total = max(counts[g] / shares[g] for g in groups)
    return {g: max(counts[g], round(total * shares[g])) for g in groups}


def kmeans(x: torch.Tensor, k: int, *, iterations: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding on rows of x [N, D] -> (labels [N], centers [k, D])."""
    if not 1 <= k <= len(x):
        raise ValueError(f"k must be between 1 and the number of rows ({len(x)}), got {k}")
    g = torch.Generator().manual_seed(seed)
    x = x.float()
    centers = [x[torch.randint(len(x), (1,), generator=g)].squeeze(0)]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centers)).min(dim=1).values.square()
        centers.append(x[torch.multinomial(d2.cpu() + 1e-12, 1, generator=g).item()])
    centers_t = torch.stack(centers)
    labels = torch.zeros(len(x), dtype=torch.long)
    for iteration in range(iterations):
        new = torch.cdist(x, centers_t).argmin(dim=1).cpu()
        if iteration > 0 and torch.equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = x[labels.to(x.device) == c]
            if len(members):
                centers_t[c] = members.mean(0)
    return labels, centers_t


def part_masks(n: int, resolution: int, *, generator: torch.Generator,
               kinds: Sequence[str] = PART_KINDS) -> tuple[torch.Tensor, list[str]]:
    """Masks [n, 1, R, R]: 1 where the group member's pixels are kept, 0 where the other image shows.

    half: one half; quadrants: three of the four quadrants; blob: a smooth random region of 40-70%.
    """
    unknown = set(kinds) - set(PART_KINDS)
    if unknown or not kinds:
        raise ValueError(f"part kinds must be among {PART_KINDS}, got {list(kinds)}")
    masks, names = [], []
    half = resolution // 2
    for _ in range(n):
        kind = kinds[int(torch.randint(len(kinds), (), generator=generator))]
        mask = torch.zeros(1, resolution, resolution)
        if kind == "half":
            side = int(torch.randint(4, (), generator=generator))
            region = [(slice(None), slice(None, half)), (slice(None), slice(half, None)),
                      (slice(None, half), slice(None)), (slice(half, None), slice(None))][side]
            mask[(slice(None), *region)] = 1
        elif kind == "quadrants":
            mask[:] = 1
            q = int(torch.randint(4, (), generator=generator))
            rows, cols = (slice(None, half), slice(half, None))[q // 2], (slice(None, half), slice(half, None))[q % 2]
            mask[:, rows, cols] = 0
        else:
            coarse = torch.randn(1, 1, 4, 4, generator=generator)
            smooth = F.interpolate(coarse, size=(resolution, resolution), mode="bicubic", align_corners=False)[0]
            keep = torch.empty(()).uniform_(0.4, 0.7, generator=generator).item()
            cut = torch.quantile(smooth.flatten(), 1 - keep)
            mask = (smooth >= cut).float()
        masks.append(mask)
        names.append(kind)
    return torch.stack(masks), names


@torch.no_grad()
def compose(E: Encoder, G: Generator, parts: torch.Tensor, backgrounds: torch.Tensor,
            masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Collages m * part + (1 - m) * background, re-projected: (collages, ws, G(ws)).

    Every collage pixel is known, so E sees the full image; it returns the latent of the realistic
    image nearest to the collage, which G renders with the seams resolved.
    """
    collages = masks * parts + (1 - masks) * backgrounds
    ws = encode(E, collages).float()
    return collages, ws, G.synthesis(ws, noise_mode="const").float()


@torch.no_grad()
def group_gaussian(prior: Prior, ws_group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of a group's whitened latents [M, num_ws, D]: the diagonal Gaussian `sample_near` draws from."""
    v = in_chunks(prior.whiten, ws_group.float())
    return v.mean(0), v.std(0, unbiased=len(v) > 1).nan_to_num(0.0)


def sample_near(prior: Prior, ws_group: torch.Tensor | tuple[torch.Tensor, torch.Tensor], n: int, *,
                generator: torch.Generator | Sequence[torch.Generator], temperature: float = 0.7) -> torch.Tensor:
    """n latents from a diagonal Gaussian fitted to a group's whitened latents [M, num_ws, D] (or given as
    `group_gaussian`'s (mean, std), fitted once for many draws). `generator`: one stream for all n, or one
    stream per latent (then each latent is the same whatever the others drawn beside it).

    Sampling in the whitened gaussianized space keeps the samples in the prior's support;
    temperature < 1 keeps them nearer the group's mean.
    """
    mean, std = ws_group if isinstance(ws_group, tuple) else group_gaussian(prior, ws_group)
    if isinstance(generator, torch.Generator):
        noise = torch.randn((n, *mean.shape), generator=generator)
    else:
        if len(generator) != n:
            raise ValueError(f"{len(generator)} streams for {n} samples")
        noise = torch.stack([torch.randn(mean.shape, generator=g) for g in generator])
    noise = noise.to(mean.device)
    return prior.unwhiten(mean + temperature * std * noise)


def masked_l1(images: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference on the masked pixels, per image [N]: how well the parts are kept."""
    weight = masks.expand_as(images)
    return ((images - targets).abs() * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3)).clamp_min(1.0)


def nll_cut(nll: torch.Tensor | np.ndarray, percentile: float) -> float:
    """The prior-NLL bound of the quality filter: a percentile of the store's own rows (numpy's quantile:
    torch's refuses more than 2^24 values)."""
    values = nll.double().cpu().numpy() if isinstance(nll, torch.Tensor) else np.asarray(nll, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(np.quantile(finite, percentile / 100.0)) if len(finite) else math.inf
