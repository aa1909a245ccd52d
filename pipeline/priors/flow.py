"""A normalizing-flow prior over W for any pretrained generator (LIA's exact latent, post hoc).

LIA makes z and w interchangeable by training the generator with an invertible mapping network.
A generator someone downloaded was not trained that way, but the same exactness can be had after
the fact: a flow fitted to mapped samples w = mapping(z) is an invertible map W -> Z with Z
standard normal, so every latent has an exact z (`to_latent`), every z an exact w (`from_latent`),
and log p(w) is exact too (change of variables).

The flow is the gaussianized prior followed by coupling layers:
    w --gaussianize--> v --whiten (mu, U, sigma)--> u --coupling stack--> z
The first two steps are the gaussianized prior's own coordinates, and the coupling networks start
at zero, so an untrained flow *is* the gaussianized prior; fitting only adds what a Gaussian in V
misses. The linear step runs in float64 (a poorly conditioned covariance would otherwise cost the
round trip its exactness), the couplings in float32.

Same interface as GaussianizedPrior (nll, whiten, compress, truncate, log_prob, sample,
to_latent/from_latent), so every stage that takes a prior takes a flow. Saved as a latentmill
bundle holding one network, 'flow', whose recorded arguments name the generator it was fitted for.
Shapes: ws [..., w_dim] (typically [N, num_ws, w_dim]); every method maps the last axis.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pipeline.models.bundle import write_bundle
from pipeline.models.invertible import CouplingStack
from pipeline.priors.gaussian import GaussianizedPrior, degaussianize, gaussianize, gaussianize_log_det
from pipeline.priors.latent_prior import LatentPrior, mean_over_layers

FLOW_NETWORK = "flow"  # the network's name inside its bundle


class FlowPrior(LatentPrior):
    """W <-> Z (standard normal) exactly: gaussianize, whiten, then a coupling stack."""

    fit_command, what = "latentmill fit-flow", "flow"

    def __init__(self, w_dim: int, couplings: int = 8, hidden: int | None = None, hidden_layers: int = 2,
                 coupling: str = "affine", generator_fingerprint: str | None = None, num_samples: int = 0) -> None:
        super().__init__()
        hidden = hidden or 2 * w_dim
        self.init_kwargs: dict[str, Any] = dict(w_dim=w_dim, couplings=couplings, hidden=hidden,
                                                hidden_layers=hidden_layers, coupling=coupling,
                                                generator_fingerprint=generator_fingerprint, num_samples=num_samples)
        self.generator_fingerprint, self.num_samples = generator_fingerprint, num_samples
        eye = torch.eye(w_dim, dtype=torch.float64)
        self.register_buffer("shift", torch.zeros(w_dim, dtype=torch.float64))  # mu of V
        self.register_buffer("whitening", eye.clone())  # U diag(1/sigma): u = (v - mu) @ whitening
        self.register_buffer("coloring", eye.clone())  # its inverse, diag(sigma) U^T
        self.register_buffer("whitening_log_det", torch.zeros((), dtype=torch.float64))  # -sum log sigma
        self.register_buffer("w_avg", torch.zeros(w_dim, dtype=torch.float64))
        self.stack = CouplingStack(w_dim, couplings, hidden, hidden_layers, coupling)

    @classmethod
    def from_gaussianized(cls, prior: GaussianizedPrior, **architecture: Any) -> FlowPrior:
        """A flow that starts as `prior` exactly (same whitening, identity couplings)."""
        flow = cls(prior.w_dim, generator_fingerprint=prior.generator_fingerprint, **architecture)
        flow.set_whitening(prior.mean, prior.components, prior.sigma, prior.w_avg)
        return flow.to(prior.mean.device)

    @torch.no_grad()
    def set_whitening(self, mean: torch.Tensor, components: torch.Tensor, sigma: torch.Tensor,
                      w_avg: torch.Tensor) -> None:
        components, sigma = components.double(), sigma.double()
        self.shift.copy_(mean.double())
        self.whitening.copy_(components / sigma)
        self.coloring.copy_(sigma[:, None] * components.T)
        self.whitening_log_det.fill_(-sigma.log().sum().item())
        self.w_avg.copy_(w_avg.double())

    @property
    def _stack_dtype(self) -> torch.dtype:
        return self.stack.log_scale.dtype  # float32 normally; float64 after .double(), for checks

    @property
    def w_dim(self) -> int:
        return self.shift.shape[0]

    # ---- the map and its inverse -------------------------------------------------------------
    def forward_with_log_det(self, ws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ws [..., D] -> (z [..., D] in the stack's dtype, log|det dz/dw| [...] float64)."""
        u = ((gaussianize(ws.double()) - self.shift) @ self.whitening).to(self._stack_dtype)
        z, stack_log_det = self.stack(u)
        return z, stack_log_det.double() + gaussianize_log_det(ws) + self.whitening_log_det

    def to_latent(self, ws: torch.Tensor) -> torch.Tensor:
        """The exact latent z of ws: [..., D] -> [..., D], standard normal for mapped samples."""
        return self.forward_with_log_det(ws)[0].to(ws.dtype)

    def from_latent(self, z: torch.Tensor) -> torch.Tensor:
        """The exact inverse of `to_latent`: z [..., D] -> ws [..., D]."""
        u = self.stack.inverse(z.to(self._stack_dtype))
        return degaussianize(u.double() @ self.coloring + self.shift).to(z.dtype)

    # ---- the prior interface (nll, compress, truncate, sample: pipeline/priors/latent_prior.py) ----
    def log_prob(self, ws: torch.Tensor) -> torch.Tensor:
        """Mean over layers of log p(w) in nats (change of variables): [N, num_ws, D] or [N, D] -> [N]
        float64; comparable with GaussianizedPrior.log_prob."""
        z, log_det = self.forward_with_log_det(ws)
        log_normal = -0.5 * (z.double().square().sum(dim=-1) + self.w_dim * math.log(2 * math.pi))
        return mean_over_layers(log_normal + log_det, ws)

    # ---- persistence -------------------------------------------------------------------------
    def save(self, uri: str) -> None:
        write_bundle(uri, {FLOW_NETWORK: self}, info={"generator_fingerprint": self.generator_fingerprint})
