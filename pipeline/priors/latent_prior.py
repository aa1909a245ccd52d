"""What every latentmill prior shares: a map W <-> standard normal coordinates, and what follows from it.

A prior supplies `to_latent(ws)` (coordinates in which mapped samples are N(0, I)), its inverse
`from_latent`, and `log_prob`. The rest is defined once here, so the gaussianized prior and the
flow mean the same thing by it: the NLL (mean over layers of the squared norm of the coordinates,
about w_dim for a typical latent), compression (log-compress coordinates beyond tau, map back),
truncation, sampling and the check that a prior was made for the generator it is used with.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import GeneratorMismatchError
from pipeline.models.fingerprint import fingerprint
from pipeline.models.stylegan2 import Generator


def mean_over_layers(per_vector: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
    """[N, num_ws] -> [N] for W+ latents (ws [N, num_ws, D]); [N] stays as it is."""
    return per_vector.mean(dim=-1) if ws.ndim == 3 else per_vector


CHUNK_ELEMENTS = 1 << 20  # latent values a prior maps at once in `in_chunks` (its float64 temporaries: ~50 MB)


def in_chunks(fn, ws: torch.Tensor) -> torch.Tensor:
    """fn (a prior's whiten, nll, ...) over rows of ws [N, ...] a chunk at a time, concatenated: the same
    values, with the prior's float64 temporaries bounded whatever N is."""
    rows = max(1, CHUNK_ELEMENTS // max(1, ws[0].numel() if len(ws) else 1))
    if len(ws) <= rows:
        return fn(ws)
    return torch.cat([fn(chunk) for chunk in ws.split(rows)])


def log_compress(c: torch.Tensor, tau: float) -> torch.Tensor:
    """Identity inside [-tau, tau]; beyond, sign(c) * (tau + log(1 + |c| - tau)): continuous, slope 1 at tau."""
    magnitude = c.abs()
    return torch.where(magnitude <= tau, c, c.sign() * (tau + torch.log1p((magnitude - tau).clamp_min(0))))


class LatentPrior(nn.Module):
    """Base of the priors. Subclasses set `generator_fingerprint`, `w_avg` and `w_dim` and implement
    `to_latent`, `from_latent` and `log_prob`; `fit_command` names the command that makes one."""

    generator_fingerprint: str | None
    w_avg: torch.Tensor
    fit_command = "latentmill fit-prior"
    what = "prior"

    @property
    def w_dim(self) -> int:
        raise NotImplementedError

    def to_latent(self, ws: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def from_latent(self, c: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, ws: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def whiten(self, ws: torch.Tensor) -> torch.Tensor:
        """ws [..., D] -> the prior's standard-normal coordinates [..., D] (the name stages use)."""
        return self.to_latent(ws)

    def unwhiten(self, c: torch.Tensor) -> torch.Tensor:
        return self.from_latent(c)

    def nll(self, ws: torch.Tensor) -> torch.Tensor:
        """Mean over layers of the squared norm of the coordinates: ws [N, num_ws, D] or [N, D] -> [N].

        Constant terms of the log-density are dropped; for samples of the prior the expected value
        is D (w_dim). Differentiable, for use as a loss.
        """
        return mean_over_layers(self.to_latent(ws).square().sum(dim=-1), ws)

    def compress(self, ws: torch.Tensor, tau: float) -> torch.Tensor:
        """Log-compress coordinates beyond tau (artifact removal), map back; identity for |c| <= tau."""
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        return self.from_latent(log_compress(self.to_latent(ws), tau))

    def truncate(self, ws: torch.Tensor, psi: float) -> torch.Tensor:
        """The truncation baseline: w_avg + psi * (w - w_avg)."""
        w_avg = self.w_avg.to(ws.dtype)
        return w_avg + psi * (ws - w_avg)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n latents w [n, D] drawn from the prior."""
        c = torch.randn(n, self.w_dim, generator=generator, device=self.w_avg.device)
        return self.from_latent(c).float()

    def check_generator(self, G: Generator) -> None:
        if self.generator_fingerprint and fingerprint(G) != self.generator_fingerprint:
            raise GeneratorMismatchError(
                f"this {self.what} was fitted for generator {self.generator_fingerprint}, not {fingerprint(G)}; "
                f"fit one for this generator with `{self.fit_command}`")
