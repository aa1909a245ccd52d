"""Stage 2: batched, prior-regularized optimization of W+ against pixel and perceptual losses.

Objective per image (methods.md, section 2):
    pixel_weight * MSE(G(w+), x) + perceptual_weight * P(G(w+), x)
    + prior_weight * NLL_V(w+) / w_dim + noise_regularize_weight * R(noise)
where NLL_V is the prior's mean-over-layers squared norm of its standard-normal coordinates (Mahalanobis
in V for the gaussianized prior, |z|^2 for a flow; divided by
w_dim so that a typical latent scores about 1), and R is the official projector's noise
autocorrelation penalty (only when noise maps are optimized). The schedule is the official
projector's: linear lr warm-up, cosine ramp-down, and an optional decaying perturbation of w.

Every image has its own latent, noise maps, random stream (seeded by its id) and loss; Adam is
elementwise, so a batch of N gives the result of N runs of one, up to float rounding.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from pipeline.progress import progress_bar

from pipeline.losses.pixel import masked_mse
from pipeline.models.stylegan2 import Generator
from pipeline.priors.load import Prior
from pipeline.precision import autocast_for, resolve_precision
from pipeline.stages.inversion_settings import LATENT_SPACES, RefineSettings
from pipeline.sampling import mapped_samples



@dataclass
class RefineResult:
    ws: torch.Tensor  # [N, num_ws, w_dim] refined latents
    images: torch.Tensor  # [N, C, H, W] G(ws) with the returned noise, float32
    losses: dict[str, torch.Tensor]  # per image [N]: total, pixel, perceptual, prior, noise_reg
    steps_run: torch.Tensor  # [N] optimizer steps each image received (fewer with early stopping)
    noise: dict[str, torch.Tensor] = field(default_factory=dict)  # optimized maps, if any
    precision: str = "fp32"  # the autocast precision it ran in ('auto' resolved for the device)


def learning_rate(step: int, steps: int, lr: float, rampup: float, rampdown: float) -> float:
    """The official projector's schedule: linear warm-up over `rampup`, cosine decay over the last `rampdown`."""
    t = step / max(steps, 1)
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if rampup > 0:
        ramp *= min(1.0, t / rampup)
    return lr * ramp


def noise_regularization(noise: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-image penalty on spatial autocorrelation of noise maps at every octave (official projector) -> [N]."""
    total = 0
    for maps in noise.values():
        x = maps  # [N, 1, H, W]
        while True:
            total = total + (x * x.roll(1, dims=3)).mean(dim=(1, 2, 3)).square()
            total = total + (x * x.roll(1, dims=2)).mean(dim=(1, 2, 3)).square()
            if x.shape[2] <= 8:
                break
            x = F.avg_pool2d(x, 2)
    return total


def _per_image_normal(shape: Sequence[int], generators: list[torch.Generator], device: torch.device) -> torch.Tensor:
    return torch.stack([torch.randn(tuple(shape), generator=g, device=device) for g in generators])


CPU_PIXELS_PER_PASS = 256 * 256  # one 256 px image, or 64 images of 32 px, per forward/backward on a CPU

_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_synthesis(G: Generator):
    """G.synthesis under torch.compile, compiled once per generator object.

    Cached outside the module: an attribute would register the compiled wrapper as a submodule
    and change G's state dict and fingerprint.
    """
    if G not in _COMPILED:
        _COMPILED[G] = torch.compile(G.synthesis)
    return _COMPILED[G]


def estimate_w_std(G: Generator, num_samples: int = 2000, seed: int = 0) -> float:
    """sqrt(E||w - w_avg||^2): the scale of the official projector's latent perturbation."""
    with torch.no_grad():
        w = mapped_samples(G, num_samples, torch.Generator().manual_seed(seed))
        return (w - G.w_avg).square().sum(dim=1).mean().sqrt().item()


def refine(
    G: Generator,
    images: torch.Tensor,  # [N, C, H, W] targets in [-1, 1]
    init_ws: torch.Tensor,  # [N, num_ws, w_dim] starting latents (encoder output, or w_avg)
    settings: RefineSettings | None = None,  # the user-facing settings; keywords of the same names override them
    *,
    masks: torch.Tensor | None = None,  # [N, 1, H, W], 1 = known pixel; losses see known pixels only
    perceptual: nn.Module | None = None,  # from pipeline.losses.perceptual.build_perceptual
    prior: Prior | None = None,
    seeds: Sequence[int] | None = None,  # per-image random streams (default: position in the batch)
    progress: bool = False,
    on_step: Callable[[int, int], None] | None = None,  # told (steps done, steps) after each step, for progress
    # The official projector's recipe beyond the settings (benchmarks and the evaluation baseline use them):
    lr_rampup: float = 0.05,  # fraction of steps of linear warm-up
    lr_rampdown: float = 0.25,  # fraction of steps of cosine ramp-down
    noise_mode: str = "const",  # noise maps when they are not optimized
    optimize_noise: bool = False,  # optimize per-image noise maps too (official projector: yes)
    noise_regularize_weight: float = 1e5,
    w_noise_factor: float = 0.0,  # perturb w by this * w_std, decaying to 0 at noise_ramp (official: 0.05)
    noise_ramp: float = 0.75,
    early_stop_tol: float = 1e-3,  # relative improvement of an image's total loss that counts as progress
    # Unfused modulated convolution (scale activations, shared weights): its backward is 2/3 of the
    # fused (grouped) one's FLOPs (60 vs 90 GFLOP per image at 256 px) and it measured faster on CPU
    # and GPU. A fixed rule, not a per-machine timing probe, so rows never depend on where they ran.
    fused_modconv: bool | None = False,
    micro_batch: int | None = None,  # images per forward/backward pass; None: by device (see below)
    # Optimize another parameterization of the latent: (to, back) with back(to(ws)) == ws, e.g. a
    # flow's (to_latent, from_latent) or (G.mapping.inverse, mapping) to optimize in z, not w (LIA's study)
    reparameterize: tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None = None,
    **overrides: Any,  # RefineSettings fields, e.g. steps=100
) -> RefineResult:
    """Optimize one latent per image; returns refined ws, reconstructions and per-image final losses."""
    settings = dataclasses.replace(settings or RefineSettings(), **overrides)
    steps, lr, latent_space, precision = settings.steps, settings.lr, settings.latent_space, settings.precision
    pixel_weight, perceptual_weight, prior_weight = settings.pixel_weight, settings.perceptual_weight, settings.prior_weight
    early_stop_patience = settings.early_stop_patience
    if latent_space not in LATENT_SPACES:
        raise ValueError(f"latent_space must be one of {LATENT_SPACES}, got {latent_space!r}")
    n, num_ws, w_dim = init_ws.shape
    if images.shape[0] != n or (masks is not None and masks.shape[0] != n):
        raise ValueError(f"images ({images.shape[0]}), init_ws ({n}) and masks must have the same batch size")
    device = G.w_avg.device
    precision, _ = resolve_precision(precision, device)
    target = images.to(device).float()
    mask = masks.to(device).float() if masks is not None else None
    seeds = list(range(n)) if seeds is None else list(seeds)
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    latent = init_ws.to(device).float().detach()
    latent = latent.mean(dim=1) if latent_space == "w" else latent
    to_parameter, from_parameter = reparameterize or (None, None)
    if to_parameter is not None:
        with torch.no_grad():
            latent = to_parameter(latent).float()
    latent = latent.clone().requires_grad_(True)
    noise: dict[str, torch.Tensor] = {}
    if optimize_noise:
        for key, layer in G.synthesis.noise_layers().items():
            noise[key] = _per_image_normal((1, layer.resolution, layer.resolution), generators, device).requires_grad_(True)
    optimizer = torch.optim.Adam([latent, *noise.values()], betas=(0.9, 0.999), lr=lr)
    # fp16 gradients of a small loss underflow: scale the loss up, and skip a step whose gradients overflowed
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16" and device.type == "cuda")
    w_std = estimate_w_std(G) if w_noise_factor > 0 else 0.0

    def expand(lat: torch.Tensor) -> torch.Tensor:
        if from_parameter is not None:
            lat = from_parameter(lat).float()
        return lat[:, None].expand(-1, num_ws, -1) if latent_space == "w" else lat  # [N, num_ws, w_dim]

    synthesize = compiled_synthesis(G) if settings.compile else G.synthesis

    # The target's perceptual features do not depend on the latent: computed once, not per step.
    # With a mask they do (unknown pixels are filled with the current synthesis), so not then.
    target_features = None
    if perceptual is not None and mask is None and hasattr(perceptual, "reference"):
        with torch.no_grad(), autocast_for(device, precision):
            target_features = perceptual.reference(target)
    # Images do not interact, so their gradients can be computed a micro-batch at a time before one
    # optimizer step. On a CPU, large batches of large images are memory bound and slower per image
    # than one at a time (256 px on 2 cores: batch 4 at 0.64x the speed of batch 1), while small
    # images gain from batching (32 px: 16 at once 2.8x faster than one at a time); so a CPU pass
    # holds about CPU_PIXELS_PER_PASS pixels, and a GPU the whole batch. A rule, not a timing probe,
    # so rows never depend on where they ran.
    chunk = micro_batch or (max(1, CPU_PIXELS_PER_PASS // (G.img_resolution**2)) if device.type == "cpu" else n)
    spans = [slice(i, min(i + chunk, n)) for i in range(0, n, chunk)]

    def losses_at(ws: torch.Tensor, span: slice) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The losses of the images in `span`, whose latents are ws [len(span), num_ws, w_dim]."""
        rows_target = target[span]
        rows_mask = mask[span] if mask is not None else None
        rows_noise = {key: maps[span] for key, maps in noise.items()}
        zero = torch.zeros(len(rows_target), device=device)
        with autocast_for(device, precision):
            synth = synthesize(ws, noise_mode=noise_mode, fused_modconv=fused_modconv, noise_inputs=rows_noise or None)
        synth = synth.float()
        parts = {"pixel": masked_mse(synth, rows_target, rows_mask)}
        if perceptual is not None:
            with autocast_for(device, precision):
                if target_features is not None:
                    parts["perceptual"] = perceptual.distance(synth, [f[span] for f in target_features]).float()
                else:
                    # unknown pixels of the target are filled with the current synthesis, so the
                    # perceptual distance only measures differences in the known region
                    reference = rows_target if rows_mask is None else \
                        rows_mask * rows_target + (1 - rows_mask) * synth.detach()
                    parts["perceptual"] = perceptual(synth, reference).float()
        else:
            parts["perceptual"] = zero
        parts["prior"] = prior.nll(ws).float() / w_dim if prior is not None else zero
        parts["noise_reg"] = noise_regularization(rows_noise) if rows_noise else zero
        parts["total"] = (pixel_weight * parts["pixel"] + perceptual_weight * parts["perceptual"]
                          + prior_weight * parts["prior"] + noise_regularize_weight * parts["noise_reg"])
        return parts, synth

    def all_losses(perturbation: torch.Tensor | None,
                   backward: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Every image's losses, a micro-batch at a time: with backward their gradients, without it
        also the images (only the final evaluation needs them)."""
        parts_of, images_of = [], []
        source = latent if backward else latent.detach()
        for span in spans:
            ws = expand(source[span])
            if perturbation is not None:
                ws = ws + perturbation[span]
            parts, synth = losses_at(ws, span)
            if backward:
                scaler.scale(parts["total"].sum()).backward()  # images do not interact: the sum separates
            parts_of.append({k: v.detach() for k, v in parts.items()})
            if not backward:
                images_of.append(synth.detach())
        losses = {k: torch.cat([p[k] for p in parts_of]) for k in parts_of[0]}
        return losses, (torch.cat(images_of) if images_of else None)

    active = torch.ones(n, dtype=torch.bool, device=device)
    best = torch.full((n,), float("inf"), device=device)
    stale = torch.zeros(n, dtype=torch.long, device=device)
    steps_run = torch.zeros(n, dtype=torch.long, device=device)
    bar = progress_bar(total=steps, desc="refine", unit="step", enabled=progress, leave=False)
    for step in range(steps):
        bar.update(1)
        if on_step is not None:
            on_step(step, steps)
        if not active.any():
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, lr_rampup, lr_rampdown)
        perturbation = None
        if w_std > 0:
            scale = w_std * w_noise_factor * max(0.0, 1.0 - step / (steps * noise_ramp)) ** 2
            perturbation = scale * _per_image_normal((num_ws, w_dim), generators, device)
        frozen = [p.detach().clone() for p in (latent, *noise.values())]
        optimizer.zero_grad(set_to_none=True)
        parts, _ = all_losses(perturbation, backward=True)
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():
            for param, before in zip((latent, *noise.values()), frozen):
                param[~active] = before[~active]
            for maps in noise.values():  # keep noise maps zero-mean, unit-variance (official)
                maps -= maps.mean(dim=(1, 2, 3), keepdim=True)
                maps *= maps.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()
            steps_run += active.long()
            if early_stop_patience > 0:
                total = parts["total"]
                improved = total < best * (1 - early_stop_tol)
                best = torch.where(improved, total, torch.minimum(best, total))
                stale = torch.where(improved, torch.zeros_like(stale), stale + 1)
                active &= stale < early_stop_patience
    bar.close()

    with torch.no_grad():
        parts, synth = all_losses(None, backward=False)
        final_ws = expand(latent.detach()).clone()
    return RefineResult(ws=final_ws, images=synth, losses=parts,
                        steps_run=steps_run, noise={k: v.detach() for k, v in noise.items()}, precision=precision)
