"""Seeded sampling from a generator: the one rule every stage, study and job draws by.

- Mapped samples of G (`mapped_samples`): z ~ N(0, I) and, for a conditional G, uniform one-hot labels,
  both from the caller's stream, so a conditional generator works everywhere an unconditional one does.
- Named streams (`stream`, `stream_seed`): a run's seed and a name (a stage, a group, a candidate's
  index) give a stream of its own, so what one draw gives never depends on how many were drawn before
  it, on batch sizes, or on which worker drew it.
- Seeds as images (`z_from_seeds`, `generate_images`): the official code's convention (numpy
  RandomState(seed) per image), so images match gen_images.py.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.models.stylegan2 import Generator


def stream_seed(seed: int, *names: object) -> int:
    """A 63-bit seed for the stream `names` of a run seeded `seed` (sha256 of both: streams never overlap)."""
    digest = hashlib.sha256(repr((int(seed), *(str(n) for n in names))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def stream(seed: int, *names: object, device: str | torch.device = "cpu") -> torch.Generator:
    """The torch random stream `names` of a run seeded `seed`."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, *names))


def random_labels(G: Generator, n: int, rng: torch.Generator) -> torch.Tensor | None:
    """n uniform one-hot labels [n, c_dim] for a conditional G from `rng`; None for an unconditional one."""
    if not G.c_dim:
        return None
    return F.one_hot(torch.randint(G.c_dim, (n,), device=rng.device, generator=rng), G.c_dim).float()


@torch.no_grad()
def mapped_samples(G: Generator, n: int, rng: torch.Generator, *, chunk: int = 4096) -> torch.Tensor:
    """n latents w = mapping(z, c) [n, w_dim] drawn from `rng` (z first, then labels if G is conditional):
    the distribution every prior is fitted to and every study samples. Mapped `chunk` rows at a time on
    G's device; returned there."""
    z = torch.randn(n, G.z_dim, device=rng.device, generator=rng)
    c = random_labels(G, n, rng)
    device = G.w_avg.device
    return torch.cat([G.mapping(z[i : i + chunk].to(device), None if c is None else c[i : i + chunk].to(device))[:, 0]
                      for i in range(0, n, chunk)]) if n else torch.zeros(0, G.w_dim, device=device)


def mapped_ws(G: Generator, n: int, rng: torch.Generator) -> torch.Tensor:
    """`mapped_samples` broadcast to every layer: ws [n, num_ws, w_dim], as G.mapping returns them."""
    return mapped_samples(G, n, rng).unsqueeze(1).repeat(1, G.num_ws, 1)


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
