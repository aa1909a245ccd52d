"""What the evaluation studies run on: one generator and the models made for it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.models.encoder import encode
from pipeline.model_set import ModelSet


@dataclass
class EvalModels(ModelSet):
    """The models of the studies, plus the realism distance to the real images."""

    realism: object = None  # Callable[[Tensor], float]: KID of an image set against the real images


def initial_latents(models: EvalModels, images: torch.Tensor) -> torch.Tensor:
    """Where refinement starts: the encoder's prediction, or w_avg without an encoder."""
    if models.E is not None:
        with torch.no_grad():
            return encode(models.E, images).float()
    return models.G.w_avg.expand(len(images), models.G.num_ws, -1).clone()
