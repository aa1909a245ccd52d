"""StyleGAN2 training pieces: augmentation, losses, regularizers, EMA, KID."""

from __future__ import annotations

import torch

from pipeline.training.gan_training import (GANLossSettings, RandomFeatures, diff_augment, discriminator_loss,
                                            ema_beta, generator_loss, kid, lazy_adam, make_ema,
                                            path_length_penalty, r1_penalty, update_ema)
from tests.conftest import tiny_discriminator, tiny_generator


def test_diff_augment_keeps_shape_and_is_differentiable():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    y = diff_augment(x, "color,translation,cutout", torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(diff_augment(x, "", None), x)


def test_a_few_training_steps_teach_D_to_separate_reals_from_fakes():
    G, D = tiny_generator(resolution=16).train(), tiny_discriminator(resolution=16).train()
    settings = GANLossSettings(augment="")
    rng = torch.Generator().manual_seed(0)
    reals = torch.zeros(8, 3, 16, 16)  # a trivially recognizable "data set"
    opt = lazy_adam(D.parameters(), 0.002, settings.r1_interval)
    first = discriminator_loss(G, D, reals, settings, rng).item()
    for _ in range(20):
        loss = discriminator_loss(G, D, reals, settings, rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_regularizers_are_finite_and_have_gradients():
    G, D = tiny_generator(resolution=16).train(), tiny_discriminator(resolution=16).train()
    settings, rng = GANLossSettings(pl_weight=2.0), torch.Generator().manual_seed(0)
    r1 = r1_penalty(D, torch.rand(4, 3, 16, 16), settings, rng)
    r1.backward()
    assert torch.isfinite(r1) and any(p.grad is not None for p in D.parameters())
    pl, mean = path_length_penalty(G, 4, torch.zeros(()), settings, rng)
    pl.backward()
    assert torch.isfinite(pl) and mean > 0
    assert torch.isfinite(generator_loss(G, D, 4, settings, rng))


def test_ema_follows_the_generator_at_the_set_half_life():
    G = tiny_generator(resolution=16)
    G_ema = make_ema(G)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    update_ema(G_ema, G, ema_beta(batch_size=10, half_life_images=10))  # one half-life: halfway
    p, p_ema, p_old = next(G.parameters()), next(G_ema.parameters()), next(tiny_generator(resolution=16).parameters())
    torch.testing.assert_close(p_ema, p_old + 0.5)


def test_kid_is_near_zero_for_one_distribution_and_large_for_two():
    features = RandomFeatures()
    a, b = torch.rand(300, 3, 16, 16), torch.rand(300, 3, 16, 16)
    same, different = kid(features(a), features(b)), kid(features(a), features(b * 0.2 - 0.8))
    assert abs(same) < 0.1 * different and different > 0
