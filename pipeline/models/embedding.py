"""A small image-embedding network: the identity model for data FaceNet was not trained on.

FaceNet's weights cannot be had offline and know nothing of emoji, so the demo bundle carries an
`EmbeddingNet` trained contrastively on the demo data (pipeline/training/identity_training.py): two
degraded views of one image should embed close, views of different images far apart. It implements
the same `embed(images) -> unit-norm [N, D]` interface as FaceNetIdentity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingNet(nn.Module):
    """Conv blocks (two 3x3 convs, LeakyReLU, 2x average pooling) down to 4x4, then a linear head."""

    def __init__(self, resolution: int = 32, img_channels: int = 3, base_channels: int = 32,
                 max_channels: int = 128, embedding_dim: int = 64) -> None:
        super().__init__()
        if resolution < 4 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
        self.init_kwargs = {"resolution": resolution, "img_channels": img_channels, "base_channels": base_channels,
                            "max_channels": max_channels, "embedding_dim": embedding_dim}
        self.resolution = resolution
        layers: list[nn.Module] = []
        channels, size = img_channels, resolution
        width = base_channels
        while size > 4:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2), nn.AvgPool2d(2)]
            channels, size, width = width, size // 2, min(width * 2, max_channels)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * 4 * 4, embedding_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, C, H, W] in [-1, 1] (any size: resized) -> unnormalized embeddings [N, D]."""
        x = images.float()
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                              antialias=True)
        return self.head(self.features(x).flatten(1))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self(images), dim=1)
