"""An official stylegan2-ada-pytorch pickle loads and reproduces the official outputs."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.checkpoints import load_networks
from tests.conftest import IMAGE_TOL, LATENT_TOL, load_reference, max_diff



@pytest.fixture(scope="module")
def nets(fixture_dir):
    return load_networks(str(fixture_dir / "sg2ada_32px.pkl"))


@pytest.fixture(scope="module")
def ref(fixture_dir):
    return load_reference(fixture_dir / "sg2ada_32px_outputs.npz")


def test_pickle_holds_G_G_ema_and_D(nets):
    assert set(nets) == {"G", "G_ema", "D"}
    assert nets["G_ema"].num_ws == 8 and nets["G_ema"].img_resolution == 32


@torch.no_grad()
def test_mapping_matches_official(nets, ref):
    G = nets["G_ema"]
    assert max_diff(G.mapping(ref["z"]), ref["ws"]) < LATENT_TOL
    assert max_diff(G.mapping(ref["z"], truncation_psi=0.7), ref["ws_trunc07"]) < LATENT_TOL
    assert max_diff(G.w_avg, ref["w_avg"]) < LATENT_TOL


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("noise_mode,key", [("const", "img_const"), ("none", "img_none")])
@torch.no_grad()
def test_synthesis_matches_official(nets, ref, noise_mode, key, fused):
    img = nets["G_ema"].synthesis(ref["ws"], noise_mode=noise_mode, fused_modconv=fused)
    assert max_diff(img, ref[key]) < IMAGE_TOL


@torch.no_grad()
def test_truncated_and_full_forward_match_official(nets, ref):
    G = nets["G_ema"]
    assert max_diff(G.synthesis(ref["ws_trunc07"]), ref["img_trunc07_const"]) < IMAGE_TOL
    assert max_diff(G(ref["z"], noise_mode="const"), ref["img_full_forward"]) < IMAGE_TOL


@torch.no_grad()
def test_G_is_loaded_separately_from_G_ema(nets, ref):
    assert max_diff(nets["G"](ref["z"]), ref["img_G_const"]) < IMAGE_TOL
    assert max_diff(nets["G"](ref["z"]), ref["img_const"]) > 1e-2


@torch.no_grad()
def test_styles_are_the_official_affine_outputs_in_network_order(nets, ref):
    styles = nets["G_ema"].styles(ref["ws"])
    expected_names = [n.removeprefix("synthesis.").removesuffix(".affine") for n in ref["style_names"]]
    assert list(styles) == expected_names
    for i, name in enumerate(expected_names):
        assert max_diff(styles[name], ref[f"style_{i:02d}"]) < LATENT_TOL, name


@torch.no_grad()
def test_discriminator_logits_match_official(nets, ref):
    assert max_diff(nets["D"](ref["img_const"]), ref["d_logits_img_const"]) < LATENT_TOL
    assert max_diff(nets["D"](ref["d_img_random"]), ref["d_logits_img_random"]) < LATENT_TOL
