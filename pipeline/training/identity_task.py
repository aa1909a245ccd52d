"""The identity embedding's training step and its state (`latentmill train-identity`); run by
pipeline/training/loop.py."""

from __future__ import annotations


import torch

from pipeline.sampling import stream
from pipeline.training.loop import TrainingTask, optimizer_step
from pipeline.training.settings import IdentityTrainingConfig


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
