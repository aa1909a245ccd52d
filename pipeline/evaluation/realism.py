"""Realism as a feature-distribution distance (KID) with whatever extractor can be had offline.

No Inception weights offline, so the extractor is configurable and always named in the results:
'discriminator' (the checkpoint's D, pooled last-block features: learned on this very domain),
'identity' (the identity model's embeddings) or 'random' (the fixed random convnet of the
generator-training KID). Figures compare methods within one run, not with published FID/KID.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.training.gan_training import RandomFeatures, kid

FEATURE_KINDS = ("discriminator", "identity", "random")

Extractor = Callable[[torch.Tensor], torch.Tensor]


def feature_extractor(kind: str, *, discriminator: torch.nn.Module | None = None,
                      identity: object | None = None, device: torch.device | str = "cpu") -> Extractor:
    """images [N, C, H, W] in [-1, 1] -> features [N, F], batched, without gradients."""
    if kind == "discriminator":
        if discriminator is None:
            raise ValueError("--features discriminator: the generator checkpoint holds no discriminator (D)")
        D = discriminator.eval()

        def net(x: torch.Tensor) -> torch.Tensor:
            return D.features(x)[-1].mean(dim=(2, 3))
    elif kind == "identity":
        if identity is None:
            raise ValueError("--features identity: no identity model was given")
        net = identity.embed  # type: ignore[attr-defined]
    elif kind == "random":
        net = RandomFeatures().to(device)
    else:
        raise ValueError(f"--features must be one of {FEATURE_KINDS}, got {kind!r}")

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(chunk.float()).flatten(1).cpu() for chunk in images.split(64)])

    return extract


def kid_to(reference: torch.Tensor, extractor: Extractor) -> Callable[[torch.Tensor], float]:
    """A function scoring image sets by KID against `reference` images (features computed once)."""
    reference_features = extractor(reference)

    def score(images: torch.Tensor) -> float:
        return kid(reference_features, extractor(images), subsets=20, subset_size=min(100, len(images)))

    return score
