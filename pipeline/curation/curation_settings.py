"""Settings of `latentmill curate`, declared once (torch-free: the command line builds --help from them)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from pipeline.settings import DeviceSettings, LatentColumnSettings, ProgressSettings, check_settings, setting

DUPLICATE_FEATURES = ("latent", "identity")
SEARCHES = ("auto", "exact", "approximate")


@dataclass(kw_only=True)
class CurateConfig(LatentColumnSettings, DeviceSettings, ProgressSettings):
    store: str = setting(MISSING, "The latent store to curate.", positional=True)
    outlier_percentile: float = setting(99.0, "Rows whose prior NLL is above this percentile of the store are "
                                              "outliers.", above=0, maximum=100)
    duplicate_threshold: float = setting(0.95, "Cosine at or above which two rows are near-duplicates.",
                                        minimum=-1, maximum=1)
    duplicates_by: str = setting("latent", "latent: cosine of latents whitened in the prior's space; identity: cosine "
                                           "of the inputs' identity embeddings (re-reads the inputs).",
                                 choices=DUPLICATE_FEATURES)
    mse_percentile: float = setting(95.0, "Rows whose MSE is above this percentile are bad reconstructions.",
                                          above=0, maximum=100)
    perceptual_percentile: float = setting(95.0, "Rows whose perceptual distance is above this percentile are bad "
                                                 "reconstructions.", above=0, maximum=100)
    min_identity: float | None = setting(None, "Rows whose identity cosine is below this are bad reconstructions "
                                               "(default: not tested).", minimum=-1, maximum=1)
    search: str = setting("auto", "Near-duplicate search: exact (every pair, blockwise: small stores, and the "
                                  "reference), approximate (a faiss index over 128-d projections, pairs near the "
                                  "threshold decided exactly: near-linear, for large stores), or auto (exact while it "
                                  "takes minutes and fits in memory).", choices=SEARCHES)
    against: tuple[str, ...] = setting((), "Another store (repeat for more): rows of STORE with a near-duplicate "
                                           "there (by --duplicates-by, at --duplicate-threshold) are flagged "
                                           "cross_duplicate, naming it: train/test leakage, the same person in "
                                           "both.", repeatable=True, metavar="OTHER_STORE")
    block_size: int | None = setting(None, "Rows per block of the exact duplicate search; memory is block x rows "
                                           "similarities (default: about 2^28 of them, 1 GiB: 4,096 rows up to 65k "
                                           "rows, 256 at 1M).", minimum=1)

    def validate(self) -> None:
        check_settings(self)
