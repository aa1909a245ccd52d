"""Fit the gaussianized prior of a generator: `latentmill fit-prior` / `python -m jobs.fit_prior`.

One process on one device: 1e6 mapping-network passes take seconds on a GPU and about a minute
per 1e5 samples at 512-d on a 2-core CPU; the streaming float64 moments need no Ray.
"""

from __future__ import annotations

import sys
import time

import torch

from pipeline.priors.gaussian import GaussianizedPrior, fit_prior_file


def run(generator: str, output: str, *, num_samples: int = 1_000_000, batch_size: int = 10_000,
        device: str | torch.device = "cpu", seed: int = 0) -> GaussianizedPrior:
    start = time.perf_counter()
    prior = fit_prior_file(generator, output, num_samples=num_samples, batch_size=batch_size, device=device,
                           seed=seed)
    print(f"fitted on {num_samples:,} samples in {time.perf_counter() - start:.1f}s; largest sigma "
          f"{prior.sigma.max().item():.3f}, smallest {prior.sigma.min().item():.3g}; wrote {output}")
    return prior


if __name__ == "__main__":
    from pipeline.cli import main

    main(["fit-prior", *sys.argv[1:]])
