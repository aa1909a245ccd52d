"""Settings of `latentmill fit-prior` and `latentmill fit-flow`, declared once (torch-free: the command line builds --help from them)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from pipeline.models.model_settings import COUPLINGS, GeneratorSettings
from pipeline.settings import DeviceSettings, ProgressSettings, TrainingRunSettings, setting
from pipeline.training.settings import CheckpointSettings


@dataclass(kw_only=True)
class FitPriorConfig(GeneratorSettings, DeviceSettings):
    output: str = setting(MISSING, "Where to write the prior (.safetensors, any fsspec URI).")
    num_samples: int = setting(1_000_000, "Mapped z draws for the mean and covariance (the paper uses 1e5 to 1e6).")
    batch_size: int = setting(10_000, "z draws per mapping-network pass.")
    seed: int = setting(0, "Seed of the z draws (the fit is deterministic).")


@dataclass(kw_only=True)
class FitFlowConfig(GeneratorSettings, CheckpointSettings, TrainingRunSettings, ProgressSettings):
    output: str = setting(MISSING, "Where to write the flow (.safetensors, any fsspec URI). Checkpoints and logs go to "
                                   "--run-directory; rerunning the same command resumes from there.")
    run_directory: str | None = setting(None, "Local directory for checkpoints, config.json and the CSV logs (default: "
                                              "beside a local --output, named after it with '.run').")
    steps: int = setting(2000, "Optimizer steps; each draws --batch-size fresh mapped samples, so the flow sees "
                               "steps x batch size samples (default 1e6).")
    batch_size: int = setting(500, "Mapped samples per step per worker.")
    lr: float = setting(1e-3, "Adam learning rate (cosine decay to 0 over the steps).")
    couplings: int = setting(8, "Coupling layers (LIA uses 8).")
    coupling: str = setting("affine", "Coupling kind: NICE's additive or affine (more expressive per layer).",
                            choices=COUPLINGS)
    hidden: int = setting(0, "Width of each coupling's MLP (0 = 2 x w_dim).")
    hidden_layers: int = setting(2, "Hidden layers of each coupling's MLP (leaky ReLU).")
    init_samples: int = setting(100_000, "Mapped samples of the gaussianized fit the flow starts from.")
    eval_samples: int = setting(10_000, "Held-out mapped samples (their own seed) scored at each checkpoint against "
                                        "the gaussianized prior.")
    checkpoint_every: int = setting(500, "Steps between checkpoints and held-out evaluations.")
