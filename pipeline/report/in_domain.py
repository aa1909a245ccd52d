"""The report's in-domain check: the generator's own samples, inverted with the store's recipe.

A blurry reconstruction of a user's image has two possible causes: the model cannot represent it
(out of its domain, or a small model), or the pipeline is wrong (settings, alignment, a broken
checkpoint). Images the generator itself made are inside its domain by construction, so inverting
a few with exactly the store's models and settings tells them apart: near-perfect reconstructions
there and poor ones on the user's images point at the domain; poor ones on both at the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from pipeline.model_set import ModelSet
from pipeline.stages.chain import NOISE_MODE, invert_batch
from pipeline.stages.inversion_settings import InversionSettings
from pipeline.sampling import mapped_ws

SEED = 2024  # fixed: the same samples in every report of a generator


@dataclass
class InDomainCheck:
    samples: torch.Tensor  # [N, C, R, R] the generator's images
    reconstructions: torch.Tensor  # G(w_refined), or of the last stage run
    mse: np.ndarray  # [N]
    perceptual: np.ndarray | None  # [N]


def store_inversion_settings(settings: dict) -> InversionSettings:
    """The InversionSettings a store recorded (defaults for any it predates)."""
    names = {f.name for f in fields(InversionSettings)}
    return InversionSettings(**{k: v for k, v in settings.items() if k in names})


@torch.no_grad()
def _samples(G, n: int) -> torch.Tensor:
    ws = mapped_ws(G, n, torch.Generator(device="cpu").manual_seed(SEED))
    return G.synthesis(ws, noise_mode=NOISE_MODE).float().clamp(-1, 1)


def in_domain_check(models: ModelSet, settings: InversionSettings, n: int) -> InDomainCheck:
    """Invert n of G's own samples with `models` and `settings` (the store's)."""
    samples = _samples(models.G, n)
    stages = [s for s in settings.stages if s != "identity"]  # the check is about reconstruction
    settings = InversionSettings(**{**{f.name: getattr(settings, f.name) for f in fields(settings)},
                                    "stages": stages})
    out = invert_batch(models, settings, samples, None, [f"in-domain-{i}" for i in range(n)])
    column = "w_refined" if "w_refined" in out else "w_encoded" if "w_encoded" in out else None
    G = models.G
    if column is None:
        reconstructions = G.w_avg.expand(n, G.num_ws, -1)
    else:
        reconstructions = torch.from_numpy(out[column]).reshape(n, G.num_ws, G.w_dim).to(G.w_avg.device)
    with torch.no_grad():
        images = G.synthesis(reconstructions.float(), noise_mode=NOISE_MODE).float()
    return InDomainCheck(samples.cpu(), images.cpu(), out["mse"], out.get("perceptual"))
