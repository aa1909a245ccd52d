"""Content fingerprints of networks: sha256 over names, dtypes, shapes and bytes of the weights.

Computed on latentmill's own state dict, so one network has one fingerprint whichever file format
it arrived in. Outputs record it, and priors and encoders store the fingerprint of the generator
they were made for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn


def fingerprint_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def fingerprint(module: nn.Module) -> str:
    """Fingerprint of a module's persistent parameters and buffers."""
    return fingerprint_state_dict(module.state_dict())
