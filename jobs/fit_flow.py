"""Fit a normalizing flow to a generator's mapped latents: `latentmill fit-flow`.

The flow (pipeline/priors/flow.py) starts as the gaussianized prior fitted on --init-samples
mapped samples and then learns, by maximum likelihood on fresh samples w = mapping(z) every step,
what a Gaussian in V misses. Runs on Ray Train like the other training jobs, so it resumes from
its newest checkpoint and spreads over workers. Run directory (--run-directory):
  flow.safetensors              the latest flow (also copied to --output)
  checkpoints/step-XXXXXXXX/    model.safetensors, opt.pt, state.json: the resume points
  train_log.csv, eval_log.csv   NLL per step; held-out log p(w) of the flow and of the
                                gaussianized prior at each checkpoint (nats, mean per latent)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


from pipeline.priors.prior_settings import FitFlowConfig
from pipeline.training.flow_task import FlowTask

__all__ = ["FitFlowConfig", "run", "run_directory"]



def train_loop_per_worker(config: dict[str, Any]) -> None:
    from pipeline.runtime.ray_train import training_sink, worker_setup
    from pipeline.training.loop import run_training

    cfg, rank, _, device = worker_setup(config, FitFlowConfig)
    run_training(FlowTask(cfg, device), cfg, rank=rank, device=device, resume_from=config.get("_resume_from"),
                 info={"generator": cfg.generator, "config": config}, sink=training_sink())


def run_directory(cfg: FitFlowConfig) -> Path:
    """Where checkpoints and logs go: --run-directory, or beside a local --output."""
    from pipeline.uris import is_local

    if cfg.run_directory:
        return Path(cfg.run_directory)
    if not is_local(cfg.output):
        raise ValueError(f"--output {cfg.output} is not a local path: give --run-directory for checkpoints and logs")
    output = Path(cfg.output.removeprefix("file://"))
    return output.with_name(output.name.removesuffix(".safetensors") + ".run")


def run(cfg: FitFlowConfig, *, address: str | None = None) -> str:
    """Fit (or resume) the flow; writes it to cfg.output and returns that URI."""
    from pipeline.runtime.ray_train import fit_resumable
    from pipeline.uris import write_bytes

    directory = run_directory(cfg)
    training = dataclasses.replace(cfg, output=str(directory), run_directory=str(directory))
    fitted = fit_resumable(train_loop_per_worker, training, name="fit-flow", address=address or cfg.address)
    write_bytes(cfg.output, (fitted / FlowTask.final_name).read_bytes())
    return cfg.output
