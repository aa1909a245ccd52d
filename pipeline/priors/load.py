"""Load either kind of prior from one `--prior` URI: the gaussianized prior or a flow.

Both are safetensors files whose header says what they are: a gaussianized prior's metadata format
is 'latentmill-prior/1', a flow is a latentmill bundle holding a 'flow' network. Every command
that takes `--prior` loads through here, so each accepts either.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import torch

from pipeline.errors import CheckpointError
from pipeline.models.stylegan2 import Generator
from pipeline.priors.flow import FlowPrior
from pipeline.priors.gaussian import PRIOR_FORMAT, GaussianizedPrior
from pipeline.priors.latent_prior import LatentPrior
from pipeline.uris import read_bytes

Prior = LatentPrior  # GaussianizedPrior or FlowPrior
PRIOR_KINDS = {GaussianizedPrior: "gaussianized", FlowPrior: "flow"}


def prior_kind(prior: Prior) -> str:
    """'gaussianized' or 'flow', as stores and reports name it."""
    return PRIOR_KINDS[type(prior)]


def exact_latent(G: Generator, prior: Prior | None) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]] | None:
    """Where a latent's exact z comes from, and the map ws [..., w_dim] -> z [..., dim]: the
    generator's own invertible mapping ('mapping') first, else a flow prior ('flow'), else None."""
    inverse = getattr(G.mapping, "inverse", None)
    if inverse is not None:
        return "mapping", inverse
    if isinstance(prior, FlowPrior):
        return "flow", prior.to_latent
    return None


def load_prior(uri: str, *, generator: Generator | None = None, setting: str = "--prior") -> Prior:
    """The prior or flow at `uri`; with `generator`, one made for another generator is refused."""
    head = read_bytes(uri, setting=setting)
    try:
        header = json.loads(head[8 : 8 + int.from_bytes(head[:8], "little")])
        metadata = header.get("__metadata__") or {}
    except (ValueError, UnicodeDecodeError):
        metadata = {}
    if metadata.get("format") == PRIOR_FORMAT:
        return GaussianizedPrior.load(uri, generator=generator, setting=setting)
    if "latentmill.networks" in metadata:
        return FlowPrior.load(uri, generator=generator, setting=setting)
    raise CheckpointError(f"{setting} {uri}: neither a latentmill prior (`latentmill fit-prior`) nor a flow "
                          "(`latentmill fit-flow`)")
