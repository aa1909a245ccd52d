"""Launching a resumable training loop on Ray Train, or in this process with `--runner local` (every
training job; the loop itself is pipeline/training/loop.py).

The loop receives the job's settings as a dict plus `_resume_from`: the newest complete checkpoint
under OUTPUT/checkpoints, when there is one, so rerunning the same command continues where it
stopped. Settings are also written to OUTPUT/config.json.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pipeline.training.checkpointing import checkpoint_step, latest_checkpoint


# Set while a loop runs in the driver's process (--runner local), so the loop's config holds only the job's
# settings: what a trained bundle records as its provenance.
_IN_PROCESS: ContextVar[bool] = ContextVar("latentmill_training_in_process", default=False)


def fit_resumable(train_loop: Callable[[dict[str, Any]], None], config: Any, *, name: str,
                  address: str | None = None) -> Path:
    """Run `train_loop` on `config.num_workers` Ray Train workers, or in this process with `--runner local`;
    returns the resolved output directory. Both resume from the same checkpoints, so a run may change runner.

    `config` is a dataclass with `output`, `steps`, `num_workers`, `use_gpu` and `runner` fields.
    """
    from pipeline.invert.preflight import preflight_training, with_absolute_training_paths

    config = with_absolute_training_paths(config)
    preflight_training(config, name)
    output = Path(config.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    loop_config = dataclasses.asdict(config) | {"output": str(output)}
    resume = latest_checkpoint(output)
    if resume is not None:
        print(f"resuming from {resume} (step {checkpoint_step(resume)} of {config.steps})")
        loop_config["_resume_from"] = str(resume)
    (output / "config.json").write_text(json.dumps(loop_config, indent=2))
    if config.runner == "local":
        token = _IN_PROCESS.set(True)
        try:
            train_loop(loop_config)
        finally:
            _IN_PROCESS.reset(token)
        return output
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.runtime.ray_init import init_ray

    init_ray(address, verbose=getattr(config, "verbose", False))
    TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu),
        run_config=RunConfig(name=f"{name}-{int(time.time())}", storage_path=str(output / "ray")),
    ).fit()
    return output


def worker_setup(config: dict[str, Any], config_class: type) -> tuple[Any, int, int, Any]:
    """Inside a training loop: (the job's settings as `config_class`, rank, world size, torch device)."""
    settings = config_class(**{k: v for k, v in config.items() if k != "_resume_from"})
    if _IN_PROCESS.get():
        import torch

        return settings, 0, 1, torch.device("cuda" if settings.use_gpu and torch.cuda.is_available() else "cpu")
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    return settings, context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device()


@contextmanager
def resume_directory(fallback: str | None) -> Iterator[Path | None]:
    """Inside a training loop: where to resume from. Ray's checkpoint when Ray restarted the worker
    group after a failure, else the newest checkpoint `fit_resumable` found on disk, else None."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            yield Path(directory)
    else:
        yield Path(fallback) if fallback else None


def training_sink() -> Any:
    """Inside a training loop: where checkpoints are told (Ray Train's report, or nothing in this process)."""
    from pipeline.training.loop import LocalSink

    return LocalSink() if _IN_PROCESS.get() else RayTrainSink()


class RayTrainSink:
    """run_training's checkpoint sink inside a Ray Train worker: resume from Ray's checkpoint after a
    worker-group restart, and report every checkpoint step (with rank 0's checkpoint) to Ray Train."""

    def resume_directory(self, fallback: str | None):
        return resume_directory(fallback)

    def report(self, step: int, metrics: dict[str, float], checkpoint: Path | None) -> None:
        import ray.train

        ray.train.report({"step": step, **metrics},
                         checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)) if checkpoint else None)
