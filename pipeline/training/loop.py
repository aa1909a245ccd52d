"""The one training skeleton of latentmill's training jobs (generator, encoder, identity, ...).

A job describes its training as a `TrainingTask` (the networks and optimizers it checkpoints,
one update, its held-out evaluation); `run_training` does the rest the same way for every job,
inside a Ray Train worker:
  - resume: the newest checkpoint (or Ray's, after a worker-group restart) restores every network,
    optimizer and the task's extra state; rank 0's weights are then broadcast to all workers;
  - reproducible streams: step s on rank r draws from a generator (and the global stream) seeded
    by (seed, s, r), so a resumed run draws exactly what an uninterrupted one would;
  - gradient synchronisation: `optimizer_step` averages gradients across workers after backward
    (pipeline/training/distributed.py says why by hand rather than DDP);
  - rank 0 writes the CSV logs, evaluates at each checkpoint and publishes the checkpoint; every
    rank reports to Ray Train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.training.checkpointing import TrainingLogs, checkpoint_state
from pipeline.training.distributed import average_gradients, broadcast_parameters


class TrainingTask:
    """What one job trains. Subclasses set the attributes and implement `update` and `evaluate`."""

    name: str  # the progress bar's label, e.g. "train encoder"
    final_name: str  # the published bundle, e.g. "encoder.safetensors"
    networks: dict[str, nn.Module]  # written to every checkpoint's bundle under these names
    optimizers: dict[str, torch.optim.Optimizer]  # written as <name>.pt

    def update(self, step: int, rng: torch.Generator) -> dict[str, float]:
        """One training step on this worker (with `optimizer_step` for each optimizer); returns the
        losses to log."""
        raise NotImplementedError

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out figures at a checkpoint (rank 0 only)."""
        raise NotImplementedError

    def restore(self, directory: Path, device: torch.device) -> None:
        """Load every network from a checkpoint's bundle (a task may check more, e.g. the generator)."""
        from pipeline.models.checkpoints import load_networks

        saved = load_networks(str(directory / "model.safetensors"), device=device)
        for name, network in self.networks.items():
            network.load_state_dict(saved[name].state_dict())

    def restore_state(self, state: dict[str, Any]) -> None:
        """The task's extra state saved with a checkpoint (see `extra_state`)."""

    def extra_state(self) -> dict[str, Any]:
        return {}


def optimizer_step(optimizer: torch.optim.Optimizer, module: nn.Module, *losses: torch.Tensor) -> None:
    """zero_grad, backward every loss, average the gradients across workers, step."""
    optimizer.zero_grad(set_to_none=True)
    for loss in losses:
        loss.backward()
    average_gradients(module)
    optimizer.step()


def step_seed(seed: int, step: int, rank: int) -> int:
    return seed * 1_000_003 + step * 1009 + rank


def run_training(task: TrainingTask, settings: Any, *, rank: int, device: torch.device, resume_from: str | None,
                 info: dict[str, Any]) -> None:
    """Train `task` for settings.steps steps (settings: the job's config; output, steps, seed,
    checkpoint_every, keep_checkpoints, progress), resuming where a checkpoint says."""
    import ray.train
    from pipeline.progress import progress_bar

    from pipeline.runtime.ray_train import report_checkpoint, resume_directory

    start = 0
    with resume_directory(resume_from) as directory:
        if directory is not None:
            task.restore(directory, device)
            for name, optimizer in task.optimizers.items():
                optimizer.load_state_dict(torch.load(directory / f"{name}.pt", map_location=device, weights_only=True))
            state = checkpoint_state(directory)
            start = state["step"]
            task.restore_state(state)
    for network in task.networks.values():
        broadcast_parameters(network)
    output = Path(settings.output)
    logs = TrainingLogs(output) if rank == 0 else None
    bar = progress_bar(total=settings.steps, initial=start, desc=task.name, unit="step",
                       enabled=settings.progress and rank == 0)
    for step in range(start, settings.steps):
        seed = step_seed(settings.seed, step, rank)
        rng = torch.Generator(device=device).manual_seed(seed)
        torch.manual_seed(seed)  # for what draws from the global stream (e.g. G's per-pixel noise)
        losses = task.update(step, rng)
        bar.update(1)
        done = step + 1
        if logs is not None:
            logs.write("train_log.csv", done, {k: round(float(v), 6) for k, v in losses.items()})
            bar.set_postfix({k: f"{float(v):.4f}" for k, v in list(losses.items())[:2]})
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            if rank == 0:
                metrics = task.evaluate(done)
                logs.write("eval_log.csv", done, metrics)
                report_checkpoint(done, metrics, networks=task.networks, optimizers=task.optimizers,
                                  info={"step": done, **info, **metrics}, output=output,
                                  keep=settings.keep_checkpoints, final_name=task.final_name,
                                  extra_state=task.extra_state())
            else:
                ray.train.report({"step": done})
    bar.close()
