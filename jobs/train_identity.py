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

import torch

from pipeline.sampling import stream
from pipeline.training.loop import TrainingTask, optimizer_step
from pipeline.training.settings import IdentityTrainingConfig

__all__ = ["IdentityTrainingConfig", "run"]


class IdentityTask(TrainingTask):
    name, final_name = "train identity", "identity.safetensors"

    def __init__(self, cfg: IdentityTrainingConfig, device: torch.device) -> None:
        from pipeline.data.image_pool import load_image_pool
        from pipeline.models.embedding import EmbeddingNet

        self.cfg, self.device = cfg, device
        self.images = load_image_pool(cfg.data, resolution=cfg.resolution, max_images=10**7).images.to(device)
        torch.manual_seed(cfg.seed)
        self.model = EmbeddingNet(cfg.resolution, 3, cfg.base_channels, cfg.max_channels, cfg.embedding_dim).to(device)
        self.networks = {"identity": self.model}
        self.optimizers = {"opt": torch.optim.Adam(self.model.parameters(), lr=cfg.lr)}

    def update(self, step: int, rng: torch.Generator) -> dict[str, float]:
        from pipeline.training.identity_training import degrade, info_nce

        cfg = self.cfg
        batch = self.images[torch.randperm(len(self.images), generator=rng, device=self.device)[: cfg.batch_size]]
        self.model.train()
        loss = info_nce(self.model(degrade(batch, rng, cfg.strength)), self.model(degrade(batch, rng, cfg.strength)),
                        cfg.temperature)
        optimizer_step(self.optimizers["opt"], self.model, loss)
        return {"info_nce": loss.item()}

    def evaluate(self, step: int) -> dict[str, float]:
        from pipeline.training.identity_training import retrieval_accuracy

        eval_rng = stream(self.cfg.seed, "train-identity", "eval views", device=self.device)  # the same views each time
        return retrieval_accuracy(self.model, self.images, eval_rng, self.cfg.strength)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from pipeline.runtime.ray_train import training_sink, worker_setup
    from pipeline.training.loop import run_training

    cfg, rank, _, device = worker_setup(config, IdentityTrainingConfig)
    run_training(IdentityTask(cfg, device), cfg, rank=rank, device=device, resume_from=config.get("_resume_from"),
                 info={"data": cfg.data, "config": config}, sink=training_sink(config))


def run(config: IdentityTrainingConfig, *, address: str | None = None) -> Path:
    """Train (or resume) into config.output; returns the latest identity bundle. `address` overrides
    config.address."""
    from pipeline.runtime.ray_train import fit_resumable

    output = fit_resumable(train_loop_per_worker, config, name="train-identity", address=address or config.address)
    return output / "identity.safetensors"
