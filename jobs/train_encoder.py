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

import copy
from pathlib import Path
from typing import Any

import torch

from pipeline.sampling import stream
from pipeline.training.loop import TrainingTask, optimizer_step
from pipeline.training.settings import EncoderTrainingConfig

__all__ = ["EncoderTrainingConfig", "run"]


class EncoderTask(TrainingTask):
    name, final_name = "train encoder", "encoder.safetensors"

    def __init__(self, cfg: EncoderTrainingConfig, rank: int, device: torch.device) -> None:
        from pipeline.losses.perceptual import build_perceptual
        from pipeline.models.checkpoints import generator_of, load_networks, read_state_dict
        from pipeline.models.encoder import Encoder, TorchvisionBackbone
        from pipeline.training.encoder_training import LossWeights, sample_training_batch

        self.cfg, self.device = cfg, device
        networks = load_networks(cfg.generator, device=device, setting="--generator")
        self.G = generator_of(networks, source=cfg.generator)
        perceptual = build_perceptual(cfg.perceptual, discriminator=networks.get("D"), lpips_weights=cfg.lpips_weights)
        self.perceptual = perceptual.to(device) if perceptual is not None else None
        torch.manual_seed(cfg.seed)  # initial weights: the same on every worker and on every rerun
        E = Encoder.for_generator(self.G, mode=cfg.mode, backbone=cfg.backbone, base_channels=cfg.base_channels,
                                  max_channels=cfg.max_channels)
        if cfg.backbone_weights and isinstance(E.backbone, TorchvisionBackbone):
            E.backbone.load_imagenet(read_state_dict(cfg.backbone_weights, setting="--backbone-weights"))
        self.E = E.to(device).train()
        self.networks = {"E": self.E}
        self.optimizers = {"optimizer": torch.optim.Adam(self.E.parameters(), lr=cfg.lr, betas=(0.9, 0.99))}
        self.weights = LossWeights(cfg.pixel_weight, cfg.perceptual_weight, cfg.latent_weight, cfg.adversarial_weight)
        self.D = None
        if cfg.adversarial_weight > 0:  # LIA's stage 2: a copy of G's D, fine-tuned (the perceptual net keeps the original)
            self.D = copy.deepcopy(networks["D"]).to(device).train().requires_grad_(True)
            self.networks["D"] = self.D
            self.optimizers["optimizer_D"] = torch.optim.Adam(self.D.parameters(), lr=cfg.discriminator_lr,
                                                              betas=(0.0, 0.99))
        self.real = None
        if cfg.real_images:
            from pipeline.data.image_pool import load_image_pool

            pool = load_image_pool(cfg.real_images, resolution=self.G.img_resolution, channels=self.G.img_channels,
                                   max_images=cfg.real_max)
            print(f"worker {rank}: {pool.describe()}")
            self.real = pool.images
        self.eval_batch = sample_training_batch(
            self.G, cfg.eval_size, stream(cfg.seed, "train-encoder", "eval", device=device),
            style_mixing_prob=cfg.style_mixing_prob, mask_weights=cfg.mask_weights)

    def restore(self, directory: Path, device: torch.device) -> None:
        from pipeline.models.encoder import load_encoder

        # through load_encoder: a checkpoint made for another --generator is refused, not resumed
        self.E.load_state_dict(load_encoder(str(directory / "model.safetensors"), generator=self.G).state_dict())
        if self.D is not None:
            from pipeline.models.checkpoints import load_networks

            self.D.load_state_dict(load_networks(str(directory / "model.safetensors"))["D"].state_dict())

    def update(self, step: int, rng: torch.Generator) -> dict[str, float]:
        from pipeline.training.encoder_training import (discriminator_losses, encoder_losses, reconstruct,
                                                        sample_training_batch)

        cfg = self.cfg
        batch = sample_training_batch(self.G, cfg.batch_size, rng, style_mixing_prob=cfg.style_mixing_prob,
                                      mask_weights=cfg.mask_weights, real_images=self.real,
                                      real_fraction=cfg.real_fraction if self.real is not None else 0.0)
        reconstruction = reconstruct(self.E, self.G, batch)
        losses = encoder_losses(self.E, self.G, batch, perceptual=self.perceptual, weights=self.weights,
                                discriminator=self.D, reconstruction=reconstruction)
        optimizer_step(self.optimizers["optimizer"], self.E, losses["total"])
        whole = torch.tensor([kind != "collage" for kind in batch.kinds], device=self.device)
        if self.D is not None and bool(whole.any()):  # D's reals: the targets that are whole images, not collages
            d_losses = discriminator_losses(self.D, batch.targets[whole], reconstruction[1], r1_gamma=cfg.r1_gamma)
            optimizer_step(self.optimizers["optimizer_D"], self.D, d_losses.pop("total"))
            losses.update(d_losses)
        return {k: v.item() for k, v in losses.items()}

    def evaluate(self, step: int) -> dict[str, float]:
        from pipeline.training.encoder_training import evaluate

        return evaluate(self.E, self.G, self.eval_batch, perceptual=self.perceptual)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    from pipeline.runtime.ray_train import training_sink, worker_setup
    from pipeline.training.loop import run_training

    cfg, rank, _, device = worker_setup(config, EncoderTrainingConfig)
    run_training(EncoderTask(cfg, rank, device), cfg, rank=rank, device=device,
                 resume_from=config.get("_resume_from"), info={"generator": cfg.generator, "config": config},
                 sink=training_sink(config))


def run(config: EncoderTrainingConfig, *, address: str | None = None) -> Path:
    """Train (or resume) into config.output; returns the latest encoder bundle. `address` overrides
    config.address."""
    from pipeline.runtime.ray_train import fit_resumable

    output = fit_resumable(train_loop_per_worker, config, name="train-encoder", address=address or config.address)
    return output / "encoder.safetensors"
