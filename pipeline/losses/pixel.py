"""Per-image pixel distances, optionally restricted to known pixels by a mask."""

from __future__ import annotations

import torch


def _masked_mean(d: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """d [N, C, H, W] -> [N]: mean over pixels, or over the pixels where mask [N, 1, H, W] is 1."""
    if mask is None:
        return d.flatten(1).mean(dim=1)
    weight = mask.expand_as(d)
    return (d * weight).flatten(1).sum(dim=1) / weight.flatten(1).sum(dim=1).clamp_min(1.0)


def masked_mse(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return _masked_mean((x - y).square(), mask)


def masked_l1(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return _masked_mean((x - y).abs(), mask)
