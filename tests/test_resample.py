"""FIR resampling: exact sizes, preserved constants, and the textbook filter."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.resample import conv2d_resample, downsample2d, make_filter, upfirdn2d, upsample2d


def test_default_filter_is_the_normalized_outer_product_of_1_3_3_1():
    f = make_filter()
    assert f.shape == (4, 4)
    torch.testing.assert_close(f, torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64)


def test_upsample_and_downsample_change_size_by_exactly_two():
    x = torch.randn(2, 3, 8, 8)
    assert upsample2d(x, make_filter()).shape == (2, 3, 16, 16)
    assert downsample2d(x, make_filter()).shape == (2, 3, 4, 4)


def test_resampling_keeps_a_constant_image_constant_away_from_borders():
    x = torch.full((1, 1, 8, 8), 2.0)
    up = upsample2d(x, make_filter())
    down = downsample2d(x, make_filter())
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 2.0))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 2.0))


def test_negative_padding_crops():
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    out = upfirdn2d(x, torch.ones(1, 1), padding=(-1, -1, -2, 0))
    torch.testing.assert_close(out, x[..., 2:, 1:-1])


@pytest.mark.parametrize("up,down,size", [(2, 1, 16), (1, 2, 4), (1, 1, 8)])
def test_resampled_convolution_output_sizes(up, down, size):
    x = torch.randn(2, 4, 8, 8)
    w = torch.randn(5, 4, 3, 3)
    assert conv2d_resample(x, w, make_filter(), up=up, down=down, padding=1).shape == (2, 5, size, size)


def test_grouped_upsampling_convolution_equals_per_group_convolutions():
    x = torch.randn(1, 2 * 4, 8, 8)
    w = torch.randn(2 * 5, 4, 3, 3)
    grouped = conv2d_resample(x, w, make_filter(), up=2, padding=1, groups=2, flip_weight=False)
    separate = torch.cat([conv2d_resample(x[:, 4 * g : 4 * g + 4], w[5 * g : 5 * g + 5], make_filter(), up=2,
                                          padding=1, flip_weight=False) for g in range(2)], dim=1)
    torch.testing.assert_close(grouped, separate, rtol=1e-5, atol=1e-5)
