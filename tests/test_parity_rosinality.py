"""A rosinality/stylegan2-pytorch checkpoint loads and reproduces the rosinality outputs."""

from __future__ import annotations

import argparse

import pytest
import torch

from pipeline.models import rosinality
from pipeline.models.checkpoints import load_generator
from tests.conftest import IMAGE_TOL, LATENT_TOL, load_reference, max_diff, tiny_generator



@pytest.fixture(scope="module")
def G(fixture_dir):
    return load_generator(str(fixture_dir / "rosinality_32px.pt"))


@pytest.fixture(scope="module")
def ref(fixture_dir):
    return load_reference(fixture_dir / "rosinality_32px_outputs.npz")


@torch.no_grad()
def test_mapping_and_latent_avg_match(G, ref):
    assert max_diff(G.mapping(ref["z"])[:, 0], ref["w"]) < LATENT_TOL
    assert max_diff(G.mapping(ref["z"]), ref["latents"]) < LATENT_TOL
    assert max_diff(G.w_avg, ref["latent_avg"]) < LATENT_TOL


@torch.no_grad()
def test_images_match_rosinality(G, ref):
    assert max_diff(G(ref["z"]), ref["img"]) < IMAGE_TOL
    assert max_diff(G(ref["z"], truncation_psi=0.7), ref["img_trunc07"]) < IMAGE_TOL
    assert max_diff(G.synthesis(ref["w_given"][:, None].repeat(1, G.num_ws, 1)), ref["img_w_given"]) < IMAGE_TOL
    assert max_diff(G.synthesis(ref["wplus_given"]), ref["img_wplus_given"]) < IMAGE_TOL
    assert max_diff(G.synthesis(G.mapping(ref["z"]), noise_mode="none"), ref["img_zero_noise"]) < IMAGE_TOL


@torch.no_grad()
def test_style_mixing_matches_inject_index(G, ref):
    w1, w2 = G.mapping(ref["z"]), G.mapping(ref["z2"])
    mixed = torch.cat([w1[:, :3], w2[:, 3:]], dim=1)  # rosinality inject_index=3
    assert max_diff(G.synthesis(mixed), ref["img_mix_inject3"]) < IMAGE_TOL


@torch.no_grad()
def test_styles_are_the_modulation_outputs(G, ref):
    styles = list(G.styles(G.mapping(ref["z"])).values())
    assert len(styles) == len(ref["modulation_names"])
    for i, style in enumerate(styles):
        assert max_diff(style, ref[f"modulation_{i:02d}"]) < LATENT_TOL, ref["modulation_names"][i]


def test_name_mapping_round_trips_the_original_state_dict(fixture_dir):
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(fixture_dir / "rosinality_32px.pt", map_location="cpu", weights_only=True)
    state = ckpt["g_ema"]
    back = rosinality.to_rosinality(rosinality.to_latentmill(state, 32, 8, source="fixture"), 32, 8)
    assert set(back) == set(state)
    for name, tensor in state.items():
        torch.testing.assert_close(back[name], tensor, rtol=1e-6, atol=1e-7, msg=name)


def test_name_mapping_round_trips_latentmill_weights():
    G = tiny_generator(resolution=16)
    ours = {k: v for k, v in G.state_dict().items() if k != "mapping.w_avg"}
    theirs = rosinality.to_rosinality(ours, 16, 2)
    again = rosinality.to_latentmill(theirs, 16, 2, source="round trip")
    assert set(again) == set(ours)
    for name in ours:
        torch.testing.assert_close(again[name], ours[name], rtol=1e-6, atol=1e-7, msg=name)
