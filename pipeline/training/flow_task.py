"""The flow prior's training step and its state (`latentmill fit-flow`): maximum likelihood on fresh mapped
samples, scored against the gaussianized prior; run by pipeline/training/loop.py."""

from __future__ import annotations

import math

import torch

from pipeline.priors.prior_settings import FitFlowConfig
from pipeline.training.loop import TrainingTask


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
