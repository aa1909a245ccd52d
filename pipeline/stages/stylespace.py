"""StyleSpace analysis (Wu, Lischinski & Shechtman): attribute channels from a few examples, and edits.

S is every affine layer's output (`G.styles(ws)`): per layer [N, channels]. Example-based detection
ranks channels by how far the positives' mean style departs from the population, in population
standard deviations: |mean_pos - mean_all| / std_all. By default only convolution layers are ranked
(the paper's 6048 channels at 1024 px exclude toRGB). An edit moves channels by alpha * std_c.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from pipeline.models.stylegan2 import Generator
from pipeline.sampling import mapped_ws

Styles = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Channel:
    layer: str  # e.g. "b16.conv1"
    channel: int
    score: float  # |mean_pos - mean_all| / std_all
    sign: float  # +1 if the positives have larger values than the population, else -1


@dataclass
class StyleStats:
    mean: dict[str, torch.Tensor]  # layer -> [C]
    std: dict[str, torch.Tensor]  # layer -> [C]


@torch.no_grad()
def styles_of(G: Generator, ws: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """StyleSpace coordinates of ws [N, num_ws, w_dim], batched: layer -> [N, C] (on CPU)."""
    parts = [G.styles(chunk.to(G.w_avg.device)) for chunk in ws.split(batch_size)]
    return {key: torch.cat([p[key].cpu() for p in parts]) for key in parts[0]}


def stats_of(styles: Styles) -> StyleStats:
    """Population mean and std per channel."""
    return StyleStats({k: v.float().mean(0) for k, v in styles.items()},
                      {k: v.float().std(0).clamp_min(1e-8) for k, v in styles.items()})


@torch.no_grad()
def population_stats(G: Generator, num_samples: int = 10_000, seed: int = 0) -> StyleStats:
    """Statistics of S over mapped samples of G (when no store is at hand)."""
    return stats_of(styles_of(G, mapped_ws(G, num_samples, torch.Generator().manual_seed(seed)).cpu()))


def is_convolution_style(layer: str) -> bool:
    """Channels of a convolution's style; toRGB styles and StyleGAN3's input transform ('input', four
    rotation/translation numbers rather than channels) are left out of rankings by default."""
    return not layer.endswith("torgb") and layer != "input"


def detect_channels(styles_pos: Styles, stats: StyleStats, top_k: int = 10, *,
                    layers: Sequence[str] | None = None, include_torgb: bool = False) -> list[Channel]:
    """The `top_k` channels that best separate the positives (10-30 examples suffice) from the population."""
    candidates = []
    for layer, values in styles_pos.items():
        if layers is not None and layer not in layers:
            continue
        if layers is None and not (is_convolution_style(layer) or (include_torgb and layer.endswith("torgb"))):
            continue
        diff = (values.float().mean(0) - stats.mean[layer]) / stats.std[layer]  # [C]
        candidates += [(layer, c, d) for c, d in enumerate(diff.tolist())]
    if not candidates:
        raise ValueError(f"no layer to rank; known layers: {sorted(styles_pos)}")
    candidates.sort(key=lambda item: -abs(item[2]))
    return [Channel(layer, c, abs(d), 1.0 if d >= 0 else -1.0) for layer, c, d in candidates[:top_k]]


def attribute_scores(styles: Styles, channels: Sequence[Channel], stats: StyleStats) -> torch.Tensor:
    """Per-image attribute strength [N]: mean over the channels of sign * standardized style."""
    total = 0
    for ch in channels:
        z = (styles[ch.layer][:, ch.channel] - stats.mean[ch.layer][ch.channel]) / stats.std[ch.layer][ch.channel]
        total = total + ch.sign * z
    return total / len(channels)


def edit_styles(styles: Styles, channels: Sequence[Channel], alpha: float, stats: StyleStats) -> dict[str, torch.Tensor]:
    """s_c += alpha * sign_c * std_c for each channel; a new dict (inputs untouched)."""
    edited = {k: v.clone() for k, v in styles.items()}
    for ch in channels:
        edited[ch.layer][:, ch.channel] += alpha * ch.sign * stats.std[ch.layer][ch.channel].to(edited[ch.layer].device)
    return edited


@torch.no_grad()
def attribute_dependency(G: Generator, styles: Styles, channels: Sequence[Channel], alpha: float,
                         stats: StyleStats, classifiers: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
                         target: str) -> dict[str, float]:
    """Attribute Dependency of an edit: for each *other* attribute i, mean |delta logit_i| / std(logit_i).

    `classifiers` map images [N, C, H, W] to logits [N]; `target` is the edited attribute's name.
    Lower is better: the edit changes the other attributes less.
    """
    device = G.w_avg.device
    before = G.synthesis_from_styles({k: v.to(device) for k, v in styles.items()})
    after = G.synthesis_from_styles({k: v.to(device) for k, v in edit_styles(styles, channels, alpha, stats).items()})
    result = {}
    for name, classify in classifiers.items():
        if name == target:
            continue
        logits_before, logits_after = classify(before).float(), classify(after).float()
        result[name] = ((logits_after - logits_before).abs().mean() / logits_before.std().clamp_min(1e-8)).item()
    return result
