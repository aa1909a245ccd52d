"""Study 6: the claims of LIA (Zhu et al., the Latently Invertible Autoencoder), measured.

(a) interpolations are shorter in w than in z (perceptual path length);
(b) optimizing w reconstructs better than optimizing z from the same start;
(c) the encoder is a better start for refinement than w_avg or a random latent;
(d) the adversarial term makes the encoder's reconstructions more realistic (SWD, KID) at little
    cost in MSE (the given encoder fine-tuned twice from the same weights, with and without it);
(e) a flow is a better prior than the gaussianized one: held-out log p(w), telling mapped samples
    from projections of off-domain images (AUROC), smoothness of interpolations in its latent;
(f) compression defined for the flow (log-compress its exact latent beyond tau, map back) against
    the gaussianized prior's PCA compression on the same refined latents.
Each part reports its sample size and whether its claim held on this model; parts that need a
model the run lacks (an encoder, a discriminator, a flow) say so instead of running.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from pipeline.evaluation.models import EvalModels, initial_latents
from pipeline.evaluation.swd import swd
from pipeline.losses.pixel import masked_mse
from pipeline.priors.flow import FlowPrior
from pipeline.priors.gaussian import GaussianizedPrior
from pipeline.sampling import mapped_samples, random_labels, stream
from pipeline.stages.refine import refine

LatentMap = Callable[[torch.Tensor], torch.Tensor]
SWD_DRAWS = 5  # SWD samples patches: its spread over draws is the smallest difference worth reporting


def _render(G, ws: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return G.synthesis(ws, noise_mode="const").float()


def _distance(models: EvalModels, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Perceptual distance per image pair (the run's metric), or pixel MSE without one."""
    with torch.no_grad():
        if models.perceptual is not None:
            return models.perceptual(a, b).float().reshape(-1)
        return (a - b).square().mean(dim=(1, 2, 3))


def path_length(models: EvalModels, paths: torch.Tensor) -> torch.Tensor:
    """Summed distance between consecutive frames: paths [pairs, frames, num_ws, w_dim] -> [pairs]."""
    pairs, frames = paths.shape[:2]
    images = _render(models.G, paths.flatten(0, 1))
    images = images.reshape(pairs, frames, *images.shape[1:])
    steps = _distance(models, images[:, :-1].flatten(0, 1), images[:, 1:].flatten(0, 1))
    return steps.reshape(pairs, frames - 1).sum(dim=1)


def _lerp_path(a: torch.Tensor, b: torch.Tensor, frames: int, back: LatentMap | None = None) -> torch.Tensor:
    """Frames of the straight line a -> b [pairs, D] (mapped through `back`): [pairs, frames, D]."""
    t = torch.linspace(0, 1, frames, device=a.device)[None, :, None]
    path = a[:, None] + t * (b - a)[:, None]
    return back(path.flatten(0, 1)).reshape(path.shape) if back is not None else path


def _broadcast(G, w: torch.Tensor) -> torch.Tensor:
    return w[..., None, :].expand(*w.shape[:-1], G.num_ws, w.shape[-1])


def interpolation_paths(models: EvalModels, *, pairs: int, frames: int, seed: int) -> dict[str, Any]:
    """(a) Path length between mapped pairs, interpolating in G's z against in w."""
    G = models.G
    rng = torch.Generator(device=models.device).manual_seed(seed)
    z0, z1 = (torch.randn(pairs, G.z_dim, generator=rng, device=models.device) for _ in range(2))
    c = random_labels(G, pairs, rng)  # a conditional G: one class per pair, the whole path long (sampling's rule)
    c_frames = None if c is None else c.repeat_interleave(frames, dim=0)
    with torch.no_grad():
        in_z = _lerp_path(z0, z1, frames, back=lambda z: G.mapping(z, c_frames)[:, 0])
        in_w = _lerp_path(G.mapping(z0, c)[:, 0], G.mapping(z1, c)[:, 0], frames)
    rows = [{"space": space, "pairs": pairs, "frames": frames,
             "path_length": path_length(models, _broadcast(G, path)).mean().item()}
            for space, path in (("z (lerp)", in_z), ("w (lerp)", in_w))]
    return {"rows": rows, "claim": "interpolations are shorter (perceptually smoother) in w than in z",
            "holds": rows[1]["path_length"] < rows[0]["path_length"]}


def exact_latent_route(models: EvalModels, flow: FlowPrior | None) -> tuple[str, LatentMap, LatentMap]:
    """The exact z of a w, as this run can have it: the generator's invertible mapping, a flow, or the
    gaussianized prior's whitened coordinates (an exact affine-and-elementwise map)."""
    inverse = getattr(models.G.mapping, "inverse", None)
    if inverse is not None:
        return "z of the invertible mapping", inverse, lambda z: models.G.mapping(z)[:, 0]
    if flow is not None:
        return "z of the flow", flow.to_latent, flow.from_latent
    return "whitened coordinates of the gaussianized prior", models.prior.to_latent, models.prior.from_latent


def optimize_z_or_w(models: EvalModels, images: torch.Tensor, flow: FlowPrior | None, *, steps: int) -> dict[str, Any]:
    """(b) Refinement from the encoder's start (or w_avg), with the same loss and steps, optimizing w
    itself against optimizing the exact z of w."""
    name, to_z, from_z = exact_latent_route(models, flow)
    init = initial_latents(models, images.to(models.device))
    rows = []
    for space, route in (("w", None), (name, (to_z, from_z))):
        result = refine(models.G, images, init, steps=steps, perceptual=models.perceptual, prior=None,
                        prior_weight=0.0, seeds=list(range(len(images))), reparameterize=route)
        rows.append({"optimized": space, "images": len(images), "steps": steps,
                     "mse": result.losses["pixel"].mean().item(),
                     "perceptual": result.losses["perceptual"].mean().item()})
    return {"rows": rows, "claim": "from the same start, optimizing w reconstructs better than optimizing z",
            "holds": rows[0]["mse"] <= rows[1]["mse"]}


def refinement_starts(models: EvalModels, images: torch.Tensor, *, steps: int, seed: int) -> dict[str, Any]:
    """(c) Refinement from the encoder's prediction, from w_avg and from random mapped latents."""
    G, device = models.G, models.device
    n = len(images)
    starts = {"w_avg": G.w_avg.expand(n, G.num_ws, -1).clone(),
              "random mapped w": _broadcast(G, mapped_samples(G, n, torch.Generator(device=device).manual_seed(seed)))}
    if models.E is not None:
        starts = {"encoder E(x)": initial_latents(models, images.to(device)), **starts}
    rows = []
    for label, init in starts.items():
        start_mse = masked_mse(_render(G, init), images.to(device), None).mean().item()
        result = refine(G, images, init, steps=steps, perceptual=models.perceptual, prior=models.prior,
                        seeds=list(range(n)))
        rows.append({"start": label, "images": n, "steps": steps, "mse_at_start": start_mse,
                     "mse": result.losses["pixel"].mean().item(),
                     "perceptual": result.losses["perceptual"].mean().item()})
    best = min(rows, key=lambda r: r["mse"])["start"]
    return {"rows": rows, "claim": "the encoder is a better start than w_avg or a random latent",
            "holds": best == "encoder E(x)",
            **({} if models.E is not None else {"note": "no encoder: only w_avg and random starts compared"})}


def adversarial_encoder(models: EvalModels, images: torch.Tensor, *, steps: int, seed: int,
                        weight: float = 0.1) -> dict[str, Any]:
    """(d) The given encoder fine-tuned `steps` steps twice from the same weights and batches, without
    and with the adversarial term (D fine-tuned alongside with R1); reconstructions of the real
    images compared by MSE, perceptual distance, SWD and KID."""
    if models.E is None or models.D is None:
        return {"rows": [], "skipped": "needs an encoder and a generator checkpoint with a discriminator"}
    if getattr(models.D, "c_dim", 0):
        return {"rows": [], "skipped": "the discriminator is conditional: it cannot judge reconstructions of images "
                                       "whose class is unknown"}
    from pipeline.models.encoder import encode
    from pipeline.training.settings import EncoderTrainingConfig
    from pipeline.training.encoder_training import LossWeights, encoder_step, sample_training_batch

    G, device = models.G, models.device
    recipe = {f.name: f.default for f in dataclasses.fields(EncoderTrainingConfig)}  # train-encoder's own defaults
    rows = []
    for label, adversarial in (("without adversarial term", 0.0), (f"with adversarial term (beta2 = {weight})", weight)):
        E = copy.deepcopy(models.E).train().requires_grad_(True)
        D = copy.deepcopy(models.D).train().requires_grad_(True)
        opt_E = torch.optim.Adam(E.parameters(), lr=recipe["lr"], betas=(0.9, 0.99))
        opt_D = torch.optim.Adam(D.parameters(), lr=recipe["discriminator_lr"], betas=(0.0, 0.99))
        weights = LossWeights(adversarial=adversarial)
        for step in range(steps):
            rng = stream(seed, "lia", "fine-tune", step, device=device)  # the same batches both times
            batch = sample_training_batch(G, recipe["batch_size"], rng)
            encoder_step(E, G, batch, opt_E, perceptual=models.perceptual, weights=weights, D=D, optimizer_D=opt_D,
                         r1_gamma=recipe["r1_gamma"])  # train-encoder's own step
        E.eval()
        with torch.no_grad():
            recon = _render(G, encode(E, images.to(device)).float())
        real = images.to(device)
        draws = torch.tensor([swd(real, recon, seed=seed + k)["mean"] for k in range(SWD_DRAWS)])
        rows.append({"encoder": label, "fine_tune_steps": steps, "images": len(images),
                     "mse": masked_mse(recon, real, None).mean().item(),
                     "perceptual": _distance(models, recon, real).mean().item(),
                     "swd": draws.mean().item(), "swd_std_over_patch_draws": draws.std().item(),
                     "realism_kid": models.realism(recon.cpu())})
    plain, adv = rows
    margin = 2 * (plain["swd_std_over_patch_draws"] ** 2 + adv["swd_std_over_patch_draws"] ** 2) ** 0.5
    return {"rows": rows, "claim": "the adversarial term makes reconstructions more realistic (lower SWD) at little "
                                   "cost in MSE",
            "holds": plain["swd"] - adv["swd"] > margin and adv["mse"] <= 1.1 * plain["mse"],
            "note": f"SWD {plain['swd']:.1f} without, {adv['swd']:.1f} with the term; a difference counts when it "
                    f"exceeds twice its spread over {SWD_DRAWS} patch draws ({margin:.1f})"}


def _auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties counted half."""
    p, q = positive.double()[:, None], negative.double()[None, :]
    return ((p > q).double().mean() + 0.5 * (p == q).double().mean()).item()


def off_domain_images(images: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Images outside a generator's domain, made from the real ones: upside down, colours inverted,
    and smooth random noise."""
    rng = torch.Generator().manual_seed(seed)
    n, c, h, w = images.shape
    noise = torch.nn.functional.interpolate(torch.rand(n, c, max(h // 8, 2), max(w // 8, 2), generator=rng) * 2 - 1,
                                            size=(h, w), mode="bilinear", align_corners=False)
    return {"upside down": images.flip(2), "colours inverted": -images, "smooth noise": noise}


def flow_against_gaussianized(models: EvalModels, images: torch.Tensor, flow: FlowPrior | None, *, steps: int,
                              held_out: int, pairs: int, frames: int, seed: int) -> dict[str, Any]:
    """(e) Held-out log p(w), AUROC of mapped samples against projections of off-domain images, and
    the path length of interpolations in each prior's latent."""
    if flow is None:
        return {"rows": [], "skipped": "no flow: give --flow (fit one with `latentmill fit-flow`)"}
    G, device = models.G, models.device
    gauss = models.prior if isinstance(models.prior, GaussianizedPrior) else GaussianizedPrior.fit(
        G, num_samples=100_000, progress=False)  # --prior was a flow: the comparison needs the gaussianized one
    rng = stream(seed, "lia", "held-out", device=device)
    samples = mapped_samples(G, held_out, rng)
    off = off_domain_images(images.cpu(), seed)
    projections = []
    for kind, batch in off.items():
        init = initial_latents(models, batch.to(device))
        projections.append(refine(G, batch, init, steps=steps, perceptual=models.perceptual, prior=None,
                                  prior_weight=0.0, seeds=list(range(len(batch)))).ws)
    projected = torch.cat(projections)
    real_init = initial_latents(models, images.to(device))  # in-domain images, projected the same way
    real_projected = refine(G, images, real_init, steps=steps, perceptual=models.perceptual, prior=None,
                            prior_weight=0.0, seeds=list(range(len(images)))).ws
    z0, z1 = mapped_samples(G, pairs, rng), mapped_samples(G, pairs, rng)
    rows = []
    for name, prior in (("gaussianized", gauss), ("flow", flow)):
        with torch.no_grad():
            in_domain = prior.log_prob(samples)
            off_scores = prior.log_prob(projected)
            real_scores = prior.log_prob(real_projected)
            path = _lerp_path(prior.to_latent(z0), prior.to_latent(z1), frames, back=prior.from_latent)
        rows.append({"prior": name, "held_out_samples": held_out, "held_out_log_prob": in_domain.mean().item(),
                     "off_domain_projections": len(projected), "auroc_mapped_vs_off_domain": _auroc(in_domain, off_scores),
                     "auroc_real_vs_off_domain_projections": _auroc(real_scores, off_scores),
                     "interpolation_pairs": pairs,
                     "path_length_in_prior_latent": path_length(models, _broadcast(G, path)).mean().item()})
    g, f = rows
    gain = f["held_out_log_prob"] - g["held_out_log_prob"]
    auroc_keys = ("auroc_mapped_vs_off_domain", "auroc_real_vs_off_domain_projections")
    return {"rows": rows, "claim": "the flow is the better prior: higher held-out log p(w), better at telling "
                                   "in-domain latents from projections of off-domain images",
            "holds": gain > 0 and all(f[k] >= g[k] for k in auroc_keys),
            "note": f"Held-out log p(w) {gain:+.2f} nats per latent with the flow; off-domain images: "
                    f"{', '.join(off)} ({len(images)} each), projected like the real images (encoder + {steps} "
                    f"steps without a prior); interpolation path length in the prior's latent "
                    f"{f['path_length_in_prior_latent'] / g['path_length_in_prior_latent']:.2f}x the gaussianized one's"}


def compression_through_flow(models: EvalModels, images: torch.Tensor, flow: FlowPrior | None, *, steps: int,
                             taus: tuple[float, ...] = (1.0, 2.0, 3.0), seed: int = 0) -> dict[str, Any]:
    """(f) Compression of the same refined latents through each prior (log-compress the prior's
    standard-normal coordinates beyond tau, map back): how far it moves the image (MSE to the input)
    against how realistic the result is (SWD to the real images)."""
    if flow is None:
        return {"rows": [], "skipped": "no flow: give --flow (fit one with `latentmill fit-flow`)"}
    G, device = models.G, models.device
    gauss = models.prior if isinstance(models.prior, GaussianizedPrior) else GaussianizedPrior.fit(
        G, num_samples=100_000, progress=False)
    real = images.to(device)
    ws = refine(G, images, initial_latents(models, real), steps=steps, perceptual=models.perceptual,
                prior=gauss, seeds=list(range(len(images)))).ws
    rows = []
    for tau in taus:
        for name, prior in (("gaussianized", gauss), ("flow", flow)):
            with torch.no_grad():
                compressed = prior.compress(ws, tau)
            out = _render(G, compressed)
            rows.append({"tau": tau, "prior": name, "images": len(images),
                         "latent_change_rms": (compressed - ws).square().mean().sqrt().item(),
                         "mse": masked_mse(out, real, None).mean().item(), "swd": swd(real, out, seed=seed)["mean"]})
    pairs = list(zip(rows[0::2], rows[1::2]))
    better = sum(f["mse"] <= g["mse"] and f["swd"] <= 1.05 * g["swd"] for g, f in pairs)
    return {"rows": rows, "claim": "compression through the flow keeps reconstructions closer to the input (lower "
                                   "MSE) at equal or better realism (SWD within 5%)",
            "holds": better > len(pairs) / 2,
            "note": f"The flow is closer at equal realism at {better} of {len(pairs)} values of tau; both compress "
                    f"the same {len(images)} latents refined with the gaussianized prior ({steps} steps)"}


def lia_claims(models: EvalModels, images: torch.Tensor, flow: FlowPrior | None, *, steps: int, seed: int,
               pairs: int = 16, frames: int = 9, held_out: int = 10_000, fine_tune_steps: int = 100) -> dict[str, Any]:
    """All six parts; `rows` summarizes them, `parts` holds each part's own table (with its seconds)."""
    runners = {
        "a: path length z vs w": lambda: interpolation_paths(models, pairs=pairs, frames=frames, seed=seed),
        "b: optimize z vs w": lambda: optimize_z_or_w(models, images, flow, steps=steps),
        "c: refinement starts": lambda: refinement_starts(models, images, steps=steps, seed=seed),
        "d: adversarial encoder": lambda: adversarial_encoder(models, images, steps=fine_tune_steps, seed=seed),
        "e: flow vs gaussianized prior": lambda: flow_against_gaussianized(
            models, images, flow, steps=steps, held_out=held_out, pairs=pairs, frames=frames, seed=seed),
        "f: compression, flow vs gaussianized": lambda: compression_through_flow(models, images, flow, steps=steps,
                                                                                 seed=seed),
    }
    parts = {}
    for name, run in runners.items():
        print(f"evaluate: lia {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        parts[name] = {**run(), "seconds": round(time.perf_counter() - start, 1)}
    rows = [{"part": name, "claim": part.get("claim", ""),
             "result": "skipped: " + part["skipped"] if "skipped" in part else
             ("holds" if part["holds"] else "does not hold here")} for name, part in parts.items()]
    ran = [p for p in parts.values() if "skipped" not in p]
    held = sum(bool(p["holds"]) for p in ran)
    return {"rows": rows, "parts": parts, "steps": steps,
            "claim": "LIA: inference belongs in w; an exact z is useful; the adversarial encoder is more realistic",
            "holds": held == len(ran), "note": f"{held} of {len(ran)} parts hold on this model"}
