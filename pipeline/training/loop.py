"""The one training skeleton of latentmill's training jobs (generator, encoder, identity, ...).

A job describes its training as a `TrainingTask` (the networks and optimizers it checkpoints,
one update, its held-out evaluation); `run_training` does the rest the same way for every job, in
whatever process runs it: a Ray Train worker (the jobs pass pipeline/runtime/ray_train.py's
RayTrainSink) or this one (LocalSink, no Ray):
  - resume: the newest checkpoint (or Ray's, after a worker-group restart) restores every network,
    optimizer and the task's extra state; rank 0's weights are then broadcast to all workers;
  - reproducible streams: step s on rank r draws from a generator (and the global stream) seeded
    by (seed, s, r), so a resumed run draws exactly what an uninterrupted one would;
  - gradient synchronisation: `optimizer_step` averages gradients across workers after backward
    (pipeline/training/distributed.py says why by hand rather than DDP);
  - rank 0 writes the CSV logs, evaluates at each checkpoint and publishes the checkpoint; every
    rank hands the step to the checkpoint sink (Ray Train's report, or nothing).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from pipeline.sampling import stream_seed
from pipeline.training.checkpointing import TrainingLogs, checkpoint_state, publish_checkpoint, save_checkpoint
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


class CheckpointSink(Protocol):
    """Where a worker resumes from and tells its progress, beyond the output folder run_training writes."""

    def resume_directory(self, fallback: str | None) -> AbstractContextManager[Path | None]:
        """The checkpoint to resume from (`fallback`: the newest one on disk), as a directory."""

    def report(self, step: int, metrics: dict[str, float], checkpoint: Path | None) -> None:
        """A finished checkpoint step: rank 0 passes its metrics and checkpoint directory, others None."""


class LocalSink:
    """Training in this process, without Ray: resume from the newest checkpoint on disk; nothing to tell."""

    @contextmanager
    def resume_directory(self, fallback: str | None) -> Iterator[Path | None]:
        yield Path(fallback) if fallback else None

    def report(self, step: int, metrics: dict[str, float], checkpoint: Path | None) -> None:
        pass


def step_seed(seed: int, step: int, rank: int) -> int:
    """Step `step` on rank `rank` draws from a stream of its own (pipeline/sampling.py's named streams)."""
    return stream_seed(seed, "training step", step, rank)


def run_training(task: TrainingTask, settings: Any, *, rank: int, device: torch.device, resume_from: str | None,
                 info: dict[str, Any], sink: CheckpointSink | None = None) -> None:
    """Train `task` for settings.steps steps (settings: the job's config; output, steps, seed,
    checkpoint_every, keep_checkpoints, progress), resuming where a checkpoint says; `sink`: see
    CheckpointSink (default LocalSink)."""
    from pipeline.progress import progress_bar

    sink = sink or LocalSink()
    start = 0
    with sink.resume_directory(resume_from) as directory:
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
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
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
                with tempfile.TemporaryDirectory() as tmp:
                    save_checkpoint(Path(tmp), task.networks, task.optimizers, done, {"step": done, **info, **metrics},
                                    task.extra_state())
                    publish_checkpoint(Path(tmp), output, done, settings.keep_checkpoints, final_name=task.final_name)
                    sink.report(done, metrics, Path(tmp))
            else:
                sink.report(done, {}, None)
    bar.close()
