"""Study 6 of `latentmill evaluate`: LIA's claims, each part with its sample size and verdict."""

from __future__ import annotations

import pytest
import torch

from pipeline.evaluation.lia_study import _auroc, exact_latent_route, lia_claims, off_domain_images, path_length
from pipeline.evaluation.models import EvalModels
from pipeline.evaluation.realism import feature_extractor, kid_to
from pipeline.models.encoder import Encoder
from pipeline.priors.flow import FlowPrior
from pipeline.stages.refine import refine as _refine
from tests.conftest import tiny_discriminator


def refine(*args, **kwargs):
    """latentmill's refine in fp32 unless a test says otherwise: these tests compare numbers, whatever
    `--precision auto` would pick on this machine."""
    return _refine(*args, **{"precision": "fp32", **kwargs})


@pytest.fixture(scope="module")
def images():
    return torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def models_for(G, prior, images, *, encoder: bool = True, discriminator: bool = True) -> EvalModels:
    torch.manual_seed(0)
    E = Encoder.for_generator(G, base_channels=8, max_channels=16).eval() if encoder else None
    return EvalModels(G=G, E=E, prior=prior, D=tiny_discriminator(16) if discriminator else None,
                      realism=kid_to(images, feature_extractor("random")))


def test_every_part_runs_and_reports_its_sample_size(G, prior, images):
    flow = FlowPrior.from_gaussianized(prior)
    study = lia_claims(models_for(G, prior, images), images, flow, steps=2, seed=0, pairs=2, frames=3,
                       held_out=200, fine_tune_steps=2)
    assert [r["part"][0] for r in study["rows"]] == ["a", "b", "c", "d", "e", "f"]
    for name, part in study["parts"].items():
        assert "skipped" not in part and isinstance(part["holds"], bool) and part["seconds"] >= 0, name
        assert part["rows"], name
    a, b, c, d, e, f = study["parts"].values()
    assert {r["space"] for r in a["rows"]} == {"z (lerp)", "w (lerp)"} and a["rows"][0]["pairs"] == 2
    assert [r["optimized"] for r in b["rows"]] == ["w", "z of the flow"] and b["rows"][0]["images"] == 8
    assert [r["start"] for r in c["rows"]] == ["encoder E(x)", "w_avg", "random mapped w"]
    assert [r["encoder"][:4] for r in d["rows"]] == ["with", "with"] and "swd" in d["rows"][0]
    assert [r["prior"] for r in e["rows"]] == ["gaussianized", "flow"]
    assert e["rows"][0]["held_out_samples"] == 200 and e["rows"][0]["off_domain_projections"] == 24
    # an untrained flow is the gaussianized prior: the same held-out log p(w), the same compression
    assert e["rows"][0]["held_out_log_prob"] == pytest.approx(e["rows"][1]["held_out_log_prob"], abs=1e-3)
    assert [(r["tau"], r["prior"]) for r in f["rows"][:2]] == [(1.0, "gaussianized"), (1.0, "flow")]
    assert f["rows"][0]["mse"] == pytest.approx(f["rows"][1]["mse"], rel=1e-3)


def test_parts_without_their_models_say_what_is_missing(G, prior, images):
    study = lia_claims(models_for(G, prior, images, encoder=False, discriminator=False), images, None, steps=1,
                       seed=0, pairs=2, frames=3, held_out=100, fine_tune_steps=1)
    parts = study["parts"]
    assert "encoder" in parts["d: adversarial encoder"]["skipped"]
    assert "--flow" in parts["e: flow vs gaussianized prior"]["skipped"]
    assert "--flow" in parts["f: compression, flow vs gaussianized"]["skipped"]
    assert parts["b: optimize z vs w"]["rows"][1]["optimized"] == "whitened coordinates of the gaussianized prior"
    assert [r["start"] for r in parts["c: refinement starts"]["rows"]] == ["w_avg", "random mapped w"]
    assert study["note"] == f"{sum(p.get('holds', False) for p in parts.values())} of 3 parts hold on this model"


def test_refining_through_an_exact_reparameterization_starts_where_w_starts(G, prior, images):
    _, to_z, from_z = exact_latent_route(models_for(G, prior, images), None)
    init = G.w_avg.expand(8, G.num_ws, -1).clone()
    through_z = refine(G, images, init, steps=0, perceptual=None, reparameterize=(to_z, from_z))
    assert torch.allclose(through_z.ws, init, atol=1e-4)
    moved = refine(G, images, init, steps=3, perceptual=None, reparameterize=(to_z, from_z), lr=0.05)
    assert moved.losses["pixel"].mean() < through_z.losses["pixel"].mean()


def test_path_length_and_auroc_mean_what_they_say(G, prior, images):
    models = models_for(G, prior, images)
    still = G.w_avg.expand(2, 4, G.num_ws, -1).clone()  # 2 pairs, 4 identical frames
    assert torch.equal(path_length(models, still), torch.zeros(2))
    assert _auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert _auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    assert set(off_domain_images(images, 0)) == {"upside down", "colours inverted", "smooth noise"}
