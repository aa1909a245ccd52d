"""Settings of `latentmill export`, declared once (torch-free: the command line builds --help from them)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from pipeline.settings import ProgressSettings, check_settings, setting

FORMATS = ("lance",)
EXPORTED_COLUMNS = ("w_refined", "w_encoded", "w_compressed", "z")
INDEX_MIN_ROWS = 4096  # the vector index is built once the export has this many rows (IVF_PQ must train)


@dataclass(kw_only=True)
class ExportConfig(ProgressSettings):
    store: str = setting(MISSING, "The latent store to export.", positional=True)
    format: str = setting("lance", "lance: a Lance dataset, the latent a fixed-size float32 vector with an IVF_PQ "
                                   "index (read by Lance, DuckDB, Polars, Ray Data).", choices=FORMATS)
    output: str = setting(MISSING, "The dataset's URI (created; a rerun appends only the store shards it lacks).")
    column: str = setting("w_refined", "The latent exported and indexed.", choices=EXPORTED_COLUMNS)
    exclude_flagged: bool = setting(False, "Leave out the rows `latentmill curate` flagged.")

    def validate(self) -> None:
        check_settings(self)
