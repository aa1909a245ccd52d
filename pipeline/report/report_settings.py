"""The settings of `latentmill report` (torch-free: the command line builds --help from them)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from pipeline.settings import DeviceSettings, ProgressSettings, StoreGeneratorSettings, check_settings, setting


@dataclass(kw_only=True)
class ReportConfig(StoreGeneratorSettings, DeviceSettings, ProgressSettings):
    store: str = setting(MISSING, "The latent store to report on.", positional=True)
    sheet_size: int = setting(12, "Images per contact sheet.", minimum=1)
    curve_images: int = setting(48, "Images used for the compression-vs-truncation curve.", minimum=1)
    in_domain: int = setting(4, "The generator's own samples inverted with the store's recipe, to tell model capacity "
                                "from pipeline faults (0: skip).", minimum=0)
    self_contained: bool = setting(False, "Embed every picture in report.html (one file to mail or attach) instead of "
                                          "writing them to STORE/report/.")
    exclude_flagged: bool = setting(False, "Leave the rows `latentmill curate` flagged out of every count, sheet and "
                                           "chart.")

    def __post_init__(self) -> None:
        check_settings(self)
