"""Train the latent regressor on Ray Train: `latentmill train-encoder`.

The same command trains on a laptop CPU (one worker, embedded Ray) or on a GPU cluster
(`--num-workers N --use-gpu`, with RAY_ADDRESS or `--address`): Ray Train's TorchTrainer runs
`train_loop_per_worker` on each worker, on the skeleton every training job shares
(pipeline/training/loop.py: resume, seeded streams, gradient averaging, rank-0 checkpoints). Output directory:
  encoder.safetensors          the latest encoder bundle (loads with pipeline.models.encoder.load_encoder;
                               with --adversarial-weight it also holds the fine-tuned discriminator, D)
  checkpoints/step-XXXXXXXX/   model.safetensors (E), optimizer.pt, state.json: the resume points
  train_log.csv, eval_log.csv  per-step losses, held-out figures at each checkpoint (+ TensorBoard if installed)
  config.json                  the settings of the run
A rerun with the same --output resumes from the newest checkpoint: same step, same optimizer state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.training.encoder_task import EncoderTask
from pipeline.training.settings import EncoderTrainingConfig

__all__ = ["EncoderTrainingConfig", "run"]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    from pipeline.runtime.ray_train import training_sink, worker_setup
    from pipeline.training.loop import run_training

    cfg, rank, _, device = worker_setup(config, EncoderTrainingConfig)
    run_training(EncoderTask(cfg, rank, device), cfg, rank=rank, device=device,
                 resume_from=config.get("_resume_from"), info={"generator": cfg.generator, "config": config},
                 sink=training_sink())


def run(config: EncoderTrainingConfig, *, address: str | None = None) -> Path:
    """Train (or resume) into config.output; returns the latest encoder bundle. `address` overrides
    config.address."""
    from pipeline.runtime.ray_train import fit_resumable

    output = fit_resumable(train_loop_per_worker, config, name="train-encoder", address=address or config.address)
    return output / "encoder.safetensors"
