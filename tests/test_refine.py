"""Batched prior-regularized refinement recovers G's own samples; the prior keeps latents typical."""

from __future__ import annotations

import pytest
import torch

from pipeline.losses.discriminator_features import DiscriminatorFeatureLoss
from pipeline.losses.pixel import masked_mse
from pipeline.stages.refine import learning_rate, refine as _refine
from tests.conftest import tiny_discriminator, tiny_generator


def refine(*args, **kwargs):
    """latentmill's refine in fp32 unless a test says otherwise: these tests compare numbers, whatever
    `--precision auto` would pick on this machine."""
    return _refine(*args, **{"precision": "fp32", **kwargs})


@pytest.fixture(scope="module")
def targets(G):
    """G's own samples (so a perfect latent exists) and the w_avg starting point."""
    with torch.no_grad():
        ws = G.mapping(torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(7)))
        return G.synthesis(ws), G.w_avg.expand(4, G.num_ws, -1).clone()


def test_refining_from_w_avg_lowers_pixel_mse_by_a_large_factor(G, targets):
    images, init = targets
    before = masked_mse(G.synthesis(init), images)
    result = refine(G, images, init, steps=150)
    assert result.ws.shape == init.shape
    assert (before / result.losses["pixel"]).min() > 10
    torch.testing.assert_close(result.losses["pixel"], masked_mse(result.images, images))


def test_the_prior_keeps_latents_typical_at_comparable_mse(G, prior, targets):
    images, init = targets
    free = refine(G, images, init, steps=150)
    regularized = refine(G, images, init, steps=150, prior=prior, prior_weight=0.01)
    assert prior.nll(regularized.ws).mean() < 0.1 * prior.nll(free.ws).mean()
    assert regularized.losses["pixel"].mean() < 2 * free.losses["pixel"].mean()


def test_a_batch_gives_the_same_result_as_one_image_at_a_time(G, prior, targets):
    images, init = targets
    kwargs = dict(steps=20, prior=prior, optimize_noise=True, w_noise_factor=0.05, seeds=[11, 12, 13])
    batch = refine(G, images[:3], init[:3], micro_batch=3, **kwargs)  # one pass over the batch, as on a GPU
    for i in range(3):
        single = refine(G, images[i : i + 1], init[i : i + 1], **{**kwargs, "seeds": [kwargs["seeds"][i]]})
        torch.testing.assert_close(single.ws[0], batch.ws[i], rtol=1e-3, atol=1e-4)


def test_micro_batches_give_the_batchs_result(G, prior, targets):
    images, init = targets
    kwargs = dict(steps=10, prior=prior, optimize_noise=True, w_noise_factor=0.05, seeds=[1, 2, 3, 4],
                  early_stop_patience=3)
    whole = refine(G, images, init, micro_batch=4, **kwargs)
    for micro_batch in (1, 3):
        parts = refine(G, images, init, micro_batch=micro_batch, **kwargs)
        torch.testing.assert_close(parts.ws, whole.ws, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(parts.images, whole.images, rtol=1e-3, atol=1e-4)
        assert torch.equal(parts.steps_run, whole.steps_run)


def test_masked_refinement_only_fits_the_known_pixels(G, targets):
    images, init = targets
    mask = torch.zeros(4, 1, 16, 16)
    mask[..., :8] = 1  # left half known
    garbage = images.clone()
    garbage[..., 8:] = 5.0  # right half is nonsense the loss must ignore
    result = refine(G, garbage, init, masks=mask, steps=100)
    assert result.losses["pixel"].mean() < 0.1 * masked_mse(G.synthesis(init), images, mask).mean()
    assert result.images[..., 8:].abs().max() < 5.0


def test_discriminator_perceptual_loss_drives_refinement(G, targets):
    images, init = targets
    loss = DiscriminatorFeatureLoss(tiny_discriminator(resolution=16))
    result = refine(G, images, init, steps=60, pixel_weight=0.0, perceptual=loss)
    assert (result.losses["perceptual"] < loss(G.synthesis(init), images)).all()


def test_w_space_keeps_one_latent_for_all_layers(G, targets):
    images, init = targets
    result = refine(G, images, init, steps=10, latent_space="w")
    assert torch.equal(result.ws, result.ws[:, :1].expand_as(result.ws))


def test_early_stopping_stops_converged_images(G, targets):
    images, init = targets
    with torch.no_grad():
        exact = G.mapping(torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(7)))
    result = refine(G, images, exact, steps=100, early_stop_patience=5, early_stop_tol=1e-2)
    assert (result.steps_run < 100).all()


def test_learning_rate_schedule_warms_up_then_ramps_down():
    lrs = [learning_rate(s, 100, 0.1, 0.05, 0.25) for s in range(100)]
    assert lrs[0] == 0 and max(lrs) == pytest.approx(0.1)
    assert lrs[50] == pytest.approx(0.1) and lrs[99] < 0.01


def test_compiled_synthesis_gives_the_eager_result_and_leaves_G_unchanged():
    from pipeline.models.fingerprint import fingerprint

    G = tiny_generator(resolution=8)  # the fewest layers: compiling them is this test's cost
    with torch.no_grad():
        images = G.synthesis(G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(1)), None))
        init = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(2)), None)
    before = fingerprint(G)
    eager = refine(G, images, init, steps=3, fused_modconv=False)
    compiled = refine(G, images, init, steps=3, fused_modconv=False, compile=True)
    assert not torch.equal(eager.ws, init), "refinement moved the latents"
    torch.testing.assert_close(compiled.ws, eager.ws, rtol=1e-4, atol=1e-5)
    assert fingerprint(G) == before and set(G.state_dict()) == set(tiny_generator(resolution=8).state_dict())
