"""Seeded sampling from a generator, with the official code's seed convention."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.models.stylegan2 import Generator


def parse_seeds(spec: str) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7]."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"invalid seed range {part!r}: use e.g. '0-7' or '1,5,9'")
        seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


def z_from_seeds(seeds: list[int], z_dim: int) -> torch.Tensor:
    """z [N, z_dim], one numpy RandomState(seed) draw per seed, as NVlabs' gen_images.py does."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


@torch.no_grad()
def generate_images(G: Generator, seeds: list[int], *, truncation_psi: float = 1.0, noise_mode: str = "const",
                    batch_size: int = 16, class_idx: int | None = None) -> torch.Tensor:
    """Images [N, C, H, W] for the given seeds, on G's device."""
    device = G.w_avg.device
    z = z_from_seeds(seeds, G.z_dim).to(device)
    c = None
    if G.c_dim:
        if class_idx is None:
            raise ValueError(f"this generator is conditional ({G.c_dim} classes): pass a class index")
        c = torch.zeros(len(seeds), G.c_dim, device=device)
        c[:, class_idx] = 1
    out = [G(z[i : i + batch_size], None if c is None else c[i : i + batch_size], truncation_psi=truncation_psi,
             noise_mode=noise_mode) for i in range(0, len(seeds), batch_size)]
    return torch.cat(out)
