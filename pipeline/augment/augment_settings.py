"""Settings of `latentmill augment`, declared once (torch-free: the command line builds --help from them)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from pipeline.settings import (DeviceSettings, LatentColumnSettings, ProgressSettings, RaySettings, RunnerSettings,
                               check_settings, setting)


@dataclass(kw_only=True)
class AugmentConfig(LatentColumnSettings, DeviceSettings, RaySettings, RunnerSettings, ProgressSettings):
    store: str = setting(MISSING, "The latent store whose ok rows are augmented.", positional=True)
    output: str = setting(MISSING, "Where to write samples.parquet, images/augment-*.tar and summary.json (any URI); "
                                   "rerunning resumes, and after the store grew adds only its new rows' variants.")
    edits: str = setting(MISSING, "Comma list of edits: jitter:SIGMA (Gaussian noise of std SIGMA in the prior's "
                                  "whitened space), mix:A-B (layers A..B of W+ from another ok row), "
                                  "attribute:LAYER/CH[+LAYER/CH...]:ALPHA (StyleSpace channels moved by ALPHA of "
                                  "their std; variant v of K moves them ALPHA*(v+1)/K), compose:PART (half, "
                                  "quadrants or blob of another row's input pasted on the source, through E and G).",
                         metavar="EDIT[,EDIT...]")
    variants: int = setting(4, "Variants of each edit for every ok row (K).", minimum=1)
    exclude_flagged: bool = setting(False, "Leave out the rows `latentmill curate` flagged: they are neither sources "
                                           "nor donors.")
    min_identity: float | None = setting(None, "Quality filter: reject variants whose identity cosine to their source "
                                               "is lower (needs the store's identity model).", minimum=-1, maximum=1)
    nll_percentile: float = setting(95.0, "Quality filter: reject variants whose prior NLL exceeds this percentile of "
                                          "the store's rows (compose: of their w_encoded).", above=0, maximum=100)
    seed: int = setting(0, "Seed of every variant: variant v of edit e of row r draws from its own stream (seed, r, "
                           "e, v), so the samples do not depend on batching or placement.")
    batch_size: int = setting(16, "Variants rendered per batch.", minimum=1)
    shard_size: int = setting(256, "Source rows per unit of work: each unit is run once, by one worker, and writes "
                                   "one tar shard (a store shard holds one or more units).", minimum=1)
    concurrency: int = setting(1, "Actors (model replicas) working in parallel.", minimum=1)
    num_gpus: float = setting(0.0, "GPUs per actor (0 = CPU).", minimum=0)
    cpus_per_actor: float = setting(1.0, "CPUs reserved per actor.", above=0)
    placement_timeout: float = setting(600.0, "Seconds the run may go without any actor ready before it stops.",
                                       above=0)
    max_retries: int = setting(2, "Retries of a failed unit before it is recorded as failed.", minimum=0)

    def validate(self) -> None:
        check_settings(self)
        from pipeline.augment.edits import parse_edits

        parse_edits(self.edits)
