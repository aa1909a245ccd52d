"""Behaviour of the StyleGAN2 modules beyond checkpoint parity: shapes, StyleSpace, modes, batching."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.stylegan2 import Discriminator, Generator
from tests.conftest import tiny_discriminator, tiny_generator


def ws_for(G: Generator, n: int = 4, seed: int = 0) -> torch.Tensor:
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    return G.mapping(z)


@pytest.mark.parametrize("resolution,num_ws", [(4, 2), (8, 4), (16, 6), (64, 10), (256, 14), (1024, 18)])
def test_num_ws_and_image_shape_for_every_power_of_two(resolution, num_ws):
    G = Generator(z_dim=8, w_dim=8, img_resolution=resolution, img_channels=3, mapping_kwargs={"num_layers": 1},
                  synthesis_kwargs={"channel_base": 4 * resolution, "channel_max": 4}).eval()
    assert G.num_ws == num_ws
    with torch.no_grad():
        img = G(torch.randn(2, 8))
    assert img.shape == (2, 3, resolution, resolution)


@pytest.mark.parametrize("resolution", [3, 48, 2])
def test_non_power_of_two_resolution_is_refused(resolution):
    with pytest.raises(ValueError, match="power of two"):
        Generator(z_dim=8, w_dim=8, img_resolution=resolution)


@torch.no_grad()
def test_synthesis_from_styles_of_styles_equals_synthesis():
    G = tiny_generator()
    ws = ws_for(G)
    assert torch.equal(G.synthesis_from_styles(G.styles(ws)), G.synthesis(ws))


@torch.no_grad()
def test_styles_cover_every_affine_layer_with_its_channel_count():
    G = tiny_generator(resolution=16)
    styles = G.styles(ws_for(G))
    assert list(styles) == ["b4.conv1", "b4.torgb", "b8.conv0", "b8.conv1", "b8.torgb",
                            "b16.conv0", "b16.conv1", "b16.torgb"]
    for name, s in styles.items():
        block, layer = name.split(".")
        assert s.shape == (4, getattr(getattr(G.synthesis, block), layer).weight.shape[1])


@torch.no_grad()
def test_editing_one_style_channel_changes_the_image_and_only_that_sample():
    G = tiny_generator()
    ws = ws_for(G)
    styles = G.styles(ws)
    edited = {k: v.clone() for k, v in styles.items()}
    edited["b8.conv1"][0, 3] += 5.0
    before, after = G.synthesis_from_styles(styles), G.synthesis_from_styles(edited)
    assert (after[0] - before[0]).abs().max() > 1e-3
    assert torch.equal(after[1:], before[1:])


@torch.no_grad()
def test_fused_and_unfused_modulation_agree():
    G = tiny_generator()
    ws = ws_for(G)
    torch.testing.assert_close(G.synthesis(ws, fused_modconv=True), G.synthesis(ws, fused_modconv=False),
                               rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_a_batch_equals_its_images_rendered_one_at_a_time():
    G = tiny_generator()
    ws = ws_for(G, n=5)
    batch = G.synthesis(ws)
    singles = torch.cat([G.synthesis(ws[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(batch, singles, rtol=1e-4, atol=1e-5)  # float rounding of grouped convs


@torch.no_grad()
def test_noise_modes():
    G = tiny_generator()
    ws = ws_for(G)
    const_a, const_b = G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const")
    assert torch.equal(const_a, const_b)
    assert not torch.equal(G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random"))
    assert not torch.equal(G.synthesis(ws, noise_mode="none"), const_a)
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="sometimes")


@torch.no_grad()
def test_truncation_moves_towards_w_avg_and_cutoff_limits_it():
    G = tiny_generator()
    z = torch.randn(3, G.z_dim)
    ws, half = G.mapping(z), G.mapping(z, truncation_psi=0.5)
    torch.testing.assert_close(half, G.w_avg + 0.5 * (ws - G.w_avg))
    cut = G.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(cut[:, :2], half[:, :2])
    torch.testing.assert_close(cut[:, 2:], ws[:, 2:])


def test_wrong_ws_shape_is_a_clear_error():
    G = tiny_generator()
    with pytest.raises(ValueError, match=r"ws of shape \[N, 6, 16\]"):
        G.synthesis(torch.zeros(2, 5, 16))


@torch.no_grad()
def test_conditional_generator_and_discriminator_need_labels():
    G = tiny_generator(c_dim=4)
    D = tiny_discriminator(c_dim=4)
    c = torch.eye(4)
    img = G(torch.randn(4, G.z_dim), c)
    assert D(img, c).shape == (4, 1)
    assert not torch.equal(G(torch.zeros(4, G.z_dim), c), G(torch.zeros(4, G.z_dim), c.roll(1, 0)))
    with pytest.raises(ValueError, match="conditional"):
        G(torch.randn(4, G.z_dim))
    with pytest.raises(ValueError, match="conditional"):
        D(img)


@pytest.mark.parametrize("architecture", ["orig", "skip", "resnet"])
@torch.no_grad()
def test_every_generator_and_discriminator_architecture_runs(architecture):
    G = tiny_generator(architecture=architecture)
    D = Discriminator(img_resolution=16, channel_base=256, channel_max=16, architecture=architecture).eval()
    img = G(torch.randn(4, G.z_dim))
    assert img.shape == (4, 3, 16, 16) and torch.isfinite(img).all()
    assert D(img).shape == (4, 1)


@torch.no_grad()
def test_discriminator_features_are_per_block_and_end_in_the_logit_input():
    D = tiny_discriminator(resolution=16)
    feats = D.features(torch.randn(4, 3, 16, 16))
    assert [tuple(f.shape[2:]) for f in feats] == [(8, 8), (4, 4)]


def test_gradients_flow_to_ws_for_inversion():
    G = tiny_generator()
    ws = ws_for(G).detach().requires_grad_(True)
    G.synthesis(ws).square().mean().backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0


@torch.no_grad()
def test_bfloat16_autocast_stays_close_to_float32():
    G = tiny_generator()
    ws = ws_for(G)
    ref = G.synthesis(ws)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = G.synthesis(ws)
    assert low.dtype == torch.float32  # images are always returned in float32
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()


def test_mapping_updates_w_avg_only_when_asked():
    G = tiny_generator()
    before = G.w_avg.clone()
    G.mapping(torch.randn(8, G.z_dim))
    assert torch.equal(G.w_avg, before)
    G.mapping(torch.randn(8, G.z_dim), update_w_avg=True)
    assert not torch.equal(G.w_avg, before)


@torch.no_grad()
def test_noise_inputs_replace_the_stored_noise_maps_per_image():
    G = tiny_generator()
    ws = ws_for(G, n=2)
    layers = G.synthesis.noise_layers()
    assert list(layers) == ["b4.conv1", "b8.conv0", "b8.conv1", "b16.conv0", "b16.conv1"]
    const_maps = {k: layer.noise_const.expand(2, 1, -1, -1) for k, layer in layers.items()}
    assert torch.equal(G.synthesis(ws, noise_inputs=const_maps), G.synthesis(ws, noise_mode="const"))
    zero_maps = {k: torch.zeros_like(v) for k, v in const_maps.items()}
    assert torch.equal(G.synthesis(ws, noise_inputs=zero_maps), G.synthesis(ws, noise_mode="none"))
