"""Train an identity embedding: `latentmill train-identity` / `python -m jobs.train_identity`.

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

from pipeline.training.settings import IdentityTrainingConfig


def train_loop_per_worker(config: dict[str, Any]) -> None:

    import ray.train
    from tqdm.auto import tqdm

    from pipeline.data.image_pool import load_image_pool
    from pipeline.models.checkpoints import load_networks
    from pipeline.models.embedding import EmbeddingNet
    from pipeline.runtime.ray_train import report_checkpoint, resume_directory, worker_setup
    from pipeline.training.checkpointing import TrainingLogs, checkpoint_step
    from pipeline.training.distributed import average_gradients, broadcast_parameters
    from pipeline.training.identity_training import degrade, info_nce, retrieval_accuracy

    cfg, rank, _, device = worker_setup(config, IdentityTrainingConfig)
    images = load_image_pool(cfg.data, resolution=cfg.resolution, max_images=10**7).images.to(device)
    torch.manual_seed(cfg.seed)
    model = EmbeddingNet(cfg.resolution, 3, cfg.base_channels, cfg.max_channels, cfg.embedding_dim).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start = 0
    with resume_directory(config.get("_resume_from")) as directory:
        if directory is not None:
            model.load_state_dict(load_networks(str(directory / "model.safetensors"), device=device)["identity"]
                                  .state_dict())
            opt.load_state_dict(torch.load(directory / "opt.pt", map_location=device, weights_only=True))
            start = checkpoint_step(directory)
    broadcast_parameters(model)
    output = Path(cfg.output)
    logs = TrainingLogs(output) if rank == 0 else None
    bar = tqdm(total=cfg.steps, initial=start, desc="train identity", disable=not (cfg.progress and rank == 0))
    for step in range(start, cfg.steps):
        rng = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step * 1009 + rank)
        batch = images[torch.randperm(len(images), generator=rng, device=device)[: cfg.batch_size]]
        model.train()
        loss = info_nce(model(degrade(batch, rng, cfg.strength)), model(degrade(batch, rng, cfg.strength)),
                        cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(model)
        opt.step()
        bar.update(1)
        done = step + 1
        if logs is not None:
            logs.write("train_log.csv", done, {"info_nce": round(loss.item(), 5)})
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            if rank == 0:
                eval_rng = torch.Generator(device=device).manual_seed(cfg.seed + 12345)  # the same views each time
                metrics = retrieval_accuracy(model, images, eval_rng, cfg.strength)
                logs.write("eval_log.csv", done, metrics)
                report_checkpoint(done, metrics, networks={"identity": model}, optimizers={"opt": opt},
                                  info={"step": done, "data": cfg.data, "config": config, **metrics}, output=output,
                                  keep=cfg.keep_checkpoints, final_name="identity.safetensors")
            else:
                ray.train.report({"step": done})
    bar.close()


def run(config: IdentityTrainingConfig, *, address: str | None = None) -> Path:
    """Train into config.output (resuming from its newest checkpoint); `address` overrides config.address."""
    """Train (or resume) and return the path of the latest identity bundle."""
    from pipeline.runtime.ray_train import fit_resumable

    return fit_resumable(train_loop_per_worker, config, name="train-identity", address=address or config.address) / "identity.safetensors"

