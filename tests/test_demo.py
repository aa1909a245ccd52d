"""The bundled demo: it loads through the public loaders, it inverts recognizably, and `latentmill demo` runs."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from latentmill.cli import main
from pipeline.data.decode import decode_image
from pipeline.demo import DEMO_DIR, DemoBundle
from pipeline.models.checkpoints import load_generator, load_networks
from pipeline.models.encoder import encode, load_encoder
from pipeline.models.stylegan2 import Discriminator
from pipeline.priors.flow import FlowPrior
from pipeline.priors.gaussian import GaussianizedPrior, mapped_samples
from pipeline.priors.load import load_prior
from pipeline.models.identity import load_identity_model
from pipeline.store.store import read_latents

pytestmark = pytest.mark.slow  # end-to-end runs (Ray, subprocesses, training): minutes on 2 cores


@pytest.fixture(scope="module")
def bundle() -> DemoBundle:
    return DemoBundle.locate()


def sample_images(bundle: DemoBundle, n: int) -> torch.Tensor:
    images = []
    for shard in sorted(Path(bundle.sample).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".png") and len(images) < n:
                    images.append(torch.from_numpy(decode_image(tar.extractfile(member).read(), resolution=32).image))
    return torch.stack(images)


def test_the_bundle_loads_through_the_public_loaders_and_stays_small(bundle):
    G = load_generator(bundle.generator)
    assert isinstance(load_networks(bundle.generator)["D"], Discriminator), "D gives the perceptual loss"
    E = load_encoder(bundle.encoder, generator=G)
    prior = GaussianizedPrior.load(bundle.prior, generator=G)
    identity, name = load_identity_model(bundle.identity)
    flow = load_prior(bundle.flow, generator=G)
    assert E.num_ws == G.num_ws and prior.w_dim == G.w_dim and name.startswith("embedding:")
    assert isinstance(flow, FlowPrior)
    weights = sum(Path(p).stat().st_size for p in (bundle.generator, bundle.encoder, bundle.prior, bundle.flow,
                                                   bundle.identity))
    sample = sum(p.stat().st_size for p in Path(bundle.sample).glob("*.tar"))
    assert weights + sample < 20e6
    card = (DEMO_DIR / "MODEL_CARD.md").read_text()
    assert "KID" in card and "steps" in card and "top-1" in card and "## Flow" in card


def test_the_demo_flow_beats_the_gaussianized_prior_on_fresh_samples(bundle):
    G = load_generator(bundle.generator)
    prior, flow = load_prior(bundle.prior, generator=G), load_prior(bundle.flow, generator=G)
    ws = mapped_samples(G, 5_000, torch.Generator().manual_seed(2026))  # not the fit's, nor its held-out seed
    gain = (flow.log_prob(ws) - prior.log_prob(ws)).mean().item()
    assert gain > 20, f"{gain:.1f} nats per latent"  # 31 when the bundle was made
    z = flow.to_latent(ws)
    assert (flow.from_latent(z) - ws).abs().max() < 1e-5


def test_the_encoder_alone_gives_recognizable_reconstructions(bundle):
    G = load_generator(bundle.generator)
    E = load_encoder(bundle.encoder, generator=G)
    identity, _ = load_identity_model(bundle.identity)
    images = sample_images(bundle, 16)
    with torch.no_grad():
        recon = G.synthesis(encode(E, images), noise_mode="const")
        average = G.synthesis(G.w_avg.expand(16, G.num_ws, -1), noise_mode="const")
        a, b = identity.embed(images), identity.embed(recon)
    cos = a @ b.T
    matched, mismatched = cos.diagonal().mean(), (cos.sum() - cos.diagonal().sum()) / (16 * 15)
    assert matched > mismatched + 0.2, "a reconstruction is closer to its own input than to the others'"
    assert (recon - images).square().mean() < 0.7 * (average - images).square().mean()


def test_demo_runs_every_stage_on_a_subset_and_writes_a_report(ray_local, tmp_path):
    result = CliRunner().invoke(main, ["demo", "--output", str(tmp_path), "--limit", "4", "--steps", "2",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    # a subset is a store of its own beside the full demo's, so `demo --limit N` never meets a recipe mismatch
    frame = read_latents(str(tmp_path / "store-first-4"))
    assert len(frame) == 4 and (frame["status"] == "ok").all()
    for column in ("w_encoded", "w_refined", "w_compressed", "id_cosine_refined", "id_cosine_compressed",
                   "perceptual", "prior_nll_refined"):
        assert frame[column].notna().all(), column
    page = (tmp_path / "store-first-4" / "report.html").read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert sources and all((tmp_path / "store-first-4" / s).is_file() for s in sources)
    assert "compression (tau)" in page and "truncation (psi)" in page
    assert '<h2 id="curation">Curation</h2>' in page and "curate:" in result.output
    store = str(tmp_path / "store-first-4")
    outputs = [tmp_path / "store-first-4" / p for p in ("report.html", "curation/flags.parquet", "latents")]
    before = {p: p.stat().st_mtime_ns for p in outputs}
    again = CliRunner().invoke(main, ["demo", "--output", str(tmp_path), "--limit", "4", "--steps", "2", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "invert: reused: all 1 shards were already done" in again.output
    assert "curate: reused" in again.output
    assert "report (the store, its curation, rebalancing and augmentation): its inputs are unchanged" in again.output
    assert {p: p.stat().st_mtime_ns for p in outputs} == before, "an unchanged demo rerun recomputes nothing"
    for by in ("latent", "identity"):
        curated = CliRunner().invoke(main, ["curate", store, "--duplicates-by", by, "--device", "cpu"])
        assert curated.exit_code == 0, curated.output
        assert "4 rows:" in curated.output
    reported = CliRunner().invoke(main, ["report", store, "--device", "cpu"])
    assert reported.exit_code == 0 and '<h2 id="curation">Curation</h2>' in (tmp_path / "store-first-4" / "report.html").read_text()


def test_composition_keeps_the_pasted_parts(bundle):
    from pipeline.curation.rebalance import compose, masked_l1, part_masks

    G = load_generator(bundle.generator)
    E = load_encoder(bundle.encoder, generator=G)
    images = sample_images(bundle, 32)
    parts, backgrounds = images[:16], images[16:]
    masks, _ = part_masks(16, 32, generator=torch.Generator().manual_seed(0))
    _, _, composed = compose(E, G, parts, backgrounds, masks)
    _, _, without_parts = compose(E, G, backgrounds, backgrounds, masks)  # the same pipeline, no part pasted
    kept = masked_l1(composed, parts, masks).mean()
    baseline = masked_l1(without_parts, parts, masks).mean()
    assert kept < 0.8 * baseline, (kept, baseline)
