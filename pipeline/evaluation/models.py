"""What the evaluation studies run on: one generator and the models made for it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.models.encoder import Encoder
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
