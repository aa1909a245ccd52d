"""One seeding rule: mapped samples of G (a conditional G draws uniform labels from the same stream) and
named random streams, so what a draw gives never depends on what was drawn before it."""

from __future__ import annotations

import torch

from pipeline.evaluation.detection_study import detection_accuracy
from pipeline.evaluation.models import EvalModels
from pipeline.evaluation.realism import feature_extractor, kid_to
from pipeline.priors.gaussian import GaussianizedPrior
from pipeline.report.in_domain import _samples as in_domain_samples
from pipeline.sampling import mapped_samples, mapped_ws, random_labels, stream, stream_seed
from pipeline.stages.refine import estimate_w_std
from pipeline.stages.stylespace import population_stats
from tests.conftest import tiny_generator


def test_a_named_stream_is_the_same_every_time_and_differs_from_every_other_name():
    assert stream_seed(7, "rebalance", "face", 3) == stream_seed(7, "rebalance", "face", 3)
    seeds = {stream_seed(7, "rebalance", "face", i) for i in range(1000)} | {stream_seed(8, "rebalance", "face", 0)}
    assert len(seeds) == 1001
    assert torch.equal(torch.randn(4, generator=stream(1, "a")), torch.randn(4, generator=stream(1, "a")))
    assert not torch.equal(torch.randn(4, generator=stream(1, "a")), torch.randn(4, generator=stream(1, "b")))


def test_a_conditional_generator_samples_with_uniform_labels_from_the_callers_stream():
    G = tiny_generator(c_dim=4)
    labels = random_labels(G, 4000, torch.Generator().manual_seed(0))
    assert labels.shape == (4000, 4) and torch.equal(labels.sum(1), torch.ones(4000))
    assert (labels.mean(0) - 0.25).abs().max() < 0.03
    ws = mapped_samples(G, 10, torch.Generator().manual_seed(1))
    assert ws.shape == (10, G.w_dim)
    assert torch.equal(ws, mapped_samples(G, 10, torch.Generator().manual_seed(1)))
    assert mapped_ws(G, 3, torch.Generator().manual_seed(1)).shape == (3, G.num_ws, G.w_dim)
    assert random_labels(tiny_generator(), 3, torch.Generator()) is None


def test_an_unconditional_generator_draws_as_the_mapping_does():
    G = tiny_generator()
    z = torch.randn(5, G.z_dim, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(mapped_samples(G, 5, torch.Generator().manual_seed(2)), G.mapping(z, None)[:, 0])


def test_every_sampler_of_the_library_runs_on_a_conditional_generator():
    G = tiny_generator(c_dim=3)
    assert estimate_w_std(G, num_samples=64) > 0
    assert in_domain_samples(G, 2).shape == (2, 3, G.img_resolution, G.img_resolution)
    stats = population_stats(G, num_samples=64)
    assert all(torch.isfinite(v).all() for v in stats.std.values())
    prior = GaussianizedPrior.fit(G, num_samples=2000, batch_size=500, progress=False)
    assert 0.5 * G.w_dim < prior.nll(mapped_ws(G, 256, torch.Generator().manual_seed(3))).mean() < 2 * G.w_dim


def test_the_stylespace_study_runs_on_a_conditional_generator():
    """`latentmill evaluate --studies stylespace` on a conditional G failed: its samples passed no labels."""
    G = tiny_generator(c_dim=4)
    prior = GaussianizedPrior.fit(G, num_samples=2000, batch_size=500, progress=False)
    identity = type("Pixels", (), {"embed": staticmethod(lambda x: torch.nn.functional.normalize(x.flatten(1), dim=1))})
    models = EvalModels(G=G, prior=prior, identity=identity,
                        realism=kid_to(torch.zeros(4, 3, 16, 16), feature_extractor("random")))
    study = detection_accuracy(models, positives=(10,), trials=2, population=500)
    assert study["rows"] and all(0 <= r["top5"] <= 1 for r in study["rows"])
