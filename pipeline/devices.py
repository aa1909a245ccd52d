"""Turning a --device setting into a torch device."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto' is CUDA when present, else the CPU; anything else is passed to torch.device."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
