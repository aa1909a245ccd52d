"""Exactly invertible networks from coupling layers (NICE, Dinh et al. 2015; LIA, Zhu et al.).

A coupling layer splits its input x into halves (a, b) by a fixed permutation and changes only b,
by an amount computed from a: additive (NICE) b' = b + t(a), or affine b' = b * exp(s(a)) + t(a).
Its inverse reads a from the output, which the layer left untouched, so it is exact whatever the
networks t and s compute; the log-determinant of its Jacobian is 0 (additive) or sum(s) (affine).
A `CouplingStack` chains such layers (each with its own permutation) and ends in a learned
per-dimension scale, NICE's answer to additive couplings preserving volume.

Two users: `InvertibleMapping`, a StyleGAN mapping network with an exact inverse (LIA's stage 1:
`G.mapping.inverse(ws)` is the z of any latent), and the post-hoc flow prior
(pipeline/priors/flow.py). The last layer of every coupling network starts at zero, so a fresh
stack is the identity: training starts from "change nothing".
Shapes: x [..., dim]; every method maps the last axis.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.model_settings import COUPLINGS
from pipeline.models.ws_broadcast import broadcast_ws

_LRELU_SLOPE = 0.2


class CouplingNet(nn.Module):
    """The MLP of one coupling: half -> shift (and log-scale), leaky ReLU hidden layers, zero last layer."""

    def __init__(self, in_features: int, out_features: int, hidden: int, hidden_layers: int) -> None:
        super().__init__()
        sizes = [in_features] + [hidden] * hidden_layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(sizes[-1], out_features)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = F.leaky_relu(layer(x), _LRELU_SLOPE)
        return self.out(x)


class Coupling(nn.Module):
    """One coupling layer on a fixed permutation of the input (seeded by the layer's index)."""

    def __init__(self, dim: int, hidden: int, hidden_layers: int, kind: str, seed: int) -> None:
        super().__init__()
        if kind not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {kind!r}")
        self.kind, self.split = kind, dim // 2
        # numpy's legacy RandomState draws the same permutation for a seed in every version, so the
        # permutations are part of the architecture and need not be stored in files
        permutation = torch.from_numpy(np.random.RandomState(seed).permutation(dim))
        self.register_buffer("permutation", permutation, persistent=False)
        self.register_buffer("inverse_permutation", torch.argsort(permutation), persistent=False)
        changed = dim - self.split
        self.net = CouplingNet(self.split, changed * (2 if kind == "affine" else 1), hidden, hidden_layers)

    def _shift_and_log_scale(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.net(a)
        if self.kind == "additive":
            return out, None
        shift, raw = out.chunk(2, dim=-1)
        return shift, torch.tanh(raw)  # |log-scale| < 1 per layer: no layer can blow a dimension up

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., dim] -> (y [..., dim], log|det dy/dx| [...])."""
        x = x[..., self.permutation]
        a, b = x[..., : self.split], x[..., self.split :]
        shift, log_scale = self._shift_and_log_scale(a)
        if log_scale is None:
            y, log_det = torch.cat([a, b + shift], dim=-1), x.new_zeros(x.shape[:-1])
        else:
            y, log_det = torch.cat([a, b * log_scale.exp() + shift], dim=-1), log_scale.sum(dim=-1)
        return y[..., self.inverse_permutation], log_det  # back in the input's order: a zero net is the identity

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y = y[..., self.permutation]
        a, b = y[..., : self.split], y[..., self.split :]
        shift, log_scale = self._shift_and_log_scale(a)
        b = b - shift if log_scale is None else (b - shift) * (-log_scale).exp()
        return torch.cat([a, b], dim=-1)[..., self.inverse_permutation]


class CouplingStack(nn.Module):
    """`couplings` coupling layers and a per-dimension scale: an exactly invertible map of R^dim."""

    def __init__(self, dim: int, couplings: int = 8, hidden: int | None = None, hidden_layers: int = 2,
                 kind: str = "additive") -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"a coupling stack needs at least 2 dimensions, got {dim}")
        hidden = hidden or dim
        self.layers = nn.ModuleList(Coupling(dim, hidden, hidden_layers, kind, seed=i) for i in range(couplings))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., dim] -> (y [..., dim], log|det dy/dx| [...])."""
        log_det = x.new_zeros(x.shape[:-1])
        for layer in self.layers:
            x, layer_log_det = layer(x)
            log_det = log_det + layer_log_det
        return x * self.log_scale.exp(), log_det + self.log_scale.sum()

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        x = y * (-self.log_scale).exp()
        for layer in reversed(self.layers):
            x = layer.inverse(x)
        return x


class InvertibleMapping(nn.Module):
    """A StyleGAN mapping network z -> w that is a coupling stack, so z = inverse(w) exactly (LIA).

    Same call as the standard mapping (z, c -> ws [N, num_ws, w_dim], truncation, w_avg tracking),
    except that z is not normalized to unit second moment (that would not be invertible) and there
    are no labels. Needs z_dim == w_dim.
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 layer_features: int | None = None, coupling: str = "additive", hidden_layers: int = 2,
                 w_avg_beta: float | None = 0.995, **unused: Any) -> None:
        super().__init__()
        if z_dim != w_dim:
            raise ValueError(f"an invertible mapping needs z_dim == w_dim, got {z_dim} and {w_dim}")
        if c_dim:
            raise ValueError("an invertible mapping takes no labels (c_dim must be 0)")
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.w_avg_beta = w_avg_beta
        self.flow = CouplingStack(w_dim, num_layers, layer_features, hidden_layers, coupling)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_w_avg: bool = False) -> torch.Tensor:
        if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"mapping expects z of shape [N, {self.z_dim}], got {None if z is None else list(z.shape)}")
        x, _ = self.flow(z.float())
        return broadcast_ws(self, x, truncation_psi, truncation_cutoff, update_w_avg)

    def inverse(self, ws: torch.Tensor) -> torch.Tensor:
        """The exact z of latents: ws [..., w_dim] (a w, or W+ with one z per layer) -> z [..., z_dim]."""
        return self.flow.inverse(ws.float())

    def log_det(self, z: torch.Tensor) -> torch.Tensor:
        """log|det dw/dz| at z [..., z_dim] -> [...]."""
        return self.flow(z.float())[1]
