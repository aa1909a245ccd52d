"""Train an identity embedding: `latentmill train-identity`.

For data FaceNet does not cover (the demo's emoji): a small EmbeddingNet learns, contrastively, to
recognize each training image under reconstruction-like degradations (pipeline/training/
identity_training.py). Runs on Ray Train like the other training jobs. Output directory:
  identity.safetensors         the latest bundle ({'identity': EmbeddingNet}); use with --identity-model
  checkpoints/step-XXXXXXXX/   model.safetensors, opt.pt, state.json: the resume points
  train_log.csv, eval_log.csv  InfoNCE loss per step; retrieval top-1 and cosines per checkpoint
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.training.identity_task import IdentityTask
from pipeline.training.settings import IdentityTrainingConfig

__all__ = ["IdentityTrainingConfig", "run"]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from pipeline.runtime.ray_train import training_sink, worker_setup
    from pipeline.training.loop import run_training

    cfg, rank, _, device = worker_setup(config, IdentityTrainingConfig)
    run_training(IdentityTask(cfg, device), cfg, rank=rank, device=device, resume_from=config.get("_resume_from"),
                 info={"data": cfg.data, "config": config}, sink=training_sink())


def run(config: IdentityTrainingConfig, *, address: str | None = None) -> Path:
    """Train (or resume) into config.output; returns the latest identity bundle. `address` overrides
    config.address."""
    from pipeline.runtime.ray_train import fit_resumable

    output = fit_resumable(train_loop_per_worker, config, name="train-identity", address=address or config.address)
    return output / "identity.safetensors"
