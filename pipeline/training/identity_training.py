"""Contrastive training of an identity embedding (EmbeddingNet) on unlabeled images, pure torch.

Each image is its own identity. Two views of it are made with the degradations a GAN
reconstruction shows (slight shifts and scaling, blur, colour and contrast drift, noise, small
occlusions); the InfoNCE loss (SimCLR's NT-Xent) pulls views of one image together and pushes
other images away. The result scores "is this reconstruction still the same thing?" as FaceNet
does for faces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.models.embedding import EmbeddingNet


def degrade(images: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """A random reconstruction-like degradation of images [N, C, H, W] in [-1, 1]."""
    n, c, h, w = images.shape
    device = images.device

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=device)

    # affine: scale 0.9..1.1, shift up to 6% of the side, rotation up to 6 degrees
    scale = 1 + strength * 0.1 * (2 * uniform(n) - 1)
    angle = strength * 0.1 * (2 * uniform(n) - 1)
    shift = strength * 0.12 * (2 * uniform(n, 2) - 1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    x = F.grid_sample(images + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    # blur: mix with a 3x3 box-blurred copy
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    amount = strength * uniform(n, 1, 1, 1)
    x = x + amount * (blurred - x)
    # colour: brightness, contrast, saturation drift
    x = x + strength * 0.2 * (2 * uniform(n, 1, 1, 1) - 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * (1 + strength * 0.3 * (2 * uniform(n, 1, 1, 1) - 1))
    gray = x.mean(dim=1, keepdim=True)
    x = gray + (x - gray) * (1 + strength * 0.4 * (2 * uniform(n, 1, 1, 1) - 1))
    # noise and a small occlusion (a quarter-side square of mid gray)
    x = x + strength * 0.05 * uniform(n, 1, 1, 1) * torch.randn(x.shape, generator=generator, device=device)
    side = max(h // 4, 1)
    ys = (uniform(n) * (h - side + 1)).long()
    xs = (uniform(n) * (w - side + 1)).long()
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    box = ((rows >= ys.view(n, 1, 1)) & (rows < (ys + side).view(n, 1, 1)) & (cols >= xs.view(n, 1, 1))
           & (cols < (xs + side).view(n, 1, 1))).unsqueeze(1)
    occlude = (uniform(n, 1, 1, 1) < 0.5 * strength) & box
    x = torch.where(occlude, torch.zeros_like(x), x)
    return x.clamp(-1, 1)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE between embeddings a[i] <-> b[i] of N pairs (the other 2N-2 are negatives)."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    n = a.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(a.device)
    return F.cross_entropy(logits, targets)


@torch.no_grad()
def retrieval_accuracy(model: EmbeddingNet, images: torch.Tensor, generator: torch.Generator,
                       strength: float = 1.0, batch: int = 256) -> dict[str, float]:
    """Top-1 accuracy of finding each image from a degraded view among all images, and the mean
    cosine of matching vs non-matching pairs: the figures the model card reports."""
    model.eval()
    clean = torch.cat([model.embed(x) for x in images.split(batch)])
    views = torch.cat([model.embed(degrade(x, generator, strength)) for x in images.split(batch)])
    cos = views @ clean.T
    n = len(images)
    matching = cos.diagonal()
    others = (cos.sum() - matching.sum()) / max(n * n - n, 1)
    return {"top1": (cos.argmax(dim=1) == torch.arange(n, device=cos.device)).float().mean().item(),
            "cosine_same": matching.mean().item(), "cosine_other": others.item()}
