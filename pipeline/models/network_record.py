"""A network as data: its class name, constructor kwargs and flat state dict (format-neutral)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class NetworkRecord:
    class_name: str  # e.g. 'Generator' or 'training.networks.Generator'
    init_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    expected_fingerprint: str | None = None  # recorded by the writer; checked after loading
    layout: str | None = None  # where the file came from, e.g. 'NVlabs/stylegan2-ada-pytorch, training.networks.Generator'

    @property
    def short_class_name(self) -> str:
        return self.class_name.rsplit(".", 1)[-1]
