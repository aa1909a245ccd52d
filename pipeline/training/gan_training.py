"""StyleGAN2 training for small data sets (pure torch; the Ray Train edge is jobs/train_generator.py).

Following StyleGAN2 / StyleGAN2-ADA: non-saturating logistic loss, lazy R1 on reals every
`r1_interval` steps, optional lazy path-length regularization, style mixing, an EMA generator, and
the lazy-regularization correction of Adam's learning rate and betas. For small data, every image
D sees (real or fake) goes through the same differentiable augmentation (DiffAugment: colour,
translation, cutout; Zhao et al. 2020), which keeps D from memorizing a few thousand images.

Quality figure: KID (unbiased, cubic polynomial kernel) on the features of a *fixed, seeded,
randomly initialized* convnet, `RandomFeatures`. No pretrained feature extractor (Inception) can be
had offline; random convolutional features still give a consistent two-sample statistic that is
comparable across runs and checkpoints, but their values are not comparable with published KIDs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.stylegan2 import Discriminator, Generator


# ---- differentiable augmentation --------------------------------------------------------------
def diff_augment(x: torch.Tensor, policy: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """DiffAugment on [N, C, H, W] in [-1, 1]; `policy` is a comma list of color, translation, cutout."""
    n, _, h, w = x.shape
    device = x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=device)

    for op in filter(None, policy.split(",")):
        if op == "color":
            x = x + (rand(n, 1, 1, 1) - 0.5)  # brightness
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * (rand(n, 1, 1, 1) * 2) + mean  # saturation
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * (rand(n, 1, 1, 1) + 0.5) + mean  # contrast
        elif op == "translation":
            shift = (rand(2, n) * 2 - 1) * 0.125  # up to 1/8 of the image, as fractions of [-1, 1] coordinates
            theta = torch.zeros(n, 2, 3, device=device)
            theta[:, 0, 0] = theta[:, 1, 1] = 1
            theta[:, 0, 2], theta[:, 1, 2] = shift[0] * 2, shift[1] * 2
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        elif op == "cutout":
            size = (h // 2, w // 2)
            cy = (rand(n) * (h + 1 - size[0] % 2)).long() - size[0] // 2
            cx = (rand(n) * (w + 1 - size[1] % 2)).long() - size[1] // 2
            ys = torch.arange(h, device=device)[None, :, None]
            xs = torch.arange(w, device=device)[None, None, :]
            inside = ((ys >= cy[:, None, None]) & (ys < cy[:, None, None] + size[0]) &
                      (xs >= cx[:, None, None]) & (xs < cx[:, None, None] + size[1]))
            x = x * (~inside)[:, None].to(x.dtype)
        else:
            raise ValueError(f"unknown DiffAugment op {op!r}; use color, translation, cutout")
    return x


# ---- losses ---------------------------------------------------------------------------------
@dataclass
class GANLossSettings:
    r1_gamma: float = 1.0  # small-data, low-resolution values are around 0.1-1
    r1_interval: int = 16
    pl_weight: float = 0.0  # 0 = no path-length regularization (StyleGAN2 uses 2 at high resolution)
    pl_interval: int = 4
    pl_decay: float = 0.01
    style_mixing_prob: float = 0.9
    augment: str = "color,translation,cutout"


def mapped_with_mixing(G: Generator, n: int, generator: torch.Generator, mixing_prob: float,
                       update_w_avg: bool = True) -> torch.Tensor:
    """ws [n, num_ws, w_dim] for training: two zs cross over at a random layer with `mixing_prob`."""
    device = G.w_avg.device
    z = torch.randn(2, n, G.z_dim, generator=generator, device=device)
    ws = G.mapping(z[0], update_w_avg=update_w_avg)
    if mixing_prob > 0:
        cut = torch.randint(1, G.num_ws, (n, 1), generator=generator, device=device)
        mix = torch.rand(n, 1, generator=generator, device=device) < mixing_prob
        other = G.mapping(z[1])
        layer = torch.arange(G.num_ws, device=device)[None]
        ws = torch.where((mix & (layer >= cut))[..., None], other, ws)
    return ws


def generator_loss(G: Generator, D: Discriminator, n: int, settings: GANLossSettings,
                   generator: torch.Generator) -> torch.Tensor:
    """Non-saturating loss: softplus(-D(aug(G(z))))."""
    ws = mapped_with_mixing(G, n, generator, settings.style_mixing_prob)
    fake = G.synthesis(ws, noise_mode="random")
    return F.softplus(-D(diff_augment(fake, settings.augment, generator))).mean()


def discriminator_loss(G: Generator, D: Discriminator, reals: torch.Tensor, settings: GANLossSettings,
                       generator: torch.Generator) -> torch.Tensor:
    """softplus(D(aug(fake))) + softplus(-D(aug(real)))."""
    with torch.no_grad():
        ws = mapped_with_mixing(G, reals.shape[0], generator, settings.style_mixing_prob, update_w_avg=False)
        fake = G.synthesis(ws, noise_mode="random")
    fake_logits = D(diff_augment(fake, settings.augment, generator))
    real_logits = D(diff_augment(reals, settings.augment, generator))
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_penalty(D: Discriminator, reals: torch.Tensor, settings: GANLossSettings,
               generator: torch.Generator) -> torch.Tensor:
    """(gamma / 2) * E||grad_x D(aug(x))||^2 on reals, scaled by the interval (lazy regularization)."""
    x = reals.detach().requires_grad_(True)
    logits = D(diff_augment(x, settings.augment, generator))
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3)).mean() * (settings.r1_gamma / 2) * settings.r1_interval


def path_length_penalty(G: Generator, n: int, pl_mean: torch.Tensor, settings: GANLossSettings,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """E[(||J_w^T y|| - a)^2] with a the running mean of the lengths; returns (penalty, new a)."""
    ws = mapped_with_mixing(G, n, generator, settings.style_mixing_prob, update_w_avg=False)
    img = G.synthesis(ws, noise_mode="random")
    noise = torch.randn(img.shape, generator=generator, device=img.device) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()
    new_mean = pl_mean.lerp(lengths.mean().detach(), settings.pl_decay)
    return (lengths - new_mean).square().mean() * settings.pl_weight * settings.pl_interval, new_mean


def lazy_adam(params, lr: float, interval: int) -> torch.optim.Adam:
    """Adam(betas=(0, 0.99)) corrected for a regularizer applied every `interval` steps (StyleGAN2)."""
    ratio = interval / (interval + 1) if interval > 0 else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=(0.0, 0.99**ratio), eps=1e-8)


@torch.no_grad()
def update_ema(G_ema: Generator, G: Generator, beta: float) -> None:
    """G_ema <- lerp(G, G_ema, beta); buffers (noise maps, w_avg) are copied."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def ema_beta(batch_size: int, half_life_images: float) -> float:
    return 0.5 ** (batch_size / max(half_life_images, 1e-8))


def make_ema(G: Generator) -> Generator:
    return copy.deepcopy(G).eval().requires_grad_(False)


# ---- quality figure ----------------------------------------------------------------------------
class RandomFeatures(nn.Module):
    """A fixed, seeded, randomly initialized convnet: 512-d features for KID (see module docstring)."""

    def __init__(self, seed: int = 2024, channels: int = 3) -> None:
        super().__init__()
        rng = torch.Generator().manual_seed(seed)
        layers, ch = [], channels
        for out in (64, 128, 256, 512):
            conv = nn.Conv2d(ch, out, 3, 2, 1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=rng) * math.sqrt(2 / (ch * 9)))
                conv.bias.zero_()
            layers += [conv, nn.LeakyReLU(0.2)]
            ch = out
        self.net = nn.Sequential(*layers).eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
        return self.net(x).mean(dim=(2, 3))  # [N, 512]


def kid(features_a: torch.Tensor, features_b: torch.Tensor, *, subsets: int = 10, subset_size: int = 200,
        seed: int = 0) -> float:
    """Unbiased kernel inception distance with k(x, y) = (x.y / d + 1)^3, averaged over subsets."""
    rng = torch.Generator().manual_seed(seed)
    a, b = features_a.double().cpu(), features_b.double().cpu()
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    total = 0.0
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=rng)[:m]]
        y = b[torch.randperm(len(b), generator=rng)[:m]]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        total += ((kxx.sum() - kxx.diag().sum() + kyy.sum() - kyy.diag().sum()) / (m * (m - 1))
                  - 2 * kxy.mean()).item()
    return total / subsets
