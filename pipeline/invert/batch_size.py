"""`--batch-size auto`: the largest batch that fits an actor's memory, with a margin.

Refinement dominates memory: per image, the activations autograd keeps for the backward pass of
G's synthesis and the perceptual net, the gradients flowing back through them, and the transient
tensors of each layer (StyleGAN3's upsampled activations inside its filtered nonlinearities are
several times a layer's output). `refine_bytes_per_image` measures all of it without computing
anything: it runs one refinement step (forward, losses, gradient of the latents) at batch 1 and 2
on fake tensors (PyTorch's FakeTensorMode: shapes, dtypes and devices, no data) in the step's own
precision (autocast on the actor's device, so bf16 and fp16 count two bytes where they are used), and
follows every tensor's storage from its creation to its release; the difference of the two peaks
is one image's share. The memory an actor may use is its GPU's free memory (times its --num-gpus
fraction), or on a CPU the machine's available memory (or its cgroup limit) times its share of the cores.
"""

from __future__ import annotations

import math
import os
import weakref
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from pipeline.model_set import ModelSet
from pipeline.precision import autocast_for

MARGIN = 0.6  # of the actor's memory, for batches: the rest is models, decoding, allocator slack
MAX_AUTO_BATCH = {"cuda": 64, "cpu": 16}  # beyond these, batching buys nothing measurable


class PeakLiveBytes(TorchDispatchMode):
    """The most bytes of tensor storage alive at once among the tensors made inside this mode
    (views share their base's storage; a storage is released when its last tensor is)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.storages: dict[int, list[int]] = {}  # storage id -> [tensors holding it, bytes]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._hold(tensor)
        return out

    def _hold(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        held = self.storages.get(key)
        if held is None:
            held = self.storages[key] = [0, storage.nbytes()]
            self.live += held[1]
            self.peak = max(self.peak, self.live)
        held[0] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        held = self.storages.get(key)
        if held is not None:
            held[0] -= 1
            if held[0] == 0:
                self.live -= held[1]
                del self.storages[key]


def step_peak_bytes(models: ModelSet, n: int, precision: str) -> int:
    """Peak bytes of the tensors one refinement step makes at batch n (models on their own device)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    G, perceptual, prior = models.G, models.perceptual, models.prior
    device = G.w_avg.device
    with FakeTensorMode(allow_non_fake_inputs=True):
        peak = PeakLiveBytes()
        with peak:
            target = torch.zeros(n, G.img_channels, G.img_resolution, G.img_resolution, device=device)
            ws = torch.zeros(n, G.num_ws, G.w_dim, device=device, requires_grad=True)
            reference = None
            if perceptual is not None and hasattr(perceptual, "reference"):
                with torch.no_grad(), autocast_for(device, precision):
                    reference = perceptual.reference(target)
            with autocast_for(device, precision):
                synth = G.synthesis(ws, noise_mode="const", fused_modconv=False)
            synth = synth.float()
            loss = (synth - target).square().mean()
            if perceptual is not None:
                with autocast_for(device, precision):
                    distance = perceptual.distance(synth, reference) if reference is not None \
                        else perceptual(synth, target)
                loss = loss + distance.float().sum()
            if prior is not None:
                loss = loss + prior.nll(ws).float().sum()
            torch.autograd.grad(loss, [ws])
            del synth, loss, reference
        return peak.peak


def refine_bytes_per_image(models: ModelSet, precision: str = "fp32") -> int:
    """Bytes one more image in a batch costs at the peak of a refinement step in `precision`."""
    return max(step_peak_bytes(models, 2, precision) - step_peak_bytes(models, 1, precision), 1)


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
