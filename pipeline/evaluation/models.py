"""What the evaluation studies run on: one generator and the models made for it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.models.encoder import Encoder, encode
from pipeline.models.stylegan2 import Generator
from pipeline.priors.gaussian import GaussianizedPrior
from pipeline.stages.identity import IdentityModel


@dataclass
class EvalModels:
    G: Generator
    E: Encoder | None
    prior: GaussianizedPrior
    perceptual: nn.Module | None
    identity: IdentityModel
    realism: object  # Callable[[Tensor], float]: KID of an image set against the real images
    names: dict[str, str] = field(default_factory=dict)  # perceptual, identity, features

    @property
    def device(self) -> torch.device:
        return self.G.w_avg.device


def initial_latents(models: EvalModels, images: torch.Tensor) -> torch.Tensor:
    """Where refinement starts: the encoder's prediction, or w_avg without an encoder."""
    if models.E is not None:
        with torch.no_grad():
            return encode(models.E, images).float()
    return models.G.w_avg.expand(len(images), models.G.num_ws, -1).clone()
