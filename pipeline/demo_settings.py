"""The settings of `latentmill demo` (torch-free: the command line builds --help from them)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.settings import ProgressSettings, RaySettings, check_settings, setting


@dataclass(kw_only=True)
class DemoConfig(RaySettings, ProgressSettings):
    output: str = setting("out/demo", "Directory for the demo's latent store (OUTPUT/store) and report "
                                      "(OUTPUT/store/report.html); rerunning resumes.")
    limit: int | None = setting(None, "Only the first N images of the bundled sample (quick runs).", minimum=1)
    steps: int = setting(100, "Refinement steps per image.", minimum=1)
    batch_size: int = setting(48, "Images per batch.", minimum=1)
    num_gpus: float = setting(0.0, "GPUs for the inversion actor (0 = CPU: then one actor per core, up to 2, one per "
                                   "sample shard).", minimum=0)

    def __post_init__(self) -> None:
        check_settings(self)
