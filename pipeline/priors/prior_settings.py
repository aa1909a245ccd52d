"""Settings of `latentmill fit-prior`, declared once (torch-free: the command line builds --help from them)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from pipeline.models.model_settings import GeneratorSettings
from pipeline.settings import DeviceSettings, setting


@dataclass(kw_only=True)
class FitPriorConfig(GeneratorSettings, DeviceSettings):
    output: str = setting(MISSING, "Where to write the prior (.safetensors, any fsspec URI).")
    num_samples: int = setting(1_000_000, "Mapped z draws for the mean and covariance (the paper uses 1e5 to 1e6).")
    batch_size: int = setting(10_000, "z draws per mapping-network pass.")
    seed: int = setting(0, "Seed of the z draws (the fit is deterministic).")
