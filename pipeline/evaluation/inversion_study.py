"""Studies 1 and 2: inversion quality against cost, and the prior's effect on interpolations."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from pipeline.evaluation.models import EvalModels, initial_latents
from pipeline.models.encoder import encode
from pipeline.models.identity import identity_cosine
from pipeline.stages.refine import refine


@torch.no_grad()
def per_image_quality(models: EvalModels, images: torch.Tensor, recon: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image pixel MSE, perceptual distance (if a metric is configured) and identity cosine."""
    out = {"mse": (recon - images).square().mean(dim=(1, 2, 3)),
           "identity": identity_cosine(models.identity, images, recon)}
    if models.perceptual is not None:
        out["perceptual"] = models.perceptual(recon, images).flatten()
    return out


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def inversion_cost(models: EvalModels, images: torch.Tensor, *, step_counts: Sequence[int],
                   baseline_steps: int = 1000, baseline_images: int | None = None) -> dict[str, Any]:
    """Encoder only; encoder + refinement and w_avg + refinement at each step count; the official
    projector recipe (one w, perceptual-only loss, noise maps with their regularizer, w perturbation,
    one image at a time) as the baseline. Seconds are per image on this device."""
    G, n = models.G, len(images)
    images = images.to(models.device)
    rows = []

    count = min(baseline_images or n, n)  # the official recipe runs one image at a time: on the first `count`

    def add(method: str, steps: int, recon: torch.Tensor, seconds: float, images_run: int, target: torch.Tensor) -> None:
        metrics = per_image_quality(models, target, recon)
        key = "perceptual" if "perceptual" in metrics else "mse"
        rows.append({"method": method, "steps": steps, "images": images_run, "seconds_per_image": seconds / images_run,
                     **{k: v.mean().item() for k, v in metrics.items()},
                     f"{key}_on_baseline_images": metrics[key][:count].mean().item()})

    if models.E is not None:
        ws_e, seconds = _timed(lambda: encode(models.E, images).float())
        with torch.no_grad():
            add("encoder", 0, G.synthesis(ws_e, noise_mode="const").float(), seconds, n, images)
    starts = {"w_avg + refine": G.w_avg.expand(n, G.num_ws, -1).clone()}
    if models.E is not None:
        starts = {"encoder + refine": ws_e, **starts}
    for label, init in starts.items():
        for steps in step_counts:
            extra = 0.0
            if label == "encoder + refine":
                extra = next(r["seconds_per_image"] for r in rows if r["method"] == "encoder") * n
            result, seconds = _timed(lambda: refine(G, images, init, steps=steps, perceptual=models.perceptual,
                                                    prior=models.prior, seeds=list(range(n))))
            add(label, steps, result.images.float(), seconds + extra, n, images)
    recons, total = [], 0.0
    for i in range(count):  # the official projector works on one image at a time
        result, seconds = _timed(lambda: refine(
            G, images[i : i + 1], G.w_avg.expand(1, G.num_ws, -1).clone(), steps=baseline_steps, latent_space="w",
            pixel_weight=0.0, perceptual=models.perceptual, optimize_noise=True, w_noise_factor=0.05, seeds=[i]))
        recons.append(result.images.float())
        total += seconds
    add("official projector recipe", baseline_steps, torch.cat(recons), total, count, images[:count])

    baseline = rows[-1]
    key = "perceptual" if "perceptual" in baseline else "mse"
    compare = f"{key}_on_baseline_images"  # the same images on both sides
    reach = {}
    for label in starts:
        hits = [r["steps"] for r in rows if r["method"] == label and r[compare] <= baseline[compare]]
        reach[label] = min(hits) if hits else None
    return {"rows": rows, "quality_key": key, "steps_to_reach_baseline": reach,
            "baseline_seconds_per_image": baseline["seconds_per_image"],
            "claim": "batched encoder + refinement reaches the official recipe's quality in fewer steps and seconds",
            "holds": reach.get("encoder + refine") is not None and any(
                r["method"] == "encoder + refine" and r["steps"] == reach["encoder + refine"]
                and r["seconds_per_image"] < baseline["seconds_per_image"] for r in rows)}


def prior_effect(models: EvalModels, images: torch.Tensor, *, steps: int, frames: int = 9,
                 prior_weight: float = 0.01) -> dict[str, Any]:
    """Project each image with and without the prior, interpolate between consecutive pairs in W+,
    and measure path length (perceptual distance between neighbouring frames, summed: PPL-style),
    midpoint prior NLL (about w_dim for a typical latent) and midpoint realism (KID to the real images)."""
    G, n = models.G, len(images) - len(images) % 2
    images = images[:n].to(models.device)
    init = initial_latents(models, images)
    distance = models.perceptual or (lambda a, b: (a - b).square().mean(dim=(1, 2, 3)))
    rows = []
    for label, weight in (("with prior", prior_weight), ("without prior", 0.0)):
        result = refine(G, images, init, steps=steps, perceptual=models.perceptual, prior=models.prior,
                        prior_weight=weight, seeds=list(range(n)))
        ws = result.ws.detach()
        a, b = ws[0::2], ws[1::2]
        with torch.no_grad():
            t = torch.linspace(0, 1, frames, device=ws.device)
            path = torch.zeros(len(a), device=ws.device)
            previous = G.synthesis(a, noise_mode="const").float()
            for k in range(1, frames):
                current = G.synthesis(a + t[k] * (b - a), noise_mode="const").float()
                path += distance(previous, current)
                previous = current
            mid = 0.5 * (a + b)
            mid_images = G.synthesis(mid, noise_mode="const").float()
        rows.append({"setting": label, "prior_weight": weight, "pairs": len(a), "frames": frames,
                     "path_length": path.mean().item(),
                     "midpoint_prior_nll": models.prior.nll(mid).mean().item(),
                     "endpoint_prior_nll": models.prior.nll(ws).mean().item(),
                     "midpoint_realism_kid": models.realism(mid_images.cpu()),
                     "endpoint_mse": (result.images.float() - images).square().mean().item()})
    with_prior, without = rows
    return {"rows": rows, "steps": steps,
            "claim": "the prior gives smoother interpolations with more realistic midpoints",
            "holds": with_prior["path_length"] < without["path_length"]
            and with_prior["midpoint_realism_kid"] < without["midpoint_realism_kid"]}
