"""The stages of `latentmill invert` on one batch: encode -> refine -> compress -> identity.

Pure torch: takes decoded images, returns per-image columns of the latents table. The Ray layer
(pipeline/runtime) only feeds batches in and writes what comes out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from pipeline.losses.pixel import masked_mse
from pipeline.models.encoder import encode
from pipeline.model_set import ModelSet
from pipeline.models.stylegan2 import Generator
from pipeline.priors.load import exact_latent
from pipeline.models.identity import cosine_to
from pipeline.stages.inversion_settings import InversionSettings
from pipeline.stages.refine import refine

# Noise maps of every stored reconstruction: the generator's stored constant maps, so a latent
# renders to the same image wherever it is read back.
NOISE_MODE = "const"


InversionModels = ModelSet  # what invert_batch runs on: G and the models made for it


def image_seed(image_id: str) -> int:
    """A stable per-image seed: results never depend on batching or on which worker ran the image."""
    return int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:4], "little") & 0x7FFFFFFF


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


@torch.no_grad()
def _render(G: Generator, ws: torch.Tensor, noise_mode: str) -> torch.Tensor:
    return G.synthesis(ws, noise_mode=noise_mode).float()


def latent_columns(models: InversionModels, settings: InversionSettings) -> tuple[str, ...]:
    """The latent columns `invert_batch` fills with these models and stages (the others stay out of a store)."""
    filled = {"w_encoded": "encode" in settings.stages and models.E is not None,
              "w_refined": "refine" in settings.stages,
              "w_compressed": "compress" in settings.stages and models.prior is not None,
              "z": exact_latent(models.G, models.prior) is not None}
    return tuple(name for name, kept in filled.items() if kept)


def invert_batch(models: InversionModels, settings: InversionSettings, images: torch.Tensor,
                 masks: torch.Tensor | None, image_ids: Sequence[str],
                 on_stage: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    """images [N, C, R, R] in [-1, 1], masks [N, 1, R, R] -> {column: [N, ...] numpy} (latents flattened).
    on_stage: told the name of each stage as it starts (for progress)."""
    def stage(name: str) -> None:
        if on_stage is not None:
            on_stage(name)

    G, n = models.G, images.shape[0]
    device = G.w_avg.device
    images = images.to(device)
    masks = masks.to(device) if masks is not None else None
    out: dict[str, np.ndarray] = {}
    prior = models.prior

    ws = G.w_avg.expand(n, G.num_ws, -1).clone()
    recon = None  # the reconstruction of the latest latent: each latent is rendered once
    if "encode" in settings.stages and models.E is not None:
        stage("encode")
        with torch.no_grad():
            ws = encode(models.E, images, masks, iterations=settings.encoder_iterations, generator=G).float()
        recon = _render(G, ws, NOISE_MODE)
        out["w_encoded"] = _np(ws)
        out["mse_encoded"] = _np(masked_mse(recon, images, masks))
        if prior is not None:
            out["prior_nll_encoded"] = _np(prior.nll(ws))

    if "refine" in settings.stages:
        stage("refine")
        result = refine(G, images, ws, settings, masks=masks, perceptual=models.perceptual, prior=prior,
                        noise_mode=NOISE_MODE, seeds=[image_seed(i) for i in image_ids],
                        on_step=lambda step, steps: stage(f"refine step {step + 1}/{steps}"))
        ws, recon = result.ws, result.images
        out["w_refined"] = _np(ws)
        out["refine_steps"] = result.steps_run.cpu().numpy().astype(np.int32)
        if models.perceptual is not None:
            out["perceptual_refined"] = out["perceptual"] = _np(result.losses["perceptual"])
        if prior is not None:
            out["prior_nll_refined"] = _np(prior.nll(ws))
    elif recon is None:
        recon = _render(G, ws, NOISE_MODE)
    out["mse"] = out["mse_encoded"] if "refine" not in settings.stages and "mse_encoded" in out else \
        _np(masked_mse(recon, images, masks))
    if "refine" in settings.stages:
        out["mse_refined"] = out["mse"]

    compressed = None
    if "compress" in settings.stages and prior is not None:
        stage("compress")
        with torch.no_grad():
            compressed = prior.compress(ws, settings.tau)
        out["w_compressed"] = _np(compressed)
        out["prior_nll_compressed"] = _np(prior.nll(compressed))
        out["compression_delta"] = _np((compressed - ws).square().mean(dim=(1, 2)).sqrt())

    exact = exact_latent(G, prior)
    if exact is not None:
        with torch.no_grad():
            out["z"] = _np(exact[1](ws))

    if "identity" in settings.stages and models.identity is not None:
        stage("identity")
        with torch.no_grad():
            target = models.identity.embed(images)  # once, for the refined and the compressed scores
        out["id_cosine_refined"] = _np(cosine_to(models.identity, target, recon))
        if compressed is not None:
            out["id_cosine_compressed"] = _np(cosine_to(models.identity, target, _render(G, compressed, NOISE_MODE)))
    for key in ("w_encoded", "w_refined", "w_compressed", "z"):
        if key in out:
            out[key] = out[key].reshape(n, -1)  # [N, num_ws * w_dim], row-major
    return out
