"""Gradient averaging across data-parallel workers, by hand (as StyleGAN2-ADA does): the one
gradient-synchronisation approach of every latentmill training job.

Why not DDP: the GAN losses call the generator's sub-networks (mapping, synthesis) directly and
run lazy regularizers on some steps only, which a DDP wrapper would not see (or would see as unused
parameters); averaging every gradient after backward works whatever the call pattern, costs one
flat all-reduce per update, and keeps the encoder and identity loops identical in structure.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def average_gradients(module: nn.Module) -> None:
    """All-reduce and average the gradients of `module` over the default process group (no-op alone)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(module: nn.Module) -> None:
    """Make every worker start from rank 0's weights and buffers."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)
