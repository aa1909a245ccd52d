"""Train a StyleGAN2 on a small data set: `latentmill train-generator` / `python -m jobs.train_generator`.

Runs on Ray Train's TorchTrainer (DDP over `--num-workers`, `--use-gpu`), so one command trains on a
laptop CPU or a GPU cluster. Output directory:
  generator.safetensors        the latest bundle: G, G_ema, D (loads with load_generator / load_networks)
  checkpoints/step-XXXXXXXX/   model.safetensors, opt_G.pt, opt_D.pt, state.json: the resume points
  samples/step-XXXXXXXX.png    G_ema samples of fixed seeds at each checkpoint
  train_log.csv, eval_log.csv  losses per step; KID (random-feature, see gan_training) per checkpoint
A rerun with the same --output resumes from the newest checkpoint at the same step and optimizer state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.training.settings import GeneratorTrainingConfig

from pipeline.training.checkpointing import TrainingLogs, checkpoint_state


def build_networks(cfg: GeneratorTrainingConfig):
    from pipeline.models.stylegan2 import Discriminator, Generator

    G = Generator(z_dim=cfg.z_dim, w_dim=cfg.w_dim, img_resolution=cfg.resolution, img_channels=3,
                  mapping_kwargs={"num_layers": cfg.mapping_layers},
                  synthesis_kwargs={"channel_base": cfg.channel_base, "channel_max": cfg.channel_max,
                                    "conv_clamp": 256})
    D = Discriminator(img_resolution=cfg.resolution, img_channels=3, channel_base=cfg.channel_base,
                      channel_max=cfg.channel_max, conv_clamp=256, epilogue_kwargs={"mbstd_group_size": 4})
    return G, D


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    from tqdm.auto import tqdm

    from pipeline.data.image_pool import load_image_pool
    from pipeline.imaging import save_grid
    from pipeline.models.checkpoints import load_networks
    from pipeline.runtime.ray_train import report_checkpoint, resume_directory, worker_setup
    from pipeline.training.distributed import average_gradients, broadcast_parameters
    from pipeline.training.gan_training import (GANLossSettings, RandomFeatures, discriminator_loss, ema_beta,
                                                generator_loss, kid, lazy_adam, make_ema, path_length_penalty,
                                                r1_penalty, update_ema)

    cfg, rank, world, device = worker_setup(config, GeneratorTrainingConfig)
    pool = load_image_pool(cfg.data, resolution=cfg.resolution, max_images=10**7)
    if rank == 0:
        print(f"training data: {pool.describe()}")
    reals_all = pool.images.to(device)

    torch.manual_seed(cfg.seed)
    G, D = build_networks(cfg)
    G, D = G.to(device).train(), D.to(device).train()
    G_ema = make_ema(G)
    settings = GANLossSettings(r1_gamma=cfg.r1_gamma, r1_interval=cfg.r1_interval, pl_weight=cfg.pl_weight,
                               style_mixing_prob=cfg.style_mixing_prob, augment=cfg.augment)
    opt_G = lazy_adam(G.parameters(), cfg.lr, settings.pl_interval if cfg.pl_weight > 0 else 0)
    opt_D = lazy_adam(D.parameters(), cfg.lr, cfg.r1_interval)
    pl_mean = torch.zeros((), device=device)
    start = 0
    with resume_directory(config.get("_resume_from")) as directory:
        if directory is not None:
            nets = load_networks(str(directory / "model.safetensors"), device=device)
            for mine, saved in ((G, nets["G"]), (G_ema, nets["G_ema"]), (D, nets["D"])):
                mine.load_state_dict(saved.state_dict())
            opt_G.load_state_dict(torch.load(directory / "opt_G.pt", map_location=device, weights_only=True))
            opt_D.load_state_dict(torch.load(directory / "opt_D.pt", map_location=device, weights_only=True))
            state = checkpoint_state(directory)
            start, pl_mean = state["step"], torch.tensor(state.get("pl_mean", 0.0), device=device)
    for network in (G, D, G_ema):
        broadcast_parameters(network)
    features = RandomFeatures().to(device)
    real_features = features(reals_all[: cfg.kid_samples])
    sample_z = torch.randn(32, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 7)).to(device)
    beta = ema_beta(cfg.batch_size * world, cfg.ema_images)
    output = Path(cfg.output)
    logs = TrainingLogs(output) if rank == 0 else None
    bar = tqdm(total=cfg.steps, initial=start, desc="train generator", disable=not (cfg.progress and rank == 0))
    for step in range(start, cfg.steps):
        step_seed = cfg.seed * 1_000_003 + step * 1009 + rank
        rng = torch.Generator(device=device).manual_seed(step_seed)
        torch.manual_seed(step_seed)  # G's per-pixel noise draws from the global stream: reproducible on resume
        reals = reals_all[torch.randint(len(reals_all), (cfg.batch_size,), generator=rng, device=device)]
        # D step (+ lazy R1)
        G.requires_grad_(False)
        D.requires_grad_(True)
        loss_D = discriminator_loss(G, D, reals, settings, rng)
        opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        r1 = torch.zeros((), device=device)
        if step % cfg.r1_interval == 0:
            r1 = r1_penalty(D, reals, settings, rng)
            r1.backward()
        average_gradients(D)
        opt_D.step()
        # G step (+ lazy path length)
        G.requires_grad_(True)
        D.requires_grad_(False)
        loss_G = generator_loss(G, D, cfg.batch_size, settings, rng)
        opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        pl = torch.zeros((), device=device)
        if cfg.pl_weight > 0 and step % settings.pl_interval == 0:
            pl, pl_mean = path_length_penalty(G, max(cfg.batch_size // 2, 1), pl_mean, settings, rng)
            pl.backward()
        average_gradients(G)
        opt_G.step()
        update_ema(G_ema, G, beta)
        bar.update(1)
        done = step + 1
        if logs is not None:
            logs.write("train_log.csv", done, {"loss_D": round(loss_D.item(), 5), "loss_G": round(loss_G.item(), 5),
                                                "r1": round(r1.item(), 5), "pl": round(pl.item(), 5)})
            bar.set_postfix(D=f"{loss_D.item():.3f}", G=f"{loss_G.item():.3f}")
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            if rank == 0:
                with torch.no_grad():
                    fakes = torch.cat([G_ema(z, noise_mode="const") for z in torch.randn(
                        cfg.kid_samples, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 11)
                    ).to(device).split(256)])
                    metrics = {"kid_random_features": kid(real_features, features(fakes))}
                    save_grid(G_ema(sample_z, noise_mode="const"), output / "samples" / f"step-{done:08d}.png")
                logs.write("eval_log.csv", done, metrics)
                report_checkpoint(done, metrics, networks={"G": G, "G_ema": G_ema, "D": D},
                                  optimizers={"opt_G": opt_G, "opt_D": opt_D},
                                  info={"step": done, "data": cfg.data, "config": config, **metrics}, output=output,
                                  keep=cfg.keep_checkpoints, final_name="generator.safetensors",
                                  extra_state={"pl_mean": pl_mean.item()})
            else:
                ray.train.report({"step": done})
    bar.close()


def run(config: GeneratorTrainingConfig, *, address: str | None = None) -> Path:
    """Train into config.output (resuming from its newest checkpoint); `address` overrides config.address."""
    """Train (or resume) and return the path of the latest generator bundle."""
    from pipeline.runtime.ray_train import fit_resumable

    return fit_resumable(train_loop_per_worker, config, name="train-generator", address=address or config.address) / "generator.safetensors"

