"""Train a StyleGAN2 on a small data set: `latentmill train-generator`.

Runs on Ray Train's TorchTrainer (data-parallel over `--num-workers`, `--use-gpu`, on the skeleton of
pipeline/training/loop.py), so one command trains on a laptop CPU or a GPU cluster. Output directory:
  generator.safetensors        the latest bundle: G, G_ema, D (loads with load_generator / load_networks)
  checkpoints/step-XXXXXXXX/   model.safetensors, opt_G.pt, opt_D.pt, state.json: the resume points
  samples/step-XXXXXXXX.png    G_ema samples of fixed seeds at each checkpoint
  train_log.csv, eval_log.csv  losses per step; KID (random-feature, see gan_training) per checkpoint
A rerun with the same --output resumes from the newest checkpoint at the same step and optimizer state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.training.generator_task import GeneratorTask
from pipeline.training.settings import GeneratorTrainingConfig

__all__ = ["GeneratorTrainingConfig", "run"]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from pipeline.runtime.ray_train import training_sink, worker_setup
    from pipeline.training.loop import run_training

    cfg, rank, world, device = worker_setup(config, GeneratorTrainingConfig)
    run_training(GeneratorTask(cfg, rank, world, device), cfg, rank=rank, device=device,
                 resume_from=config.get("_resume_from"), info={"data": cfg.data, "config": config},
                 sink=training_sink())


def run(config: GeneratorTrainingConfig, *, address: str | None = None) -> Path:
    """Train (or resume) into config.output; returns the latest generator bundle. `address` overrides
    config.address."""
    from pipeline.runtime.ray_train import fit_resumable

    output = fit_resumable(train_loop_per_worker, config, name="train-generator", address=address or config.address)
    return output / "generator.safetensors"
