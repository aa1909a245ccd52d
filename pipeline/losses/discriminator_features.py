"""A perceptual distance from the loaded discriminator's features (no extra weights needed).

D's blocks are a learned image feature hierarchy for the very domain of the generator. Following
LPIPS, each block's features are unit-normalized along channels and compared per position; the
mean squared differences are summed over blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.stylegan2 import Discriminator


def _unit_channels(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (f.square().sum(dim=1, keepdim=True) + eps).sqrt()


class DiscriminatorFeatureLoss(nn.Module):
    """x, y [N, C, H, W] in [-1, 1] -> [N]."""

    def __init__(self, D: Discriminator) -> None:
        super().__init__()
        self.D = D.eval().requires_grad_(False)

    def reference(self, y: torch.Tensor) -> list[torch.Tensor]:
        """The unit-normalized features of the images compared against (computed once per batch)."""
        return [_unit_channels(f) for f in self.D.features(y)]

    def distance(self, x: torch.Tensor, reference: list[torch.Tensor]) -> torch.Tensor:
        total = 0
        for fx, fy in zip(self.reference(x), reference):
            total = total + (fx - fy).square().sum(dim=1).flatten(1).mean(dim=1)
        return total

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.distance(x, self.reference(y))
