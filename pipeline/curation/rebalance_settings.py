"""Settings of `latentmill rebalance`, declared once (torch-free: the command line builds --help from them)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from pipeline.settings import DeviceSettings, LatentColumnSettings, ProgressSettings, check_settings, setting

METHODS = ("compose", "sample")


@dataclass(kw_only=True)
class RebalanceConfig(LatentColumnSettings, DeviceSettings, ProgressSettings):
    store: str = setting(MISSING, "The latent store whose groups are rebalanced.", positional=True)
    output: str = setting(MISSING, "Where to write images/*.tar, samples.parquet, summary.json (any URI).")
    groups: str = setting(MISSING, "How rows form groups: labels:COLUMN:URI (CSV/Parquet with image_id and COLUMN), "
                                   "meta:KEY (a key of the inputs' JSON sidecars), "
                                   "attribute:LAYER/CH[,LAYER/CH]:THRESHOLD (StyleSpace score, channels from "
                                   "`latentmill channels`), or kmeans:K (clusters of whitened latents).")
    target: str = setting("uniform", "Target distribution: 'uniform' or shares such as 'face=0.5,other=0.5'. No row "
                                     "is removed; groups below their share get new samples.")
    method: str = setting("compose", "compose: paste a part of a member onto another image, then E and G; sample: "
                                     "draw near the group's latents in the whitened prior space.", choices=METHODS)
    parts: str = setting("half,quadrants,blob", "Kinds of member parts for compose (half, quadrants, blob).")
    nll_percentile: float = setting(95.0, "Quality filter: reject candidates whose prior NLL exceeds this percentile "
                                          "of the store's rows.", above=0, maximum=100)
    min_identity: float | None = setting(0.5, "Quality filter: reject candidates whose identity cosine to their "
                                              "source is lower (needs the store's identity model).", minimum=-1, maximum=1)
    temperature: float = setting(0.7, "sample: spread around the group's mean.", above=0)
    max_attempts: float = setting(4.0, "Candidates per needed sample before a group is given up (its shortfall is "
                                       "reported).", above=0)
    max_new: int | None = setting(None, "Cap on new samples in total (shares scaled down).", minimum=1)
    background_pool: int = setting(512, "Store rows whose inputs serve as backgrounds for compose.", minimum=1)
    batch_size: int = setting(32, "Candidates per batch.", minimum=1)
    shard_size: int = setting(1000, "Samples per output tar shard.", minimum=1)
    seed: int = setting(0, "Seed of picks, masks and samples.")
    exclude_flagged: bool = setting(False, "Leave out the rows `latentmill curate` flagged (near-duplicates, prior "
                                           "outliers, ...): they join no group and are never a source.")

    def validate(self) -> None:
        check_settings(self)
