"""StyleSpace: example-based detection finds a planted channel; edits, scores and dependency behave."""

from __future__ import annotations

import pytest
import torch

from pipeline.stages.stylespace import (Channel, attribute_dependency, attribute_scores, detect_channels,
                                        edit_styles, population_stats, styles_of)


@pytest.fixture(scope="module")
def stats(G):
    return population_stats(G, num_samples=4000)


def samples(G, n, seed):
    with torch.no_grad():
        return G.mapping(torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("num_positives", [10, 20, 30])
def test_detection_ranks_a_planted_channel_first(G, stats, num_positives):
    planted = Channel("b8.conv1", 5, 0.0, 1.0)
    positives = edit_styles(styles_of(G, samples(G, num_positives, seed=1)), [planted], 3.0, stats)
    top = detect_channels(positives, stats, top_k=5)
    assert (top[0].layer, top[0].channel, top[0].sign) == ("b8.conv1", 5, 1.0)
    assert top[0].score > 2.0 > top[1].score


def test_detection_can_be_restricted_to_layers_and_skips_torgb_by_default(G, stats):
    styles = styles_of(G, samples(G, 20, seed=2))
    assert all(not c.layer.endswith("torgb") for c in detect_channels(styles, stats, top_k=50))
    assert {c.layer for c in detect_channels(styles, stats, top_k=50, layers=["b16.conv0"])} == {"b16.conv0"}


def test_attribute_scores_grow_with_the_edit_strength(G, stats):
    channels = [Channel("b8.conv1", 5, 0.0, 1.0), Channel("b16.conv0", 2, 0.0, -1.0)]
    styles = styles_of(G, samples(G, 50, seed=3))
    base = attribute_scores(styles, channels, stats)
    stronger = attribute_scores(edit_styles(styles, channels, 2.0, stats), channels, stats)
    torch.testing.assert_close(stronger - base, torch.full_like(base, 2.0))


def test_edits_render_through_synthesis_from_styles(G, stats):
    styles = styles_of(G, samples(G, 4, seed=4))
    edited = edit_styles(styles, [Channel("b8.conv1", 5, 0.0, 1.0)], 5.0, stats)
    assert not torch.equal(G.synthesis_from_styles(edited), G.synthesis_from_styles(styles))
    assert torch.equal(styles["b8.conv1"], styles_of(G, samples(G, 4, seed=4))["b8.conv1"]), "inputs untouched"


def test_attribute_dependency_is_zero_for_classifiers_blind_to_the_edit(G, stats):
    styles = styles_of(G, samples(G, 16, seed=5))
    channels = [Channel("b16.conv1", 3, 0.0, 1.0)]
    classifiers = {"target": lambda x: x.mean(dim=(1, 2, 3)), "blind": lambda x: torch.arange(len(x)).float(),
                   "sees_red": lambda x: x[:, 0].mean(dim=(1, 2))}
    ad = attribute_dependency(G, styles, channels, 5.0, stats, classifiers, target="target")
    assert set(ad) == {"blind", "sees_red"} and ad["blind"] == 0.0 and ad["sees_red"] > 0
