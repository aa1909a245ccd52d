"""Train the latent regressor on Ray Train: `latentmill train-encoder` / `python -m jobs.train_encoder`.

The same command trains on a laptop CPU (one worker, embedded Ray) or on a GPU cluster
(`--num-workers N --use-gpu`, with RAY_ADDRESS or `--address`): Ray Train's TorchTrainer runs
`train_loop_per_worker` on each worker; gradients are averaged across workers after each backward
(pipeline/training/distributed.py, the same as every latentmill training job). Output directory:
  encoder.safetensors          the latest encoder bundle (loads with pipeline.models.encoder.load_encoder)
  checkpoints/step-XXXXXXXX/   model.safetensors (E), optimizer.pt, state.json: the resume points
  train_log.csv, eval_log.csv  per-step losses, held-out figures at each checkpoint (+ TensorBoard if installed)
  config.json                  the settings of the run
A rerun with the same --output resumes from the newest checkpoint: same step, same optimizer state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.training.settings import EncoderTrainingConfig

from pipeline.training.checkpointing import TrainingLogs, checkpoint_step

def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch
    from tqdm.auto import tqdm

    from pipeline.losses.perceptual import build_perceptual
    from pipeline.models.checkpoints import generator_of, load_networks, read_state_dict
    from pipeline.models.encoder import Encoder, TorchvisionBackbone, load_encoder
    from pipeline.runtime.ray_train import report_checkpoint, resume_directory, worker_setup
    from pipeline.training.distributed import average_gradients, broadcast_parameters
    from pipeline.training.encoder_training import LossWeights, encoder_losses, evaluate, sample_training_batch

    cfg, rank, world, device = worker_setup(config, EncoderTrainingConfig)
    networks = load_networks(cfg.generator, device=device, setting="--generator")
    G = generator_of(networks, source=cfg.generator)
    perceptual = build_perceptual(cfg.perceptual, discriminator=networks.get("D"), lpips_weights=cfg.lpips_weights)
    perceptual = perceptual.to(device) if perceptual is not None else None

    torch.manual_seed(cfg.seed)  # initial weights: the same on every worker and on every rerun
    E = Encoder.for_generator(G, mode=cfg.mode, backbone=cfg.backbone, base_channels=cfg.base_channels,
                              max_channels=cfg.max_channels)
    if cfg.backbone_weights and isinstance(E.backbone, TorchvisionBackbone):
        E.backbone.load_imagenet(read_state_dict(cfg.backbone_weights, setting="--backbone-weights"))
    optimizer = torch.optim.Adam(E.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    start = 0
    with resume_directory(config.get("_resume_from")) as directory:
        if directory is not None:
            E.load_state_dict(load_encoder(str(directory / "model.safetensors"), generator=G).state_dict())
            optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location=device, weights_only=True))
            start = checkpoint_step(directory)
    E.to(device)
    broadcast_parameters(E)
    weights = LossWeights(cfg.pixel_weight, cfg.perceptual_weight, cfg.latent_weight)
    real = None
    if cfg.real_images:
        from pipeline.data.image_pool import load_image_pool

        pool = load_image_pool(cfg.real_images, resolution=G.img_resolution, channels=G.img_channels,
                               max_images=cfg.real_max)
        print(f"worker {rank}: {pool.describe()}")
        real = pool.images
    eval_batch = sample_training_batch(G, cfg.eval_size, torch.Generator(device=device).manual_seed(cfg.seed + 10**6),
                                       style_mixing_prob=cfg.style_mixing_prob, mask_weights=cfg.mask_weights)
    output = Path(cfg.output)
    logs = TrainingLogs(output) if rank == 0 else None
    bar = tqdm(total=cfg.steps, initial=start, desc="train encoder", disable=not (cfg.progress and rank == 0))
    E.train()
    for step in range(start, cfg.steps):
        # Each (step, rank) has its own random stream: a resumed run draws exactly what it would have.
        rng = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step * 1009 + rank)
        batch = sample_training_batch(G, cfg.batch_size, rng, style_mixing_prob=cfg.style_mixing_prob,
                                      mask_weights=cfg.mask_weights, real_images=real,
                                      real_fraction=cfg.real_fraction if real is not None else 0.0)
        losses = encoder_losses(E, G, batch, perceptual=perceptual, weights=weights)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        average_gradients(E)
        optimizer.step()
        bar.update(1)
        done = step + 1
        if logs is not None:
            logs.write("train_log.csv", done, {k: round(v.item(), 6) for k, v in losses.items()})
            bar.set_postfix(loss=f"{losses['total'].item():.4f}")
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            metrics = evaluate(E, G, eval_batch, perceptual=perceptual) if rank == 0 else {}
            if rank == 0:
                logs.write("eval_log.csv", done, metrics)
                report_checkpoint(done, metrics, networks={"E": E}, optimizers={"optimizer": optimizer},
                                  info={"step": done, "generator": cfg.generator, "config": config}, output=output,
                                  keep=cfg.keep_checkpoints, final_name="encoder.safetensors")
            else:
                ray.train.report({"step": done})
    bar.close()


def run(config: EncoderTrainingConfig, *, address: str | None = None) -> Path:
    """Train into config.output (resuming from its newest checkpoint); `address` overrides config.address."""
    """Train (or resume) and return the path of the latest encoder bundle."""
    from pipeline.runtime.ray_train import fit_resumable

    return fit_resumable(train_loop_per_worker, config, name="train-encoder", address=address or config.address) / "encoder.safetensors"

