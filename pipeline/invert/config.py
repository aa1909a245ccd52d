"""Settings of `latentmill invert`, as plain data: validated before any work, recorded in every output.

InvertConfig is assembled from the settings groups it shares with other commands (input, decoding,
models, the inversion stages, Ray, progress); each field is declared once, in its group, and the
command line is generated from them (latentmill/options.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any

from pipeline.data.decode import DecodeSettings, input_bytes_for
from pipeline.data.planning import CHANGED_INPUT_POLICIES, InputSettings
from pipeline.data.sources import DEFAULT_PREFETCH, DEFAULT_READ_TIMEOUT_S, MAX_READ_TIMEOUT_S
from pipeline.models.model_settings import GeneratorSettings, IdentitySettings, PerceptualSettings
from pipeline.settings import ProgressSettings, RaySettings, RunnerSettings, setting, setting_problems
from pipeline.stages.inversion_settings import InversionSettings
from pipeline.store.schema import LATENT_DTYPES




@dataclass(frozen=True)
class ModelNeeds:
    """The models a run's stages need beside the generator, with their URIs: what preflight checks and
    what every actor loads (load_model_set's keywords), derived from the settings in one place."""

    encoder: str | None
    prior: str | None
    perceptual: str  # "none" unless the refine stage runs
    lpips_weights: str | None
    identity_model: str | None  # None unless the identity stage runs
    facenet_weights: str | None


@dataclass(kw_only=True)
class InvertConfig(InputSettings, DecodeSettings, GeneratorSettings, PerceptualSettings, IdentitySettings,
                   InversionSettings, RaySettings, RunnerSettings, ProgressSettings):
    output: str = setting(MISSING, "Latent store URI (created); rerunning skips finished shards.")
    encoder: str | None = setting(None, "Encoder bundle URI (from train-encoder); without it, refinement starts "
                                        "from w_avg.")
    prior: str | None = setting(None, "Prior URI: a gaussianized prior (fit-prior) or a flow (fit-flow, which adds "
                                      "the z column): prior term of refinement, compression, NLLs.")
    latent_dtype: str = setting("float32", "Storage type of the latent columns.", choices=tuple(LATENT_DTYPES))
    overwrite: bool = setting(False, "Redo every row of --output, with this run's settings (the only way to change "
                                     "the recipe of an existing store).")
    batch_size: int | str = setting("auto", "Images per batch on each actor; auto: the largest batch whose "
                                            "refinement fits the actor's memory with a margin (GPU: free memory "
                                            "x --num-gpus; CPU: available memory x its share of the cores), at "
                                            "most 64 on a GPU and 16 on a CPU.", metavar="N|auto")
    concurrency: int | str = setting(1, "Actors (model replicas) working in parallel, at most; auto: as many as the "
                                        "cluster's live nodes hold (--cpus-per-actor, --num-gpus), followed as nodes "
                                        "join and leave.", metavar="N|auto")
    placement_timeout: float = setting(600.0, "Seconds the run may go without any actor ready (none placed yet, all "
                                              "lost with their nodes) before it stops and says what an actor needs.",
                                       above=0)
    num_gpus: float = setting(0.0, "GPUs per actor (0 = CPU; 0.5 packs two per GPU).", minimum=0)
    cpus_per_actor: float = setting(1.0, "CPUs reserved per actor.", above=0)
    decode_threads: int = setting(4, "Decoding threads inside each actor.", minimum=1)
    max_retries: int = setting(2, "Retries of a failed shard before it is recorded as failed in the manifest.",
                          minimum=0)
    wait: bool = setting(False, "If another run is writing --output, wait for it instead of exiting.")
    read_timeout: float = setting(DEFAULT_READ_TIMEOUT_S, "Seconds one input file may take to read before it becomes "
                                                          "an error row (a hung mount, a FIFO); at most a day.",
                                  above=0, maximum=MAX_READ_TIMEOUT_S)
    max_input_bytes: int | None = setting(None, "Larger input files, tar members and Parquet cells are 'too large' "
                                                "error rows, never read into memory; default: 4 bytes per "
                                                "--max-pixels pixel plus 1 MiB.", minimum=1, metavar="BYTES")
    retry_errors: bool = setting(False, "Redo only the error rows whose reason is transient (read timeout, I/O "
                                        "error, a file missing or unreadable at the time), keeping every other row.")
    prefetch: int = setting(DEFAULT_PREFETCH, "Input files each actor reads ahead of decoding, at once.", minimum=1)
    on_changed_input: str = setting("refuse", "When a rerun finds inputs changed since their rows were made (size or "
                                              "modification time): refuse (say which), redo their shards, or keep the "
                                              "rows. New inputs always become new shards.",
                                    choices=CHANGED_INPUT_POLICIES)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_needs(self) -> ModelNeeds:
        """Which models these stages need: the perceptual net only to refine, the identity net only to
        score identity."""
        return ModelNeeds(encoder=self.encoder, prior=self.prior,
                          perceptual=self.perceptual if "refine" in self.stages else "none",
                          lpips_weights=self.lpips_weights,
                          identity_model=self.identity_model if "identity" in self.stages else None,
                          facenet_weights=self.facenet_weights)

    @property
    def input_byte_limit(self) -> int:
        """--max-input-bytes, or what --max-pixels implies: an uncompressed RGBA image of that size."""
        return self.max_input_bytes if self.max_input_bytes is not None else input_bytes_for(self.max_pixels)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every setting's declared default (required settings have none)."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    def validate(self) -> None:
        """Fail before any work, naming the setting (every problem found, one per line)."""
        problems = self.problems()
        if problems:
            raise ValueError("\n".join(problems))

    def problems(self) -> list[str]:
        """Every invalid setting, each as a sentence naming its option."""
        checks = [
            (self.batch_size == "auto" or (isinstance(self.batch_size, int) and self.batch_size >= 1),
             "--batch-size must be auto or at least 1"),
            (self.concurrency == "auto" or (isinstance(self.concurrency, int) and self.concurrency >= 1),
             "--concurrency must be auto or at least 1"),
            (self.shard_size == "auto" or (isinstance(self.shard_size, int) and self.shard_size >= 1),
             "--shard-size must be auto or at least 1"),
            ("encode" not in self.stages or self.encoder is not None or "refine" in self.stages,
             "--stages encode needs --encoder (or add refine, which then starts from w_avg)"),
        ]
        return setting_problems(self) + [message for ok, message in checks if not ok]
