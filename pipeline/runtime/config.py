"""Settings of `latentmill invert`, as plain data: validated before any work, recorded in every output."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.data.align import ALIGN_MODES
from pipeline.data.decode import MIN_SIDE, RESIZE_POLICIES
from pipeline.data.sources import DUPLICATE_ID_POLICIES, INPUT_FORMATS
from pipeline.losses.perceptual import PERCEPTUAL_KINDS
from pipeline.stages.chain import STAGES, InversionSettings
from pipeline.store.schema import LATENT_DTYPES


@dataclass
class InvertConfig:
    input: str
    output: str
    generator: str
    encoder: str | None = None
    prior: str | None = None
    stages: tuple[str, ...] = STAGES
    # refinement
    steps: int = 200
    lr: float = 0.1
    pixel_weight: float = 1.0
    perceptual_weight: float = 1.0
    prior_weight: float = 0.01
    latent_space: str = "w+"
    precision: str = "fp32"
    early_stop_patience: int = 0
    compile: bool = False
    perceptual: str = "lpips"
    lpips_weights: str | None = None
    # compression and identity
    tau: float = 3.0
    facenet_weights: str | None = None
    identity_model: str = "facenet"  # or the URI of a latentmill EmbeddingNet bundle (e.g. the demo's)
    # input
    input_format: str = "auto"
    shard_size: int = 1000
    image_column: str = "image"
    id_column: str | None = None
    on_duplicate_id: str = "suffix"  # 'suffix': the n-th repeat of an id becomes 'id~n'; 'error': refuse the input
    resize_policy: str = "center-crop"
    align: str = "none"  # 'faces': crop the most confident MTCNN face first
    max_pixels: int = 64_000_000
    # output
    latent_dtype: str = "float32"
    overwrite: bool = False
    # execution
    batch_size: int = 16
    concurrency: int = 1
    num_gpus: float = 0.0  # per actor; 0 = CPU
    cpus_per_actor: float = 1.0
    decode_threads: int = 4
    max_retries: int = 2  # per shard, after the first attempt
    address: str | None = None
    progress: bool = True
    wait: bool = False  # wait for another run holding the store instead of exiting
    # Testing aid: a worker process exits abruptly the first time it starts one of these shards,
    # to exercise actor replacement and retries on a real Ray (see tests/test_invert_job.py).
    crash_once_on_shards: list[str] = field(default_factory=list)

    def settings(self) -> InversionSettings:
        return InversionSettings(stages=tuple(self.stages), steps=self.steps, lr=self.lr, pixel_weight=self.pixel_weight,
                                 perceptual_weight=self.perceptual_weight, prior_weight=self.prior_weight,
                                 latent_space=self.latent_space, tau=self.tau, precision=self.precision,
                                 early_stop_patience=self.early_stop_patience, compile=self.compile)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "crash_once_on_shards"}

    def validate(self) -> None:
        """Fail before any work, naming the setting."""
        unknown = set(self.stages) - set(STAGES)
        if unknown or not self.stages:
            raise ValueError(f"--stages: unknown {sorted(unknown)}; choose from {','.join(STAGES)}")
        checks = [
            (self.input_format in INPUT_FORMATS, f"--input-format must be one of {INPUT_FORMATS}"),
            (self.resize_policy in RESIZE_POLICIES, f"--resize-policy must be one of {RESIZE_POLICIES}"),
            (self.align in ALIGN_MODES, f"--align must be one of {ALIGN_MODES}"),
            (self.perceptual in PERCEPTUAL_KINDS, f"--perceptual must be one of {PERCEPTUAL_KINDS}"),
            (self.latent_dtype in LATENT_DTYPES, f"--latent-dtype must be one of {sorted(LATENT_DTYPES)}"),
            (self.steps >= 1, "--steps must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.shard_size >= 1, "--shard-size must be at least 1"),
            (self.concurrency >= 1, "--concurrency must be at least 1"),
            (self.tau > 0, "--tau must be positive"),
            (self.max_retries >= 0, "--max-retries must be 0 or more"),
            (self.decode_threads >= 1, "--decode-threads must be at least 1"),
            (self.max_pixels >= MIN_SIDE**2, f"--max-pixels must be at least {MIN_SIDE**2} (images have sides of "
                                              f"{MIN_SIDE} pixels or more)"),
            (self.cpus_per_actor > 0, "--cpus-per-actor must be positive"),
            (self.num_gpus >= 0, "--num-gpus must be 0 or more"),
            (self.lr > 0, "--lr must be positive"),
            (self.on_duplicate_id in DUPLICATE_ID_POLICIES, f"--on-duplicate-id must be one of {DUPLICATE_ID_POLICIES}"),
            ("compress" not in self.stages or self.prior is not None, "--stages compress needs --prior"),
            ("encode" not in self.stages or self.encoder is not None or "refine" in self.stages,
             "--stages encode needs --encoder (or add refine, which then starts from w_avg)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
