"""The latent regressor: shapes, masks and missing pixels, bundles bound to their generator, learning."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import GeneratorMismatchError
from pipeline.models.bundle import write_bundle
from pipeline.models.checkpoints import load_generator
from pipeline.models.encoder import Encoder, encode, load_encoder
from pipeline.training.encoder_training import LossWeights, encoder_losses, evaluate, sample_training_batch
from tests.conftest import tiny_generator


def small_encoder(G, **kwargs):
    return Encoder.for_generator(G, base_channels=16, max_channels=64, **kwargs)


def test_untrained_encoder_predicts_w_avg_in_both_modes(G):
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    for mode in ("w+", "w"):
        ws = encode(small_encoder(G, mode=mode), images)
        assert ws.shape == (3, G.num_ws, G.w_dim)
        torch.testing.assert_close(ws, G.w_avg.expand_as(ws))


def test_w_mode_predicts_one_w_for_all_layers(G):
    E = small_encoder(G, mode="w")
    torch.nn.init.normal_(E.head.weight, std=0.1)
    ws = encode(E, torch.rand(2, 3, 16, 16))
    assert torch.equal(ws, ws[:, :1].expand_as(ws))


def test_nan_pixels_are_treated_as_missing(G):
    E = small_encoder(G)
    torch.nn.init.normal_(E.head.weight, std=0.1)
    images = torch.rand(2, 3, 16, 16)
    holes = images.clone()
    holes[:, :, 4:8, 4:8] = float("nan")
    mask = torch.ones(2, 1, 16, 16)
    mask[:, :, 4:8, 4:8] = 0
    torch.testing.assert_close(encode(E, holes), encode(E, images, mask))
    assert not torch.allclose(encode(E, holes), encode(E, images))


def test_wrong_resolution_is_a_clear_error(G):
    with pytest.raises(ValueError, match="16x16"):
        encode(small_encoder(G), torch.rand(1, 3, 32, 32))


def test_bundle_round_trip_and_refusal_for_another_generator(G, tmp_path):
    E = small_encoder(G)
    torch.nn.init.normal_(E.head.weight, std=0.1)
    path = str(tmp_path / "E.safetensors")
    write_bundle(path, {"E": E})
    loaded = load_encoder(path, generator=G)
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(encode(loaded, images), encode(E, images))
    with pytest.raises(GeneratorMismatchError, match="train-encoder"):
        load_encoder(path, generator=tiny_generator(resolution=16, seed=9))


def test_torchvision_backbone_loads_imagenet_weights_with_a_zero_mask_channel(G, tmp_path):
    import torchvision

    reference = torchvision.models.resnet18()
    E = small_encoder(G, backbone="resnet18")
    E.backbone.load_imagenet(reference.state_dict())
    torch.testing.assert_close(E.backbone.net.conv1.weight[:, :3], reference.conv1.weight)
    assert torch.equal(E.backbone.net.conv1.weight[:, 3], torch.zeros_like(E.backbone.net.conv1.weight[:, 3]))
    assert encode(E, torch.rand(2, 3, 16, 16)).shape == (2, G.num_ws, G.w_dim)


def test_a_few_steps_on_the_fixture_generator_lower_the_loss(fixture_dir):
    G = load_generator(str(fixture_dir / "sg2ada_32px.pkl"))
    E = small_encoder(G)
    optimizer = torch.optim.Adam(E.parameters(), lr=1e-3)
    batch = sample_training_batch(G, 16, torch.Generator().manual_seed(0))
    first = None
    for _ in range(15):
        loss = encoder_losses(E, G, batch, perceptual=None, weights=LossWeights())["total"]
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.7 * first


def test_briefly_trained_encoder_is_closer_to_the_true_latent_than_w_avg(G):
    torch.manual_seed(0)
    E = small_encoder(G)
    optimizer = torch.optim.Adam(E.parameters(), lr=1e-3)
    rng = torch.Generator().manual_seed(1)
    for _ in range(150):
        batch = sample_training_batch(G, 16, rng)
        loss = encoder_losses(E, G, batch, perceptual=None, weights=LossWeights())["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    held_out = sample_training_batch(G, 64, torch.Generator().manual_seed(123),
                                     mask_weights={"full": 1.0})
    figures = evaluate(E, G, held_out, perceptual=None)
    assert figures["eval_latent_mse"] < 0.5 * figures["eval_w_avg_latent_mse"]


def test_collages_have_no_latent_target_and_show_two_images(G):
    batch = sample_training_batch(G, 32, torch.Generator().manual_seed(2), mask_weights={"collage": 1.0})
    assert not batch.latent_valid.any()
    assert torch.equal(batch.masks, torch.ones_like(batch.masks))
    assert torch.equal(batch.targets, batch.inputs), "E learns to project the collage itself"


def test_real_images_fill_their_share_of_the_batch_without_latent_targets(G, tmp_path):
    from pipeline.data.image_pool import load_image_pool
    from tests.datasets import messy_folder

    expected = messy_folder(tmp_path / "real")
    pool = load_image_pool(str(tmp_path / "real"), resolution=16)
    bad = sum(status != "ok" for status in expected.values())
    assert len(pool.images) == 9 and sum(pool.skipped.values()) == bad and str(bad) in pool.describe()
    batch = sample_training_batch(G, 8, torch.Generator().manual_seed(0), real_images=pool.images,
                                  real_fraction=0.5, mask_weights={"full": 1.0})
    assert not batch.latent_valid[:4].any() and batch.latent_valid[4:].all()
    assert any(torch.equal(batch.targets[0], img) for img in pool.images)
    E = small_encoder(G)
    losses = encoder_losses(E, G, batch, perceptual=None, weights=LossWeights())
    assert torch.isfinite(losses["total"])
