"""The GAN training step and its state (`latentmill train-generator`): G, G_ema and D of a StyleGAN2 on a
small data set; run by pipeline/training/loop.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.sampling import stream
from pipeline.training.loop import TrainingTask, optimizer_step
from pipeline.training.settings import GeneratorTrainingConfig


def mapping_kwargs(cfg: GeneratorTrainingConfig) -> dict[str, Any]:
    if cfg.mapping == "invertible":
        return {"kind": "invertible", "num_layers": cfg.mapping_layers, "coupling": cfg.coupling}
    return {"num_layers": cfg.mapping_layers}


def build_networks(cfg: GeneratorTrainingConfig):
    from pipeline.models.stylegan2 import Discriminator, Generator

    G = Generator(z_dim=cfg.z_dim, w_dim=cfg.w_dim, img_resolution=cfg.resolution, img_channels=3,
                  mapping_kwargs=mapping_kwargs(cfg),
                  synthesis_kwargs={"channel_base": cfg.channel_base, "channel_max": cfg.channel_max,
                                    "conv_clamp": 256})
    D = Discriminator(img_resolution=cfg.resolution, img_channels=3, channel_base=cfg.channel_base,
                      channel_max=cfg.channel_max, conv_clamp=256, epilogue_kwargs={"mbstd_group_size": 4})
    return G, D


class GeneratorTask(TrainingTask):
    name, final_name = "train generator", "generator.safetensors"

    def __init__(self, cfg: GeneratorTrainingConfig, rank: int, world: int, device: torch.device) -> None:
        from pipeline.data.image_pool import load_image_pool
        from pipeline.training.gan_training import GANLossSettings, RandomFeatures, ema_beta, lazy_adam, make_ema

        self.cfg, self.device = cfg, device
        pool = load_image_pool(cfg.data, resolution=cfg.resolution, max_images=10**7)
        if rank == 0:
            print(f"training data: {pool.describe()}")
        self.reals = pool.images.to(device)
        torch.manual_seed(cfg.seed)
        G, D = build_networks(cfg)
        self.G, self.D = G.to(device).train(), D.to(device).train()
        self.G_ema = make_ema(self.G)
        self.networks = {"G": self.G, "G_ema": self.G_ema, "D": self.D}
        self.settings = GANLossSettings(r1_gamma=cfg.r1_gamma, r1_interval=cfg.r1_interval, pl_weight=cfg.pl_weight,
                                        style_mixing_prob=cfg.style_mixing_prob, augment=cfg.augment)
        self.optimizers = {
            "opt_G": lazy_adam(self.G.parameters(), cfg.lr, self.settings.pl_interval if cfg.pl_weight > 0 else 0),
            "opt_D": lazy_adam(self.D.parameters(), cfg.lr, cfg.r1_interval)}
        self.pl_mean = torch.zeros((), device=device)
        self.beta = ema_beta(cfg.batch_size * world, cfg.ema_images)
        self.features = RandomFeatures().to(device)
        self.real_features = self.features(self.reals[: cfg.kid_samples])
        grid = stream(cfg.seed, "train-generator", "sample grid")
        self.sample_z = torch.randn(32, cfg.z_dim, generator=grid).to(device)

    def restore_state(self, state: dict[str, Any]) -> None:
        self.pl_mean = torch.tensor(state.get("pl_mean", 0.0), device=self.device)

    def extra_state(self) -> dict[str, Any]:
        return {"pl_mean": self.pl_mean.item()}

    def update(self, step: int, rng: torch.Generator) -> dict[str, float]:
        from pipeline.training.gan_training import (discriminator_loss, generator_loss, path_length_penalty,
                                                    r1_penalty, update_ema)

        cfg, G, D, settings = self.cfg, self.G, self.D, self.settings
        reals = self.reals[torch.randint(len(self.reals), (cfg.batch_size,), generator=rng, device=self.device)]
        # D step (+ lazy R1)
        G.requires_grad_(False)
        D.requires_grad_(True)
        loss_D = discriminator_loss(G, D, reals, settings, rng)
        r1 = r1_penalty(D, reals, settings, rng) if step % cfg.r1_interval == 0 else torch.zeros((), device=self.device)
        optimizer_step(self.optimizers["opt_D"], D, loss_D, *([r1] if r1.requires_grad else []))
        # G step (+ lazy path length)
        G.requires_grad_(True)
        D.requires_grad_(False)
        loss_G = generator_loss(G, D, cfg.batch_size, settings, rng)
        pl = torch.zeros((), device=self.device)
        if cfg.pl_weight > 0 and step % settings.pl_interval == 0:
            pl, self.pl_mean = path_length_penalty(G, max(cfg.batch_size // 2, 1), self.pl_mean, settings, rng)
        optimizer_step(self.optimizers["opt_G"], G, loss_G, *([pl] if pl.requires_grad else []))
        update_ema(self.G_ema, G, self.beta)
        return {"loss_D": loss_D.item(), "loss_G": loss_G.item(), "r1": r1.item(), "pl": pl.item()}

    def evaluate(self, step: int) -> dict[str, float]:
        from pipeline.imaging import save_grid
        from pipeline.training.gan_training import kid

        cfg = self.cfg
        with torch.no_grad():
            z = torch.randn(cfg.kid_samples, cfg.z_dim, generator=stream(cfg.seed, "train-generator", "kid"))
            fakes = torch.cat([self.G_ema(part, noise_mode="const") for part in z.to(self.device).split(256)])
            save_grid(self.G_ema(self.sample_z, noise_mode="const"), Path(cfg.output) / "samples" / f"step-{step:08d}.png")
            return {"kid_random_features": kid(self.real_features, self.features(fakes))}
