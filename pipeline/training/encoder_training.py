"""Training the latent regressor on samples of a frozen generator (pure torch; Ray lives in runtime/).

Each step draws z, maps it to W+ (with style mixing, so E sees W+ that W alone never produces),
renders x = G(w+), hides pixels with a random mask (or builds a collage of two samples), and
trains E(x * m, m) with
    pixel_weight * MSE(G(E(.)), x) + perceptual_weight * P(G(E(.)), x) + latent_weight * MSE(E(.), w+)
over the whole image, so E learns to complete what it cannot see. Collages have no true latent:
their latent term is skipped and their target is the collage itself (E learns to project it).
Optionally a fraction of each batch comes from real images (pixel and perceptual terms only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.masks import DEFAULT_KIND_WEIGHTS, random_masks
from pipeline.models.encoder import prepare_inputs
from pipeline.models.stylegan2 import Generator
from pipeline.sampling import random_labels


@dataclass
class TrainingBatch:
    inputs: torch.Tensor  # [N, C, R, R] what E sees (masked image or collage), before masking
    masks: torch.Tensor  # [N, 1, R, R] E's mask input (1 = known)
    targets: torch.Tensor  # [N, C, R, R] the image G(E(...)) should reproduce
    ws: torch.Tensor  # [N, num_ws, w_dim] true latents (meaningless where latent_valid is False)
    latent_valid: torch.Tensor  # [N] bool: the true latent of the target is known
    kinds: list[str]


@dataclass
class LossWeights:
    pixel: float = 1.0
    perceptual: float = 1.0
    latent: float = 1.0
    adversarial: float = 0.0  # LIA's beta2 (0.1): non-saturating loss of D on the reconstructions


@torch.no_grad()
def sample_ws(G: Generator, n: int, generator: torch.Generator, *, style_mixing_prob: float = 0.9) -> torch.Tensor:
    """W+ samples [n, num_ws, w_dim]: with probability `style_mixing_prob` two ws cross over at a random layer."""
    device = G.w_avg.device
    z = torch.randn(2, n, G.z_dim, generator=generator, device=device)
    c = random_labels(G, n, generator)
    w1, w2 = G.mapping(z[0], c), G.mapping(z[1], c)
    cut = torch.randint(1, G.num_ws, (n, 1), generator=generator, device=device)
    mix = torch.rand(n, 1, generator=generator, device=device) < style_mixing_prob
    layer = torch.arange(G.num_ws, device=device)[None]
    take_second = (mix & (layer >= cut))[..., None]  # [n, num_ws, 1]
    return torch.where(take_second, w2, w1)


@torch.no_grad()
def sample_training_batch(G: Generator, n: int, generator: torch.Generator, *, style_mixing_prob: float = 0.9,
                          mask_weights: dict[str, float] | None = None, real_images: torch.Tensor | None = None,
                          real_fraction: float = 0.0) -> TrainingBatch:
    """n training samples; the first round(n * real_fraction) are drawn from `real_images` [M, C, R, R]
    (masked like the rest, but with no latent target: only pixel and perceptual terms apply)."""
    device = G.w_avg.device
    ws = sample_ws(G, n, generator, style_mixing_prob=style_mixing_prob)
    images = G.synthesis(ws, noise_mode="const")
    num_real = round(n * real_fraction) if real_images is not None else 0
    if num_real:
        picks = torch.randint(len(real_images), (num_real,), generator=generator, device=device).cpu()
        images[:num_real] = real_images[picks].to(device)
    masks, kinds = random_masks(n, G.img_resolution, generator=torch.Generator().manual_seed(
        int(torch.randint(2**31, (), generator=generator, device=device))), kind_weights=mask_weights or
        DEFAULT_KIND_WEIGHTS)
    masks = masks.to(device)
    collage = torch.tensor([k == "collage" for k in kinds], device=device)
    others = images.roll(1, dims=0)  # the second image of each collage
    inputs = torch.where(collage[:, None, None, None], masks * images + (1 - masks) * others, images)
    e_masks = torch.where(collage[:, None, None, None], torch.ones_like(masks), masks)
    latent_valid = ~collage
    latent_valid[:num_real] = False
    return TrainingBatch(inputs=inputs, masks=e_masks, targets=inputs, ws=ws, latent_valid=latent_valid, kinds=kinds)


def reconstruct(E: nn.Module, G: Generator, batch: TrainingBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """E's latents [N, num_ws, w_dim] for the batch and G's images of them [N, C, R, R]."""
    x, m = prepare_inputs(batch.inputs, batch.masks)
    ws_hat = E(x, m)
    return ws_hat, G.synthesis(ws_hat, noise_mode="const")


def encoder_losses(E: nn.Module, G: Generator, batch: TrainingBatch, *, perceptual: nn.Module | None,
                   weights: LossWeights, discriminator: nn.Module | None = None,
                   reconstruction: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Scalar losses (means over the batch) for one optimizer step; `reconstruction` is
    `reconstruct(E, G, batch)` when the caller needs the images too (the adversarial step does)."""
    ws_hat, recon = reconstruction if reconstruction is not None else reconstruct(E, G, batch)
    pixel = (recon - batch.targets).square().mean()
    perc = perceptual(recon, batch.targets).mean() if perceptual is not None else torch.zeros((), device=recon.device)
    valid = batch.latent_valid.float()
    per_sample = (ws_hat - batch.ws).square().mean(dim=(1, 2))
    latent = (per_sample * valid).sum() / valid.sum().clamp_min(1.0)
    total = weights.pixel * pixel + weights.perceptual * perc + weights.latent * latent
    losses = {"total": total, "pixel": pixel, "perceptual": perc, "latent": latent}
    if discriminator is not None and weights.adversarial > 0:
        trainable = [p.requires_grad for p in discriminator.parameters()]
        discriminator.requires_grad_(False)  # E's step must not leave gradients in D
        losses["adversarial"] = F.softplus(-discriminator(recon)).mean()
        for p, flag in zip(discriminator.parameters(), trainable):
            p.requires_grad_(flag)
        losses["total"] = total + weights.adversarial * losses["adversarial"]
    return losses


def _whole_groups(D: nn.Module, images: torch.Tensor) -> torch.Tensor:
    mbstd = getattr(getattr(D, "b4", None), "mbstd", None)
    group = getattr(mbstd, "group_size", None) or 1
    keep = len(images) - len(images) % min(group, len(images)) if len(images) else 0
    return images[:keep]


def discriminator_losses(D: nn.Module, reals: torch.Tensor, fakes: torch.Tensor, *, r1_gamma: float) -> dict[str, torch.Tensor]:
    """LIA's discriminator, fine-tuned beside the encoder: softplus(D(recon)) + softplus(-D(real)) and
    R1 = (gamma / 2) E||grad_x D(x)||^2 on the reals, as in GAN training (here every step). Each set
    is cut to a multiple of D's minibatch-std group, which D needs."""
    reals, fakes = _whole_groups(D, reals), _whole_groups(D, fakes)
    reals = reals.detach().requires_grad_(r1_gamma > 0)
    real_logits = D(reals)
    loss = F.softplus(D(fakes.detach())).mean() + F.softplus(-real_logits).mean()
    r1 = torch.zeros((), device=reals.device)
    if r1_gamma > 0:
        (grad,) = torch.autograd.grad(real_logits.sum(), reals, create_graph=True)
        r1 = grad.square().sum(dim=(1, 2, 3)).mean() * (r1_gamma / 2)
    return {"total": loss + r1, "d_loss": loss, "r1": r1}


def encoder_step(E: nn.Module, G: Generator, batch: TrainingBatch, optimizer: torch.optim.Optimizer, *,
                 perceptual: nn.Module | None, weights: LossWeights, D: nn.Module | None = None,
                 optimizer_D: torch.optim.Optimizer | None = None, r1_gamma: float = 1.0) -> dict[str, torch.Tensor]:
    """One step of train-encoder (and of the LIA study's fine-tuning, which must train exactly so): E's losses
    and update, then, with a discriminator D, D's own step on the batch's whole images (never collages) against
    the reconstructions. Returns every loss."""
    from pipeline.training.loop import optimizer_step

    reconstruction = reconstruct(E, G, batch)
    losses = encoder_losses(E, G, batch, perceptual=perceptual, weights=weights, discriminator=D,
                            reconstruction=reconstruction)
    optimizer_step(optimizer, E, losses["total"])
    whole = torch.tensor([kind != "collage" for kind in batch.kinds], device=batch.targets.device)
    if D is not None and optimizer_D is not None and weights.adversarial > 0 and bool(whole.any()):
        d_losses = discriminator_losses(D, batch.targets[whole], reconstruction[1], r1_gamma=r1_gamma)
        optimizer_step(optimizer_D, D, d_losses.pop("total"))
        losses.update(d_losses)
    return losses


@torch.no_grad()
def evaluate(E: nn.Module, G: Generator, batch: TrainingBatch, *, perceptual: nn.Module | None) -> dict[str, float]:
    """Held-out figures: latent MSE (where known), pixel MSE, pixel MSE on hidden pixels, perceptual."""
    was_training = E.training
    E.eval()
    x, m = prepare_inputs(batch.inputs, batch.masks)
    ws_hat = E(x, m)
    recon = G.synthesis(ws_hat, noise_mode="const")
    sq = (recon - batch.targets).square()
    hidden = (1 - m).expand_as(sq)
    valid = batch.latent_valid
    result = {
        "eval_latent_mse": (ws_hat[valid] - batch.ws[valid]).square().mean().item() if valid.any() else float("nan"),
        "eval_pixel_mse": sq.mean().item(),
        "eval_masked_pixel_mse": ((sq * hidden).sum() / hidden.sum()).item() if hidden.sum() > 0 else float("nan"),
        "eval_perceptual": perceptual(recon, batch.targets).mean().item() if perceptual is not None else float("nan"),
        "eval_w_avg_latent_mse": (E.w_avg - batch.ws[valid]).square().mean().item() if valid.any() else float("nan"),
    }
    E.train(was_training)
    return result
