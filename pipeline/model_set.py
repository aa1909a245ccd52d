"""The one loader of the models a job runs on: a generator and the models made for it.

invert, evaluate, curate, rebalance, report and channels all load through `load_model_set`, so
every prior and encoder is checked against the generator in this one place (a prior or encoder
fitted for another generator is refused, naming the setting), and a store's recorded generator
is checked against the fingerprint the store recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipeline.errors import GeneratorMismatchError
from pipeline.models.encoder import AnyEncoder, encoder_from_records, load_encoder
from pipeline.models.fingerprint import fingerprint
from pipeline.models.stylegan2 import Discriminator, Generator
from pipeline.priors.load import Prior, load_prior
from pipeline.models.identity import IdentityModel


@dataclass
class ModelSet:
    G: Generator
    E: AnyEncoder | None = None
    prior: Prior | None = None  # the gaussianized prior or a flow
    perceptual: nn.Module | None = None
    identity: IdentityModel | None = None
    names: dict[str, str] = field(default_factory=dict)  # e.g. {"perceptual": "lpips", "identity": "facenet-vggface2"}
    D: Discriminator | None = None

    @property
    def device(self) -> torch.device:
        return self.G.w_avg.device

    def to(self, device: str | torch.device) -> ModelSet:
        """Every model moved to `device` (in place; returns self)."""
        for name in ("G", "E", "prior", "perceptual", "identity", "D"):
            module = getattr(self, name)
            if module is not None:
                setattr(self, name, module.to(device))
        return self

    def fingerprints(self) -> dict[str, str | None]:
        """The fingerprint of every model that shapes a result (None where none is loaded)."""
        def fp(module: Any, name: str | None = None) -> str | None:
            if module is None:
                return None
            return fingerprint(module) if name is None else f"{name}:{fingerprint(module)}"

        return {"generator": fp(self.G), "encoder": fp(self.E), "prior": fp(self.prior),
                "perceptual": fp(self.perceptual, self.names.get("perceptual")),
                "identity": fp(self.identity, self.names.get("identity"))}


def load_model_set(generator: str, *, device: str | torch.device = "cpu", encoder: str | None = None,
                   prior: str | None = None, perceptual: str = "none", lpips_weights: str | None = None,
                   identity_model: str | None = None, facenet_weights: str | None = None,
                   generator_fingerprint: str | None = None, generator_setting: str = "--generator") -> ModelSet:
    """Load a generator and the models asked for, each checked against the generator.

    perceptual: 'lpips', 'discriminator' or 'none'; identity_model None loads no identity model;
    generator_fingerprint: the fingerprint the generator must have (a store's recorded one).
    """
    from pipeline.models.checkpoints import build_network, generator_of, read_checkpoint
    from pipeline.uris import absolute

    device = torch.device(device)
    ckpt = read_checkpoint(generator, setting=generator_setting)
    # the generator and its discriminator; an encoder in the same file (a pSp/e4e/ReStyle checkpoint given
    # as both --generator and --encoder) is built from the same read, not read again
    wanted = [name for name in ckpt.records if name != "E"]
    networks = {name: build_network(ckpt.records[name], source=generator, name=name).to(device) for name in wanted}
    G = generator_of(networks, source=generator)
    if generator_fingerprint is not None and fingerprint(G) != generator_fingerprint:
        raise GeneratorMismatchError(
            f"{generator_setting} {generator} is not the generator this store was made with (fingerprint "
            f"{fingerprint(G)[:16]}..., the store recorded {generator_fingerprint[:16]}...); give the original "
            "with --generator")
    models = ModelSet(G=G, D=networks.get("D"), names={"perceptual": "none", "identity": "none"})
    if encoder is not None and "E" in ckpt.records and absolute(encoder) == absolute(generator):
        models.E = encoder_from_records(ckpt.records, generator=G, source=generator, generator_is_decoder=True).to(device)
        encoder = None
    return add_models(models, encoder=encoder, prior=prior, perceptual=perceptual, lpips_weights=lpips_weights,
                      identity_model=identity_model, facenet_weights=facenet_weights)


def add_models(models: ModelSet, *, encoder: str | None = None, prior: str | None = None,
               perceptual: str | None = None, lpips_weights: str | None = None, identity_model: str | None = None,
               facenet_weights: str | None = None) -> ModelSet:
    """Load the models asked for into `models` (in place; returns it), each checked against its G,
    so a job that needs more later does not load the generator again. perceptual None leaves the
    perceptual model as it is."""
    from pipeline.losses.perceptual import build_perceptual
    from pipeline.models.identity import load_identity_model

    device = models.device
    if encoder:
        models.E = load_encoder(encoder, generator=models.G, device=device)
    if prior:
        models.prior = load_prior(prior, generator=models.G).to(device)
    if perceptual is not None:
        module = build_perceptual(perceptual, discriminator=models.D, lpips_weights=lpips_weights)
        models.perceptual = module.to(device) if module is not None else None
        models.names["perceptual"] = perceptual if module is not None else "none"
    if identity_model is not None:
        models.identity, models.names["identity"] = load_identity_model(identity_model,
                                                                        facenet_weights=facenet_weights, device=device)
    return models
