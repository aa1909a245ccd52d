"""The models a store was made with, loaded from its records and checked against its generator: what
curate, rebalance, augment, report and evaluate-like readers need (Store.load_models is this)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch

from pipeline.store import layout

if TYPE_CHECKING:
    from pipeline.model_set import ModelSet


class Store(Protocol):
    """What these functions read of a store (pipeline.store.store.Store): its recorded metadata and settings."""

    @property
    def metadata(self) -> dict[str, Any]: ...

    @property
    def settings(self) -> dict[str, Any]: ...


def load_store_models(store: Store, device: str | torch.device = "cpu", *, generator: str | None = None,
                      encoder: bool = False, prior: bool = False, identity: bool = False,
                      perceptual: str = "none") -> ModelSet:
    """The store's generator (or `generator`, which must be the same network) and the recorded
    encoder, prior and identity model where asked for and recorded, all checked against it."""
    from pipeline.model_set import load_model_set

    meta = store.metadata
    models = load_model_set(generator or meta["generator"], device=device,
                            generator_fingerprint=meta["generator_fingerprint"],
                            generator_setting="--generator" if generator else f"the store's generator ({layout.RECIPE})")
    return add_store_models(store, models, encoder=encoder, prior=prior, identity=identity, perceptual=perceptual)


def add_store_models(store: Store, models: ModelSet, *, encoder: bool = False, prior: bool = False,
                     identity: bool = False, perceptual: str | None = None) -> ModelSet:
    """The recorded encoder, prior and identity model, where asked for and recorded, added to models
    already loaded (checked against their G; the generator is not loaded again)."""
    from pipeline.model_set import add_models

    meta, settings = store.metadata, store.settings
    return add_models(models, encoder=meta.get("encoder") if encoder else None,
                      prior=meta.get("prior") if prior else None, perceptual=perceptual,
                      lpips_weights=settings.get("lpips_weights"),
                      identity_model=settings.get("identity_model", "facenet") if identity else None,
                      facenet_weights=settings.get("facenet_weights"))
