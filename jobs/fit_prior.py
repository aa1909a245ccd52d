"""Fit the gaussianized prior of a generator: `latentmill fit-prior`.

One process on one device: 1e6 mapping-network passes take seconds on a GPU and about a minute
per 1e5 samples at 512-d on a 2-core CPU; the streaming float64 moments need no Ray.
"""

from __future__ import annotations

import time

from pipeline.devices import resolve_device
from pipeline.priors.gaussian import GaussianizedPrior
from pipeline.priors.prior_cache import fit_prior_file
from pipeline.priors.prior_settings import FitPriorConfig

__all__ = ["FitPriorConfig", "run"]


def run(cfg: FitPriorConfig) -> GaussianizedPrior:
    start = time.perf_counter()
    prior = fit_prior_file(cfg.generator, cfg.output, num_samples=cfg.num_samples, batch_size=cfg.batch_size,
                           device=resolve_device(cfg.device), seed=cfg.seed)
    print(f"fitted on {cfg.num_samples:,} samples in {time.perf_counter() - start:.1f}s; largest sigma "
          f"{prior.sigma.max().item():.3f}, smallest {prior.sigma.min().item():.3g}; wrote {cfg.output}")
    return prior
