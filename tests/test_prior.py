"""The gaussianized prior: transforms, fit, NLL, PCA compression, truncation, persistence."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import CheckpointError, GeneratorMismatchError
from pipeline.priors.gaussian import GaussianizedPrior, degaussianize, gaussianize
from pipeline.priors.latent_prior import log_compress
from tests.conftest import tiny_generator


def fresh_ws(G, n=4000, seed=123):
    with torch.no_grad():
        return G.mapping(torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed)))


def test_gaussianize_inverts_the_last_leaky_relu_exactly():
    w = torch.randn(100, 16) * 3
    torch.testing.assert_close(degaussianize(gaussianize(w)), w)
    torch.testing.assert_close(gaussianize(torch.tensor([2.0, -2.0])), torch.tensor([2.0, -10.0]) / 2**0.5)
    torch.testing.assert_close(GaussianizedPrior.degaussianize(GaussianizedPrior.gaussianize(w)), w)


def test_compress_is_identity_inside_tau():
    c = torch.linspace(-2, 2, 101)
    assert torch.equal(log_compress(c, tau=2.0), c)


def test_compress_is_continuous_and_monotone_outside_tau():
    c = torch.linspace(-10, 10, 20001, dtype=torch.float64)
    out = log_compress(c, tau=2.0)
    assert (out.diff() > 0).all(), "strictly increasing"
    assert out.diff().abs().max() < 2 * (c[1] - c[0]), "no jumps"
    assert (out.abs() <= c.abs()).all(), "never expands a component"
    torch.testing.assert_close(log_compress(torch.tensor([5.0]), 2.0), torch.tensor([2.0 + torch.log1p(torch.tensor(3.0))]))


def test_mean_nll_of_fresh_samples_is_close_to_w_dim(G, prior):
    nll = prior.nll(fresh_ws(G))
    assert nll.shape == (4000,)
    assert abs(nll.mean().item() - G.w_dim) < 0.05 * G.w_dim


def test_whiten_gives_unit_variance_coordinates_and_unwhiten_inverts_it(G, prior):
    ws = fresh_ws(G)[:, 0].double()
    c = prior.whiten(ws)
    assert (c.std(dim=0) - 1).abs().max() < 0.1
    assert c.mean(dim=0).abs().max() < 0.1
    torch.testing.assert_close(prior.unwhiten(c), ws)


def test_compress_leaves_typical_latents_and_pulls_in_outliers(G, prior):
    ws = fresh_ws(G, n=200)
    typical = ws[prior.whiten(ws[:, 0]).abs().amax(dim=1) < 3]
    torch.testing.assert_close(prior.compress(typical, tau=3.0), typical, rtol=1e-4, atol=1e-4)
    outlier = prior.unwhiten(torch.full((1, G.w_dim), 8.0))
    compressed = prior.compress(outlier, tau=3.0)
    assert prior.nll(compressed) < prior.nll(outlier)
    assert prior.whiten(compressed).abs().max() < 3 + torch.log1p(torch.tensor(5.0)) + 1e-3


def test_truncate_moves_towards_the_generator_w_avg(G, prior):
    ws = fresh_ws(G, n=10)
    torch.testing.assert_close(prior.truncate(ws, 0.0), G.w_avg.expand_as(ws))
    torch.testing.assert_close(prior.truncate(ws, 1.0), ws)


def test_fit_is_deterministic_and_fit_from_ws_agrees_with_fit(G, prior):
    again = GaussianizedPrior.fit(G, num_samples=40_000, batch_size=8_000, progress=False)
    torch.testing.assert_close(again.mean, prior.mean)  # batch size does not change the result
    from_ws = GaussianizedPrior.fit_from_ws(fresh_ws(G, n=40_000)[:, :1])
    assert (from_ws.mean - prior.mean).abs().max() < 0.1 * prior.sigma.max()


def test_save_and_load_round_trip_and_refuse_another_generator(G, prior, tmp_path):
    path = str(tmp_path / "prior.safetensors")
    prior.save(path)
    loaded = GaussianizedPrior.load(path, generator=G)
    ws = fresh_ws(G, n=8)
    torch.testing.assert_close(loaded.nll(ws), prior.nll(ws))
    with pytest.raises(GeneratorMismatchError, match="fit-prior"):
        GaussianizedPrior.load(path, generator=tiny_generator(resolution=16, seed=1))


def test_loading_something_else_as_a_prior_is_a_clear_error(tmp_path):
    from pipeline.models.bundle import write_bundle

    path = str(tmp_path / "g.safetensors")
    write_bundle(path, {"G_ema": tiny_generator()})
    with pytest.raises(CheckpointError, match="not a latentmill prior"):
        GaussianizedPrior.load(path)
