"""`--batch-size auto`: the largest batch that fits an actor's memory, with a margin.

Refinement dominates memory: per image, the activations autograd keeps for the backward pass of
G's synthesis and the perceptual net, and about as much again in gradients while the backward runs.
`refine_bytes_per_image` counts the saved activations exactly, without computing anything: it
runs one loss evaluation at batch 1 and 2 on copies of the models on PyTorch's "meta" device and
sums the bytes autograd saves (saved-tensor hooks); the difference is one image's share. The
memory an actor may use is its GPU's free memory (times its --num-gpus fraction), or on a CPU the
machine's available memory (or its cgroup limit) times its share of the cores.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import torch

from pipeline.models.model_set import ModelSet

MARGIN = 0.6  # of the actor's memory, for batches: the rest is models, decoding, allocator slack
GRADIENT_FACTOR = 2.0  # saved activations + the gradients flowing back through them
MAX_AUTO_BATCH = {"cuda": 64, "cpu": 16}  # beyond these, batching buys nothing measurable


def _on_meta(models: ModelSet) -> ModelSet:
    """Copies of the models that refinement runs, on the meta device (shapes only, no data)."""
    def meta(module):
        return copy.deepcopy(module).to("meta") if module is not None else None

    return ModelSet(G=meta(models.G), perceptual=meta(models.perceptual), prior=meta(models.prior))


def _saved_bytes(models: ModelSet, n: int) -> int:
    """Bytes autograd saves for one loss evaluation at batch n; `models` on the meta device."""
    G, perceptual, prior = models.G, models.perceptual, models.prior
    resolution, channels = G.img_resolution, G.img_channels
    images = torch.empty(n, channels, resolution, resolution, device="meta")
    ws = torch.empty(n, G.num_ws, G.w_dim, device="meta", requires_grad=True)
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        seen[id(tensor)] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        synth = G.synthesis(ws, noise_mode="const", fused_modconv=False)
        loss = (synth - images).square().mean()
        if perceptual is not None:
            with torch.no_grad():
                reference = perceptual.reference(images) if hasattr(perceptual, "reference") else None
            loss = loss + (perceptual.distance(synth, reference) if reference is not None
                           else perceptual(synth, images)).sum()
        if prior is not None:
            loss = loss + prior.nll(ws).sum()
    return sum(seen.values())


def refine_bytes_per_image(models: ModelSet) -> int:
    """Bytes one more image in a batch costs during refinement (activations and their gradients)."""
    meta = _on_meta(models)
    return int(GRADIENT_FACTOR * max(_saved_bytes(meta, 2) - _saved_bytes(meta, 1), 1))


def _cpu_available_bytes() -> int:
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            available = min(available or int(limit), int(limit))
    except (OSError, ValueError):
        pass
    return available if available is not None else 8 * 2**30


def actor_memory_bytes(device: torch.device, *, num_gpus: float, cpus_per_actor: float) -> int:
    """The memory this actor may fill: its share of the GPU's free memory, or of the machine's."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * min(1.0, num_gpus or 1.0))
    return int(_cpu_available_bytes() * min(1.0, cpus_per_actor / (os.cpu_count() or 1)))


def largest_batch(per_image: int, memory: int, device: torch.device) -> int:
    cap = MAX_AUTO_BATCH.get(device.type, MAX_AUTO_BATCH["cpu"])
    return max(1, min(cap, math.floor(MARGIN * memory / per_image)))


def check_batch(batch: int, per_image: int, memory: int) -> str | None:
    """A sentence saying why an explicit batch does not fit, or None when it does."""
    if batch * per_image <= memory:
        return None
    fits = max(1, math.floor(MARGIN * memory / per_image))
    return (f"--batch-size {batch} needs about {batch * per_image / 2**30:.1f} GiB for refinement "
            f"({per_image / 2**20:.0f} MiB per image), but an actor here has {memory / 2**30:.1f} GiB; "
            f"use --batch-size {fits} or --batch-size auto")
