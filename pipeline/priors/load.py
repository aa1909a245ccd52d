"""Load either kind of prior from one `--prior` URI: the gaussianized prior or a flow.

Both are safetensors files whose header says what they are: a gaussianized prior's metadata format
is 'latentmill-prior/1', a flow is a latentmill bundle holding a 'flow' network. Every command
that takes `--prior` loads through here, so each accepts either.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.errors import CheckpointError
from pipeline.models.bundle import read_bundle, safetensors_metadata
from pipeline.models.checkpoints import build_network
from pipeline.models.stylegan2 import Generator
from pipeline.priors.flow import FLOW_NETWORK, FlowPrior
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
    data = read_bytes(uri, setting=setting)  # read once, handed to the loader it picks
    try:
        metadata = safetensors_metadata(data)
    except (ValueError, UnicodeDecodeError):
        metadata = {}
    if metadata.get("format") == PRIOR_FORMAT:
        return GaussianizedPrior.load(uri, generator=generator, setting=setting, data=data)
    if "latentmill.networks" in metadata:
        return load_flow(uri, generator=generator, setting=setting, data=data)
    raise CheckpointError(f"{setting} {uri}: neither a latentmill prior (`latentmill fit-prior`) nor a flow "
                          "(`latentmill fit-flow`)")


def load_flow(uri: str, *, generator: Generator | None = None, setting: str = "--prior",
              data: bytes | None = None) -> FlowPrior:
    """A saved flow (`data`: its bytes, when the caller has read them already)."""
    data = read_bytes(uri, setting=setting) if data is None else data
    records, _ = read_bundle(data, source=f"{setting} {uri}")
    record = records.get(FLOW_NETWORK)
    if record is None or record.short_class_name != FlowPrior.__name__:
        raise CheckpointError(f"{setting} {uri}: a latentmill bundle without a flow (it holds {sorted(records)})")
    flow = build_network(record, source=f"{setting} {uri}", name=FLOW_NETWORK)
    if generator is not None:
        flow.check_generator(generator)
    return flow
