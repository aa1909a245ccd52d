"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al., ProGAN, 2018).

A realism measure that needs no pretrained network: each image set is described by random 7x7
patches of every level of its Laplacian pyramid (the finest levels see texture and seams, the
coarsest colour and layout); per level, the two sets of patch descriptors are compared by the
sliced Wasserstein distance (random unit directions, sorted projections, mean absolute gap).
Descriptors are normalized per channel with the statistics of both sets pooled, so a level's figure
does not depend on its contrast. Lower is closer; ProGAN reports each level x 1e3, as here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16  # the 5-tap Gaussian of pyrDown / pyrUp


def _blur(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = (_BINOMIAL[:, None] * _BINOMIAL[None, :]).to(x)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k.expand(c, 1, 5, 5), groups=c)


def laplacian_pyramid(images: torch.Tensor, min_resolution: int = 16) -> list[torch.Tensor]:
    """[N, C, H, W] -> levels from the finest band-pass to the coarsest low-pass (side >= min_resolution)."""
    levels, current = [], images.float()
    while current.shape[-1] // 2 >= min_resolution:
        down = _blur(current)[..., ::2, ::2]
        up = torch.zeros_like(current)
        up[..., ::2, ::2] = down * 4
        levels.append(current - _blur(up))
        current = down
    levels.append(current)
    return levels


def patch_descriptors(level: torch.Tensor, patches_per_image: int, generator: torch.Generator,
                      patch_size: int = 7) -> torch.Tensor:
    """Random patch_size^2 patches of each image: [N * patches_per_image, C * patch_size^2]."""
    n, c, h, w = level.shape
    ys = torch.randint(0, h - patch_size + 1, (n, patches_per_image), generator=generator)
    xs = torch.randint(0, w - patch_size + 1, (n, patches_per_image), generator=generator)
    offsets = torch.arange(patch_size)
    rows = (ys[..., None] + offsets)[..., :, None].expand(-1, -1, patch_size, patch_size)  # [N, P, k, k]
    cols = (xs[..., None] + offsets)[..., None, :].expand(-1, -1, patch_size, patch_size)
    image = torch.arange(n)[:, None, None, None].expand_as(rows)
    patches = level.permute(0, 2, 3, 1)[image, rows, cols]  # [N, P, k, k, C]
    return patches.permute(0, 1, 4, 2, 3).reshape(n * patches_per_image, c * patch_size**2)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator, *, directions: int = 512,
                       repeats: int = 4) -> float:
    """Mean over `repeats` x `directions` random unit directions of the 1-D Wasserstein distance
    between the projections of a and b (equal numbers of rows)."""
    total = 0.0
    for _ in range(repeats):
        d = torch.randn(a.shape[1], directions, generator=generator, dtype=a.dtype)
        d = d / d.norm(dim=0, keepdim=True)
        pa, _ = torch.sort(d.T @ a.T, dim=1)  # [directions, rows]: sorting along the contiguous axis is faster
        pb, _ = torch.sort(d.T @ b.T, dim=1)
        total += (pa - pb).abs().mean().item()
    return total / repeats


def swd(images_a: torch.Tensor, images_b: torch.Tensor, *, patches_per_image: int = 128, min_resolution: int = 16,
        seed: int = 0) -> dict[str, float]:
    """SWD x 1e3 per pyramid level (keyed by its side in pixels) and their mean ('mean').

    Both sets are reduced to the same number of descriptors (the smaller set's), drawn at random.
    """
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for level_a, level_b in zip(laplacian_pyramid(images_a.cpu(), min_resolution),
                                laplacian_pyramid(images_b.cpu(), min_resolution)):
        da = patch_descriptors(level_a, patches_per_image, generator)
        db = patch_descriptors(level_b, patches_per_image, generator)
        count = min(len(da), len(db))
        da = da[torch.randperm(len(da), generator=generator)[:count]]
        db = db[torch.randperm(len(db), generator=generator)[:count]]
        pooled = torch.cat([da, db]).reshape(2 * count, level_a.shape[1], -1)
        mean = pooled.mean(dim=(0, 2)).repeat_interleave(pooled.shape[2])
        std = pooled.std(dim=(0, 2)).clamp_min(1e-8).repeat_interleave(pooled.shape[2])
        result[str(level_a.shape[-1])] = 1e3 * sliced_wasserstein((da - mean) / std, (db - mean) / std, generator)
    result["mean"] = sum(result.values()) / len(result)
    return result
