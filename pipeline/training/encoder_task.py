"""The encoder training step and its state (`latentmill train-encoder`): the latent regressor, optimized on
samples of a frozen generator, with LIA's discriminator when asked; run by pipeline/training/loop.py."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from pipeline.sampling import stream
from pipeline.training.loop import TrainingTask
from pipeline.training.settings import EncoderTrainingConfig


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
        from pipeline.training.encoder_training import encoder_step, sample_training_batch

        cfg = self.cfg
        batch = sample_training_batch(self.G, cfg.batch_size, rng, style_mixing_prob=cfg.style_mixing_prob,
                                      mask_weights=cfg.mask_weights, real_images=self.real,
                                      real_fraction=cfg.real_fraction if self.real is not None else 0.0)
        losses = encoder_step(self.E, self.G, batch, self.optimizers["optimizer"], perceptual=self.perceptual,
                              weights=self.weights, D=self.D, optimizer_D=self.optimizers.get("optimizer_D"),
                              r1_gamma=cfg.r1_gamma)
        return {k: v.item() for k, v in losses.items()}

    def evaluate(self, step: int) -> dict[str, float]:
        from pipeline.training.encoder_training import evaluate

        return evaluate(self.E, self.G, self.eval_batch, perceptual=self.perceptual)
