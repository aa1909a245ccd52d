"""Encoders: one `load_encoder` for every encoder file latentmill reads, one `encode` for all of them.

- latentmill's own latent regressor (pipeline/models/regressor.py), from `latentmill train-encoder`:
  E(x * m, m) -> W+, masked pixels allowed.
"""

from __future__ import annotations

import torch

from pipeline.errors import CheckpointError
from pipeline.models.checkpoints import build_network, read_checkpoint
from pipeline.models.regressor import ConvNetBackbone, Encoder, TorchvisionBackbone, prepare_inputs
from pipeline.models.stylegan2 import Generator

__all__ = ["Encoder", "ConvNetBackbone", "TorchvisionBackbone", "encode", "load_encoder", "prepare_inputs"]


def encode(E: Encoder, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """One forward pass: images [N, C, R, R] in [-1, 1] (NaN = missing), masks [N, 1, R, R] -> ws."""
    if images.shape[-1] != E.resolution or images.shape[-2] != E.resolution:
        raise ValueError(f"the encoder expects {E.resolution}x{E.resolution} images, got {list(images.shape[-2:])}")
    x, m = prepare_inputs(images.to(E.w_avg.device), None if masks is None else masks.to(E.w_avg.device))
    return E(x, m)


def load_encoder(uri: str, *, generator: Generator | None = None, device: str | torch.device = "cpu",
                 setting: str = "--encoder") -> Encoder:
    """Load an encoder bundle; with `generator`, refuse an encoder trained for another generator."""
    ckpt = read_checkpoint(uri, setting=setting)
    if "E" not in ckpt.records:
        raise CheckpointError(f"{setting} {uri}: no encoder ('E') in this file; it holds {sorted(ckpt.records)}")
    E = build_network(ckpt.records["E"], source=uri, name="E")
    if generator is not None:
        E.check_generator(generator)
    return E.to(device)
