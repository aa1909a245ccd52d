"""Choosing the perceptual distance of a run: 'lpips', 'discriminator' or 'none'."""

from __future__ import annotations

from torch import nn

from pipeline.models.model_settings import PERCEPTUAL_KINDS
from pipeline.models.stylegan2 import Discriminator


def build_perceptual(kind: str, *, discriminator: Discriminator | None = None, lpips_net: str = "vgg",
                     lpips_weights: str | None = None) -> nn.Module | None:
    """A module mapping (x, y) [N, 3, H, W] in [-1, 1] to per-image distances [N], or None for 'none'."""
    if kind == "lpips":
        from pipeline.losses.lpips_loss import LPIPSLoss
        from pipeline.models.known_weights import VGG16_WITHOUT_DISCRIMINATOR

        # without a discriminator, the advice for a missing backbone never offers one
        return LPIPSLoss(lpips_net, lpips_weights, known=None if discriminator is not None else VGG16_WITHOUT_DISCRIMINATOR)
    if kind == "discriminator":
        if discriminator is None:
            raise ValueError("--perceptual discriminator needs a checkpoint that holds a discriminator (D); "
                             "this one has none: use --perceptual lpips or none")
        from pipeline.losses.discriminator_features import DiscriminatorFeatureLoss

        return DiscriminatorFeatureLoss(discriminator)
    if kind == "none":
        return None
    raise ValueError(f"--perceptual must be one of {PERCEPTUAL_KINDS}, got {kind!r}")
