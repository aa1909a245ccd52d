"""The settings of `latentmill reconstruct` (torch-free: the command line builds --help from them)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from pipeline.settings import DeviceSettings, LatentColumnSettings, StoreGeneratorSettings, check_settings, setting


@dataclass(kw_only=True)
class ReconstructConfig(StoreGeneratorSettings, LatentColumnSettings, DeviceSettings):
    store: str = setting(MISSING, "The latent store whose latents are rendered.", positional=True)
    ids: str = setting(MISSING, "Comma-separated image ids, or @FILE with one id per line.")
    output: str = setting(MISSING, "Directory for the PNGs (created).", old_spellings=("--out",))

    def __post_init__(self) -> None:
        check_settings(self)
