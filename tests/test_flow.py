"""Exact latents: coupling stacks, the invertible mapping (LIA stage 1) and the flow prior."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.errors import CheckpointError, GeneratorMismatchError
from pipeline.models.bundle import write_bundle
from pipeline.models.checkpoints import load_generator
from pipeline.models.fingerprint import fingerprint
from pipeline.models.invertible import CouplingStack
from pipeline.models.stylegan2 import Generator
from pipeline.priors.flow import FlowPrior
from pipeline.priors.gaussian import GaussianizedPrior, gaussianize, mapped_samples
from pipeline.priors.load import exact_latent, load_prior
from tests.conftest import tiny_generator


def _perturbed(module: torch.nn.Module, std: float, seed: int = 0) -> torch.nn.Module:
    """Random weights in every coupling network (a fresh stack is the identity, which proves nothing)."""
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=rng) * std)
    return module


def invertible_generator(seed: int = 0, coupling: str = "additive") -> Generator:
    torch.manual_seed(seed)
    G = Generator(z_dim=16, w_dim=16, img_resolution=16, img_channels=3,
                  mapping_kwargs={"kind": "invertible", "num_layers": 4, "coupling": coupling},
                  synthesis_kwargs={"channel_base": 256, "channel_max": 16, "conv_clamp": 256})
    _perturbed(G.mapping, 0.1, seed)
    return G.eval()


@pytest.mark.parametrize("kind", ["additive", "affine"])
def test_a_coupling_stack_inverts_exactly_in_fp32(kind):
    stack = _perturbed(CouplingStack(32, couplings=8, hidden=64, kind=kind), 0.05)
    x = torch.randn(256, 32)
    y, _ = stack(x)
    assert (stack.inverse(y) - x).abs().max() < 1e-5
    assert (stack(stack.inverse(x))[0] - x).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["additive", "affine"])
def test_a_coupling_stacks_log_det_is_its_jacobians(kind):
    stack = _perturbed(CouplingStack(6, couplings=4, hidden=12, kind=kind), 0.3).double()
    x = torch.randn(6, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: stack(v)[0], x)
    assert stack(x)[1].item() == pytest.approx(torch.linalg.slogdet(jacobian)[1].item(), abs=1e-9)
    if kind == "additive":  # NICE: only the final scale changes volume
        assert stack(x)[1].item() == pytest.approx(stack.log_scale.sum().item(), abs=1e-12)


def test_a_fresh_coupling_stack_is_the_identity():
    x = torch.randn(10, 8)
    y, log_det = CouplingStack(8, kind="affine")(x)
    assert torch.equal(y, x) and torch.equal(log_det, torch.zeros(10))


def test_an_invertible_mapping_gives_the_exact_z_of_any_latent():
    G = invertible_generator()
    z = torch.randn(64, 16)
    ws = G.mapping(z)
    assert ws.shape == (64, G.num_ws, 16)
    assert (G.mapping.inverse(ws) - z[:, None]).abs().max() < 1e-5  # one z per layer of W+
    w_plus = ws + 0.3 * torch.randn_like(ws)  # any latent, not only mapped ones
    assert (G.mapping(G.mapping.inverse(w_plus[:, 3]))[:, 0] - w_plus[:, 3]).abs().max() < 1e-5


def test_a_bundle_carries_the_invertible_mapping(tmp_path):
    G = invertible_generator(coupling="affine")
    write_bundle(str(tmp_path / "g.safetensors"), {"G_ema": G})
    loaded = load_generator(str(tmp_path / "g.safetensors"))
    assert fingerprint(loaded) == fingerprint(G)
    z = torch.randn(4, 16)
    assert torch.equal(loaded.mapping.inverse(loaded.mapping(z)), G.mapping.inverse(G.mapping(z)))
    assert torch.equal(loaded(z), G(z))


def test_an_invertible_mapping_refuses_what_it_cannot_invert():
    with pytest.raises(ValueError, match="z_dim == w_dim"):
        Generator(z_dim=8, w_dim=16, img_resolution=8, mapping_kwargs={"kind": "invertible"})
    with pytest.raises(ValueError, match="no labels"):
        Generator(z_dim=16, c_dim=3, w_dim=16, img_resolution=8, mapping_kwargs={"kind": "invertible"})


def _reference_log_prob(prior: GaussianizedPrior, ws: torch.Tensor) -> torch.Tensor:
    """log p(w) by the textbook route: torch's multivariate normal in V plus the log-Jacobian of W -> V,
    taken numerically from autograd."""
    cov = prior.components @ torch.diag(prior.sigma**2) @ prior.components.T
    normal = torch.distributions.MultivariateNormal(prior.mean, covariance_matrix=cov)
    out = []
    for w in ws.double():
        jacobian = torch.autograd.functional.jacobian(gaussianize, w)
        out.append(normal.log_prob(gaussianize(w)) + torch.linalg.slogdet(jacobian)[1])
    return torch.stack(out)


def test_the_gaussianized_log_prob_is_the_density_in_w(G, prior):
    ws = mapped_samples(G, 20, torch.Generator().manual_seed(3))
    assert torch.allclose(prior.log_prob(ws), _reference_log_prob(prior, ws), atol=1e-6)
    w_plus = ws[:, None].repeat(1, 3, 1)
    assert torch.allclose(prior.log_prob(w_plus), prior.log_prob(ws), atol=1e-9)  # mean over layers


def test_an_untrained_flow_is_the_gaussianized_prior(G, prior):
    flow = FlowPrior.from_gaussianized(prior)
    ws = mapped_samples(G, 500, torch.Generator().manual_seed(4))
    assert torch.allclose(flow.log_prob(ws), prior.log_prob(ws), atol=1e-4)
    assert torch.allclose(flow.nll(ws), prior.nll(ws), rtol=1e-4)
    assert torch.allclose(flow.compress(ws, 1.0), prior.compress(ws, 1.0), atol=1e-4)


def test_a_flows_log_prob_is_the_change_of_variables(G, prior):
    flow = _perturbed(FlowPrior.from_gaussianized(prior, couplings=3, hidden=16), 0.05).double()
    w = mapped_samples(G, 1, torch.Generator().manual_seed(5))[0].double()
    jacobian = torch.autograd.functional.jacobian(lambda v: flow.stack(
        ((gaussianize(v) - flow.shift) @ flow.whitening))[0], w)
    z = flow.to_latent(w)
    expected = (-0.5 * (z.square().sum() + 16 * math.log(2 * math.pi)) + torch.linalg.slogdet(jacobian)[1])
    assert flow.log_prob(w[None]).item() == pytest.approx(expected.item(), abs=1e-6)


def test_a_flow_round_trips_latents_exactly(G, prior):
    flow = _perturbed(FlowPrior.from_gaussianized(prior), 0.02)
    ws = mapped_samples(G, 1000, torch.Generator().manual_seed(6))[:, None].repeat(1, 4, 1)  # W+ [N, 4, D]
    z = flow.to_latent(ws)
    assert z.shape == ws.shape and z.dtype == torch.float32
    assert (flow.from_latent(z) - ws).abs().max() < 1e-5
    # z -> w -> z: exact when w keeps float64 (along W's thinnest directions float32 w holds z to ~1e-4)
    z = torch.randn(1000, 16, dtype=torch.float64)
    assert (flow.to_latent(flow.from_latent(z)) - z).abs().max() < 1e-5


def test_a_flow_saves_loads_and_stays_with_its_generator(G, prior, tmp_path):
    flow = _perturbed(FlowPrior.from_gaussianized(prior, coupling="additive"), 0.02)
    path = str(tmp_path / "flow.safetensors")
    flow.save(path)
    loaded = load_prior(path, generator=G)
    assert isinstance(loaded, FlowPrior) and fingerprint(loaded) == fingerprint(flow)
    ws = mapped_samples(G, 10, torch.Generator().manual_seed(7))
    assert torch.equal(loaded.log_prob(ws), flow.log_prob(ws))
    with pytest.raises(GeneratorMismatchError, match="fit-flow"):
        load_prior(path, generator=tiny_generator(resolution=16, seed=1))
    prior_path = str(tmp_path / "prior.safetensors")
    prior.save(prior_path)
    assert isinstance(load_prior(prior_path, generator=G), GaussianizedPrior)
    write_bundle(str(tmp_path / "g.safetensors"), {"G_ema": G})
    with pytest.raises(CheckpointError, match="without a flow"):
        load_prior(str(tmp_path / "g.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b" " * 14)
    with pytest.raises(CheckpointError, match="neither"):
        load_prior(str(tmp_path / "junk.safetensors"))


def test_flow_samples_look_like_mapped_samples(G, prior):
    flow = FlowPrior.from_gaussianized(prior)
    drawn = flow.sample(20_000, torch.Generator().manual_seed(8))
    mapped = mapped_samples(G, 20_000, torch.Generator().manual_seed(9))
    assert (drawn.mean(0) - mapped.mean(0)).abs().max() < 0.05 * mapped.std(0).max()


def test_the_exact_latent_comes_from_the_mapping_first_then_the_flow(G, prior):
    flow = FlowPrior.from_gaussianized(prior)
    assert exact_latent(G, prior) is None
    assert exact_latent(G, flow)[0] == "flow"
    assert exact_latent(invertible_generator(), flow)[0] == "mapping"


# ---- a flow wherever a prior goes ----------------------------------------------------------------

def _store_with(tmp_path, generator: Generator, prior_file: str | None):
    from pipeline.invert.config import InvertConfig
    from pipeline.store.store import open_store
    from tests.datasets import colorful, png_bytes
    from tests.stores import invert_here

    generator_file = str(tmp_path / "g.safetensors")
    write_bundle(generator_file, {"G_ema": generator})
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        (inputs / f"{i}.png").write_bytes(png_bytes(colorful(seed=i)))
    stages = ("refine", "compress") if prior_file else ("refine",)
    invert_here(InvertConfig(input=str(inputs), output=str(tmp_path / "store"), generator=generator_file,
                             prior=prior_file, stages=stages, steps=2, perceptual="none", progress=False,
                             decode_threads=1))
    return open_store(str(tmp_path / "store"))


def test_a_store_inverted_with_a_flow_holds_each_latents_exact_z(G, prior, tmp_path):
    flow = _perturbed(FlowPrior.from_gaussianized(prior), 0.02)
    flow.save(str(tmp_path / "flow.safetensors"))
    store = _store_with(tmp_path, G, str(tmp_path / "flow.safetensors"))
    assert store.metadata["prior_kind"] == "flow" and store.metadata["z_space"] == "flow"
    frame = store.to_pandas()
    ws, z = (torch.from_numpy(store.latents(frame, column)) for column in ("w_refined", "z"))
    assert z.shape == ws.shape
    assert torch.allclose(flow.from_latent(z), ws, atol=1e-5)
    assert torch.allclose(torch.tensor(frame["prior_nll_refined"].to_numpy()), flow.nll(ws), rtol=1e-4)
    compressed = torch.from_numpy(store.latents(frame, "w_compressed"))
    assert torch.allclose(compressed, flow.compress(ws, store.settings["tau"]), atol=1e-5)


def test_the_report_says_what_z_is_and_which_rows_are_atypical_in_it(G, prior, tmp_path):
    from pathlib import Path

    from pipeline.report.html_report import build_report

    flow = _perturbed(FlowPrior.from_gaussianized(prior), 0.02)
    flow.save(str(tmp_path / "flow.safetensors"))
    store = _store_with(tmp_path, G, str(tmp_path / "flow.safetensors"))
    page = Path(build_report(store.uri, sheet_size=2, in_domain=0)).read_text()
    assert '<h2 id="exact-latents">Exact latents (z)</h2>' in page and "flow.from_latent(z) gives w back" in page
    assert "outside the middle 98%" in page and "(flow)" in page  # the settings table names the prior's kind


def test_a_store_of_an_invertible_generator_holds_the_generators_own_z(tmp_path):
    G = invertible_generator()
    store = _store_with(tmp_path, G, None)
    assert store.metadata["z_space"] == "mapping" and store.metadata["prior_kind"] is None
    frame = store.to_pandas()
    ws, z = (torch.from_numpy(store.latents(frame, column)) for column in ("w_refined", "z"))
    assert torch.allclose(G.mapping(z[:, 2])[:, 0], ws[:, 2], atol=1e-5)  # G.mapping(z) gives w back
