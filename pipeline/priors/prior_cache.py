"""Fitting gaussianized priors: to a file (`latentmill fit-prior`), or once per generator, cached by its
fingerprint, for a run that needs one but was not given one.

`--stages compress` (and the prior NLL columns) need the gaussianized prior of the generator. A
newcomer rarely has one; fitting takes seconds on a GPU and about a minute on a CPU at 1e5 samples,
so latentmill fits it on the fly, says so, and keeps it under $LATENTMILL_CACHE/priors/ named by the
generator's fingerprint: every later run with the same weights, wherever the file lives, reuses it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.models.checkpoints import load_generator
from pipeline.models.fingerprint import fingerprint
from pipeline.models.stylegan2 import Generator
from pipeline.priors.gaussian import GaussianizedPrior
from pipeline.uris import default_cache_dir

ON_THE_FLY_SAMPLES = 100_000  # the low end of the paper's 1e5 to 1e6; `latentmill fit-prior` does more


@dataclass
class CachedPrior:
    path: Path
    prior: GaussianizedPrior
    fitted_seconds: float | None  # None when it was already in the cache

    def describe(self) -> str:
        if self.fitted_seconds is None:
            return f"no --prior given: using the prior cached for this generator, {self.path}"
        return (f"no --prior given: fitted the generator's gaussianized prior on {self.prior.num_samples:,} samples "
                f"in {self.fitted_seconds:.0f} s and cached it as {self.path} (reused next time; "
                f"`latentmill fit-prior` fits one on more samples)")


def cached_prior_path(G: Generator, cache_dir: Path | None = None) -> Path:
    digest = fingerprint(G).split(":")[-1][:32]
    return (cache_dir or default_cache_dir()) / "priors" / f"{digest}.safetensors"


def cached_prior(G: Generator, *, cache_dir: Path | None = None, num_samples: int | None = None,
                 progress: bool = True) -> CachedPrior:
    """The generator's prior from the cache, or fitted now (on ON_THE_FLY_SAMPLES draws) and cached."""
    num_samples = num_samples or ON_THE_FLY_SAMPLES
    path = cached_prior_path(G, cache_dir)
    if path.is_file():
        return CachedPrior(path, GaussianizedPrior.load(str(path), generator=G, setting="the cached prior"), None)
    start = time.perf_counter()
    prior = GaussianizedPrior.fit(G, num_samples=num_samples, batch_size=min(num_samples, 10_000), progress=progress)
    prior.save(str(path))
    return CachedPrior(path, prior, time.perf_counter() - start)


def fit_prior_file(generator_uri: str, output_uri: str, *, num_samples: int = 1_000_000, batch_size: int = 10_000,
                   device: str | torch.device = "cpu", seed: int = 0) -> GaussianizedPrior:
    """Load a generator, fit its prior and save it (what `latentmill fit-prior` runs)."""
    G = load_generator(generator_uri, device=device)
    prior = GaussianizedPrior.fit(G, num_samples=num_samples, batch_size=batch_size, device=device, seed=seed)
    prior.save(output_uri)
    return prior

