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
import math
from pathlib import Path
from typing import Any

import torch

from pipeline.priors.prior_settings import FitFlowConfig
from pipeline.training.loop import TrainingTask

__all__ = ["FitFlowConfig", "run", "run_directory"]



class FlowTask(TrainingTask):
    name, final_name = "fit flow", "flow.safetensors"

    def __init__(self, cfg: FitFlowConfig, device: torch.device) -> None:
        from pipeline.models.checkpoints import load_generator
        from pipeline.priors.flow import FlowPrior
        from pipeline.priors.gaussian import GaussianizedPrior
        from pipeline.sampling import mapped_samples, stream

        self.cfg, self.device = cfg, device
        self.G = load_generator(cfg.generator, device=device).eval().requires_grad_(False)
        torch.manual_seed(cfg.seed)
        start = GaussianizedPrior.fit(self.G, num_samples=cfg.init_samples, batch_size=min(cfg.init_samples, 10_000),
                                      device=device, seed=cfg.seed, progress=False)
        self.flow = FlowPrior.from_gaussianized(start, couplings=cfg.couplings, hidden=cfg.hidden or None,
                                                hidden_layers=cfg.hidden_layers, coupling=cfg.coupling,
                                                num_samples=cfg.steps * cfg.batch_size).to(device)
        held_out_rng = stream(cfg.seed, "fit-flow", "held-out", device=device)  # apart from every training step's
        self.held_out = mapped_samples(self.G, cfg.eval_samples, held_out_rng)
        self.gaussianized_log_prob = start.log_prob(self.held_out).mean().item()
        self.networks = {"flow": self.flow}
        self.optimizers = {"opt": torch.optim.Adam(self.flow.parameters(), lr=cfg.lr)}

    def update(self, step: int, rng: torch.Generator) -> dict[str, float]:
        from pipeline.sampling import mapped_samples
        from pipeline.training.distributed import average_gradients

        cfg, optimizer = self.cfg, self.optimizers["opt"]
        for group in optimizer.param_groups:  # cosine decay: a function of the step, so resuming repeats it
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        ws = mapped_samples(self.G, cfg.batch_size, rng)
        self.flow.train()
        nll = -self.flow.log_prob(ws).mean().float()
        optimizer.zero_grad(set_to_none=True)
        nll.backward()
        average_gradients(self.flow)
        torch.nn.utils.clip_grad_norm_(self.flow.parameters(), 100.0)  # a rare far-out sample cannot wreck a step
        optimizer.step()
        return {"nll": nll.item()}

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        flow_log_prob = self.flow.log_prob(self.held_out).mean().item()
        return {"held_out_log_prob": round(flow_log_prob, 4),
                "gaussianized_log_prob": round(self.gaussianized_log_prob, 4),
                "gain_nats": round(flow_log_prob - self.gaussianized_log_prob, 4)}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from pipeline.runtime.ray_train import training_sink, worker_setup
    from pipeline.training.loop import run_training

    cfg, rank, _, device = worker_setup(config, FitFlowConfig)
    run_training(FlowTask(cfg, device), cfg, rank=rank, device=device, resume_from=config.get("_resume_from"),
                 info={"generator": cfg.generator, "config": config}, sink=training_sink(config))


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
