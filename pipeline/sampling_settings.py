"""The settings of `latentmill generate` (torch-free: the command line builds --help from them)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from pipeline.settings import DeviceSettings, check_settings, setting

NOISE_MODES = ("const", "random", "none")


@dataclass(kw_only=True)
class GenerateConfig(DeviceSettings):
    generator: str = setting(MISSING, "The generator checkpoint (any URI).", positional=True)
    seeds: str = setting("0-15", "Seeds, e.g. '0-15' or '1,5,9'. Seed s draws z from numpy RandomState(s), as NVlabs' "
                                 "gen_images.py does, so images match the official code.")
    truncation_psi: float = setting(1.0, "Truncation towards w_avg (1 = none).")
    noise_mode: str = setting("const", "Per-pixel noise: the stored constant maps, fresh random maps, or none.",
                              choices=NOISE_MODES)
    class_idx: int | None = setting(None, "Class label for conditional generators.", minimum=0)
    which: str = setting("G_ema", "Network in the checkpoint: G_ema or G.", choices=("G_ema", "G"))
    output: str = setting("samples.png", "Where to write the image grid.", old_spellings=("--out",))
    nrow: int = setting(8, "Images per row of the grid.", minimum=1)

    def __post_init__(self) -> None:
        check_settings(self)
