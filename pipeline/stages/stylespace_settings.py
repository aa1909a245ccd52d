"""The settings of `latentmill channels` (torch-free: the command line builds --help from them)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from pipeline.settings import LatentColumnSettings, StoreGeneratorSettings, check_settings, setting


@dataclass(kw_only=True)
class ChannelsConfig(StoreGeneratorSettings, LatentColumnSettings):
    store: str = setting(MISSING, "The latent store whose ok rows are the population.", positional=True)
    positives: str = setting(MISSING, "Image ids showing the attribute (10-30 suffice): comma-separated, or @FILE with "
                                      "one id per line.")
    top_k: int = setting(10, "How many channels to list.", minimum=1)
    layers: str | None = setting(None, "Only rank these StyleSpace layers (comma-separated, e.g. b16.conv0).")
    include_torgb: bool = setting(False, "Also rank toRGB style channels (off, as in the paper).")
    json: bool = setting(False, "Print JSON instead of a table.")

    def __post_init__(self) -> None:
        check_settings(self)
