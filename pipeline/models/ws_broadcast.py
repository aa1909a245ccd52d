"""The last steps every mapping network shares (StyleGAN's MLP and LIA's invertible coupling stack)."""

from __future__ import annotations

import torch
from torch import nn


def broadcast_ws(mapping: nn.Module, x: torch.Tensor, truncation_psi: float, truncation_cutoff: int | None,
                 update_w_avg: bool) -> torch.Tensor:
    """A mapping network's last steps, whatever computed w [N, w_dim]: track w_avg (training), repeat
    w num_ws times, truncate towards w_avg (all layers, or the first `truncation_cutoff`)."""
    if update_w_avg and mapping.w_avg_beta is not None:
        mapping.w_avg.copy_(x.detach().mean(dim=0).lerp(mapping.w_avg, mapping.w_avg_beta))
    if mapping.num_ws is not None:
        x = x.unsqueeze(1).repeat(1, mapping.num_ws, 1)  # [N, num_ws, w_dim]
    if truncation_psi != 1:
        if truncation_cutoff is None or mapping.num_ws is None:
            x = mapping.w_avg.lerp(x, truncation_psi)
        else:
            x[:, :truncation_cutoff] = mapping.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
    return x
