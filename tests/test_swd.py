"""Sliced Wasserstein distance on Laplacian-pyramid patches (ProGAN's realism measure)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.evaluation.swd import _blur, laplacian_pyramid, patch_descriptors, sliced_wasserstein, swd
from pipeline.curation.rebalance import part_masks


def textures(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """Smooth random colour fields: a stand-in image distribution with no sharp edges."""
    rng = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 8, size // 8, generator=rng) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def test_the_pyramid_keeps_every_band_and_rebuilds_the_image():
    images = textures(4, 0, size=64)
    levels = laplacian_pyramid(images, min_resolution=16)
    assert [lvl.shape[-1] for lvl in levels] == [64, 32, 16]
    rebuilt = levels[-1]
    for band in reversed(levels[:-1]):  # undo each step: band + blur(upsampled coarser level)
        up = torch.zeros_like(band)
        up[..., ::2, ::2] = rebuilt * 4
        rebuilt = band + _blur(up)
    assert torch.allclose(rebuilt, images, atol=1e-5)


def test_patch_descriptors_are_the_pixels_of_the_patches():
    level = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).reshape(2, 3, 10, 10)  # every value unique
    d = patch_descriptors(level, 5, torch.Generator().manual_seed(0), patch_size=7)
    assert d.shape == (10, 3 * 49)
    for row, descriptor in enumerate(d):
        image, corner = divmod(int(descriptor[0].item()), 300)
        y, x = divmod(corner, 10)
        assert image == row // 5 and torch.equal(descriptor.reshape(3, 7, 7), level[image, :, y:y + 7, x:x + 7])


def test_sliced_wasserstein_is_zero_for_equal_sets_and_grows_with_a_shift():
    rng = torch.Generator().manual_seed(1)
    a = torch.randn(500, 20, generator=rng)
    assert sliced_wasserstein(a, a, torch.Generator().manual_seed(2)) == 0
    near = sliced_wasserstein(a, a + 0.1, torch.Generator().manual_seed(2))
    far = sliced_wasserstein(a, a + 1.0, torch.Generator().manual_seed(2))
    assert 0 < near < far


def test_swd_sees_collage_seams_that_the_coarse_level_does_not():
    reference, other = textures(32, 0), textures(32, 1)
    first, second = textures(32, 2), textures(32, 3)
    masks, _ = part_masks(32, 32, generator=torch.Generator().manual_seed(0))
    collages = masks * first + (1 - masks) * second
    same = swd(reference, other)
    seams = swd(reference, collages)
    assert set(same) == {"32", "16", "mean"}
    assert seams["32"] > 1.5 * same["32"], (same, seams)  # the finest band-pass level holds the seams
