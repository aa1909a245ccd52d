"""Compression vs truncation: how much identity each keeps for how close it brings latents to the prior.

Both move inverted latents towards the typical region of the generator. Truncation scales every
direction by psi towards w_avg; compression (methods.md, stage 3) only log-compresses the PCA
components beyond tau sigma in the gaussianized space. Sweeping tau and psi traces one curve each:
x = prior NLL (the store's scale: about w_dim for a typical latent), y = identity cosine between the input and G(w).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pipeline.models.stylegan2 import Generator
from pipeline.priors.load import Prior
from pipeline.models.identity import IdentityModel, cosine_to

DEFAULT_TAUS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
DEFAULT_PSIS = (0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class TradeoffPoint:
    method: str  # 'compression' | 'truncation'
    parameter: float  # tau or psi
    prior_nll: float  # mean over images of prior.nll (about w_dim for a typical latent)
    identity: float  # mean identity cosine with the inputs
    mse: float  # mean pixel MSE against the inputs
    realism: float | None = None  # a feature-distribution distance of the images (e.g. KID), if asked


@torch.no_grad()
def compression_truncation_curve(G: Generator, prior: Prior, identity: IdentityModel,
                                 images: torch.Tensor, ws: torch.Tensor, *, taus: Sequence[float] = DEFAULT_TAUS,
                                 psis: Sequence[float] = DEFAULT_PSIS, noise_mode: str = "const",
                                 batch_size: int = 32,
                                 realism: Callable[[torch.Tensor], float] | None = None) -> list[TradeoffPoint]:
    """Points of both curves for latents ws [N, num_ws, D] inverted from images [N, C, R, R];
    `realism(images)` scores each point's set of images when given."""
    device = G.w_avg.device
    images, ws = images.to(device), ws.to(device)
    variants = [("compression", t, lambda w, t=t: prior.compress(w, t)) for t in taus]
    variants += [("truncation", p, lambda w, p=p: prior.truncate(w, p)) for p in psis]
    batches = list(zip(images.split(batch_size), ws.split(batch_size)))
    targets = [identity.embed(x) for x, _ in batches]  # the inputs' embeddings, once for every variant
    points = []
    for method, parameter, transform in variants:
        nll, cos, mse, rendered = [], [], [], []
        for (x, w), target in zip(batches, targets):
            moved = transform(w)
            recon = G.synthesis(moved, noise_mode=noise_mode).float()
            nll.append(prior.nll(moved))
            cos.append(cosine_to(identity, target, recon))
            mse.append((recon - x).square().mean(dim=(1, 2, 3)))
            if realism is not None:
                rendered.append(recon.cpu())
        points.append(TradeoffPoint(method, float(parameter), torch.cat(nll).mean().item(),
                                    torch.cat(cos).mean().item(), torch.cat(mse).mean().item(),
                                    realism(torch.cat(rendered)) if realism is not None else None))
    return points
