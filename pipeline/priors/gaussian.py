"""The gaussianized latent prior of Wulff & Torralba, and PCA artifact compression.

The mapping network ends in leaky ReLU (slope 0.2, gain sqrt(2)), so W is skewed. Undoing that
activation elementwise, v = lrelu_5(w / sqrt(2)), gives a space V in which mapped samples are close
to Gaussian. One Gaussian N(mu, Sigma), fitted on mapped samples, serves every layer of W+:
- its squared Mahalanobis norm is the prior term of refinement (about w_dim per layer for typical
  latents, since it is chi-square distributed with w_dim degrees of freedom);
- its PCA (Sigma = U diag(sigma^2) U^T) gives whitened coordinates c = U^T (v - mu) / sigma, in
  which components beyond tau are log-compressed to remove artifacts (methods.md, section 2).
Shapes: ws [..., w_dim] (typically [N, num_ws, w_dim]); every function maps the last axis.
"""

from __future__ import annotations

import math

import safetensors.torch
import torch
import torch.nn.functional as F
from pipeline.progress import progress_bar

from pipeline.errors import CheckpointError
from pipeline.models.bundle import safetensors_metadata
from pipeline.models.fingerprint import fingerprint
from pipeline.models.stylegan2 import Generator
from pipeline.priors.latent_prior import LatentPrior, mean_over_layers
from pipeline.sampling import mapped_samples
from pipeline.uris import read_bytes, write_bytes

PRIOR_FORMAT = "latentmill-prior/1"
_GAIN = math.sqrt(2)  # the mapping's output gain; V is taken before it (methods.md: **ours**)
_SLOPE = 0.2


def gaussianize(ws: torch.Tensor) -> torch.Tensor:
    """W -> V: undo the last leaky ReLU (and its gain), elementwise."""
    return F.leaky_relu(ws / _GAIN, 1 / _SLOPE)


def degaussianize(vs: torch.Tensor) -> torch.Tensor:
    """V -> W: reapply the leaky ReLU and its gain; exact inverse of `gaussianize`."""
    return F.leaky_relu(vs, _SLOPE) * _GAIN


def gaussianize_log_det(ws: torch.Tensor) -> torch.Tensor:
    """log|det dv/dw| of `gaussianize` at ws [..., D] -> [...]: each coordinate contributes
    log(1/sqrt 2) where w >= 0 and log(5/sqrt 2) where w < 0."""
    negative = (ws < 0).sum(dim=-1).to(torch.float64)
    return -0.5 * math.log(2) * ws.shape[-1] + math.log(1 / _SLOPE) * negative


class _MomentAccumulator:
    """Streaming mean and covariance in float64, shifted by the first batch's mean for accuracy."""

    def __init__(self) -> None:
        self.count, self.shift, self.sum, self.outer = 0, None, None, None

    def add(self, v: torch.Tensor) -> None:
        v = v.detach().double()
        if self.shift is None:
            self.shift = v.mean(dim=0)
            self.sum = torch.zeros_like(self.shift)
            self.outer = torch.zeros(v.shape[1], v.shape[1], dtype=torch.float64, device=v.device)
        d = v - self.shift
        self.count += v.shape[0]
        self.sum += d.sum(dim=0)
        self.outer += d.T @ d

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.count < 2:
            raise ValueError("fitting a prior needs at least two latent vectors")
        mean_shift = self.sum / self.count
        cov = (self.outer - self.count * torch.outer(mean_shift, mean_shift)) / (self.count - 1)
        return self.shift + mean_shift, (cov + cov.T) / 2


class GaussianizedPrior(LatentPrior):
    """N(mu, Sigma) over gaussianized latents, with its PCA; made for one generator (by fingerprint)."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, w_avg: torch.Tensor, *,
                 generator_fingerprint: str | None = None, num_samples: int = 0,
                 eps: float = 1e-6) -> None:  # eigenvalue floor, relative to the mean variance
        super().__init__()
        cov = cov.double()
        eigvals, eigvecs = torch.linalg.eigh(cov)
        eigvals = eigvals.clamp_min(eps * eigvals.mean().item())
        self.register_buffer("mean", mean.double())  # [D]
        self.register_buffer("cov", cov)  # [D, D]
        self.register_buffer("components", eigvecs)  # U [D, D], columns by ascending variance
        self.register_buffer("sigma", eigvals.sqrt())  # [D]
        self.register_buffer("w_avg", w_avg.double())  # the generator's w_avg, for truncation
        self.generator_fingerprint = generator_fingerprint
        self.num_samples = num_samples

    @property
    def w_dim(self) -> int:
        return self.mean.shape[0]

    # ---- fitting ---------------------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def fit(cls, G: Generator, num_samples: int = 1_000_000, batch_size: int = 10_000,
            device: str | torch.device | None = None, seed: int = 0, progress: bool = True) -> GaussianizedPrior:
        """Fit on `num_samples` mapped z draws (unconditional, or uniform random labels)."""
        device = torch.device(device) if device is not None else G.w_avg.device
        G = G.to(device)
        rng = torch.Generator(device=device).manual_seed(seed)
        acc = _MomentAccumulator()
        with progress_bar(total=num_samples, desc="fit prior", unit="w", enabled=progress) as bar:
            done = 0
            while done < num_samples:
                n = min(batch_size, num_samples - done)
                acc.add(gaussianize(mapped_samples(G, n, rng)))
                done += n
                bar.update(n)
        mean, cov = acc.moments()
        return cls(mean, cov, G.w_avg.detach(), generator_fingerprint=fingerprint(G), num_samples=num_samples)

    @classmethod
    @torch.no_grad()
    def fit_from_ws(cls, ws: torch.Tensor, *, generator_fingerprint: str | None = None,
                    w_avg: torch.Tensor | None = None) -> GaussianizedPrior:
        """Fit on latents from elsewhere: ws [N, w_dim] or [N, num_ws, w_dim] (every layer is a sample)."""
        flat = ws.reshape(-1, ws.shape[-1])
        acc = _MomentAccumulator()
        acc.add(gaussianize(flat))
        mean, cov = acc.moments()
        return cls(mean, cov, flat.double().mean(0) if w_avg is None else w_avg,
                   generator_fingerprint=generator_fingerprint, num_samples=flat.shape[0])

    # ---- coordinates -----------------------------------------------------------------------
    @staticmethod
    def gaussianize(ws: torch.Tensor) -> torch.Tensor:
        """W -> V (the module-level `gaussianize`, available on the prior as its API names it)."""
        return gaussianize(ws)

    @staticmethod
    def degaussianize(vs: torch.Tensor) -> torch.Tensor:
        """V -> W."""
        return degaussianize(vs)

    def to_latent(self, ws: torch.Tensor) -> torch.Tensor:
        """ws [..., D] -> PCA coordinates in units of sigma, c = U^T (v - mu) / sigma  [..., D]."""
        v = gaussianize(ws.double())
        return ((v - self.mean) @ self.components / self.sigma).to(ws.dtype)

    def from_latent(self, c: torch.Tensor) -> torch.Tensor:
        """Inverse of `to_latent`: c [..., D] -> ws [..., D]."""
        v = (c.double() * self.sigma) @ self.components.T + self.mean
        return degaussianize(v).to(c.dtype)

    def log_prob(self, ws: torch.Tensor) -> torch.Tensor:
        """Mean over layers of log p(w) in nats, in W (the log-Jacobian of W -> V included), so it
        compares directly with FlowPrior.log_prob: ws [N, num_ws, D] or [N, D] -> [N] (float64)."""
        c = self.to_latent(ws.double())
        log_normal = -0.5 * (c.square().sum(dim=-1) + self.w_dim * math.log(2 * math.pi)) - self.sigma.log().sum()
        return mean_over_layers(log_normal + gaussianize_log_det(ws), ws)

    # ---- persistence -----------------------------------------------------------------------
    def save(self, uri: str) -> None:
        tensors = {"mean": self.mean, "cov": self.cov, "w_avg": self.w_avg}
        metadata = {"format": PRIOR_FORMAT, "generator_fingerprint": self.generator_fingerprint or "",
                    "num_samples": str(self.num_samples), "w_dim": str(self.w_dim)}
        write_bytes(uri, safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))

    @classmethod
    def load(cls, uri: str, *, generator: Generator | None = None, setting: str = "--prior",
             data: bytes | None = None) -> GaussianizedPrior:
        """Load a saved prior (`data`: its bytes, when the caller has read them already); with
        `generator`, refuse one fitted for another generator."""
        data = read_bytes(uri, setting=setting) if data is None else data
        try:
            tensors = safetensors.torch.load(data)
            meta = safetensors_metadata(data)
            if meta.get("format") != PRIOR_FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, expected {PRIOR_FORMAT!r}")
            prior = cls(tensors["mean"], tensors["cov"], tensors["w_avg"],
                        generator_fingerprint=meta.get("generator_fingerprint") or None,
                        num_samples=int(meta.get("num_samples", 0)))
        except Exception as exc:  # safetensors, json and key errors all mean "not a prior file"
            raise CheckpointError(f"{setting} {uri}: not a latentmill prior file ({exc})") from None
        if generator is not None:
            prior.check_generator(generator)
        return prior
