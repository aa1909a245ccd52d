"""The edits `latentmill augment` applies to a source latent: pure torch, one random stream per variant.

- jitter:SIGMA (Wulff & Torralba): Gaussian noise of std SIGMA added in the prior's whitened space, mapped
  back, so a variant stays where the prior puts realistic latents (small SIGMA: near the source).
- mix:A-B (StyleGAN2's style mixing): layers A..B of W+ (0-based, inclusive) taken from a donor row.
- attribute:LAYER/CH[+LAYER/CH...]:ALPHA (Wu et al., StyleSpace): each channel's style moved by ALPHA of its
  std over the store; the image is rendered from the edited styles (the paper's edit). Its `w` is the W+
  nearest to those styles through G's affine layers (least squares per W+ slot: exact where a slot feeds
  no more style channels than w_dim). Variant v of K moves the channels ALPHA*(v+1)/K.
- compose:PART (Chai et al.): a part (half, quadrants, blob) of a donor's input pasted on the source's input,
  re-projected through E and G, which turn the collage into one realistic image that keeps the part.

Each variant's randomness (noise, donor, mask) comes from its own stream (seed, source id, edit, variant):
the same variant whatever else is drawn beside it, on whichever worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from pipeline.curation.rebalance import PART_KINDS
from pipeline.sampling import stream_seed

KINDS = ("jitter", "mix", "attribute", "compose")


@dataclass(frozen=True)
class StyleChannel:
    layer: str  # a StyleSpace layer, as `latentmill channels` names it (e.g. b16.conv0)
    channel: int


@dataclass(frozen=True)
class Edit:
    """One edit of --edits: its text (as given, the name in every output), kind and parameters."""

    text: str
    kind: str
    sigma: float = 0.0  # jitter
    layers: tuple[int, int] = (0, 0)  # mix: first and last W+ layer taken from the donor
    channels: tuple[StyleChannel, ...] = field(default=())  # attribute
    alpha: float = 0.0  # attribute
    part: str = ""  # compose

    @property
    def params(self) -> dict[str, object]:
        """The edit's parameters as data (recorded with every sample)."""
        if self.kind == "jitter":
            return {"sigma": self.sigma}
        if self.kind == "mix":
            return {"first_layer": self.layers[0], "last_layer": self.layers[1]}
        if self.kind == "attribute":
            return {"channels": [f"{c.layer}/{c.channel}" for c in self.channels], "alpha": self.alpha}
        return {"part": self.part}

    @property
    def needs_donor(self) -> bool:
        return self.kind in ("mix", "compose")


SYNTAX = ("jitter:SIGMA, mix:A-B, attribute:LAYER/CH[+LAYER/CH...]:ALPHA or compose:PART "
          f"(PART one of {', '.join(PART_KINDS)})")


def parse_edit(text: str) -> Edit:
    kind, _, rest = text.strip().partition(":")
    try:
        if kind == "jitter":
            sigma = float(rest)
            if not sigma > 0 or sigma != sigma or sigma == float("inf"):
                raise ValueError
            return Edit(text.strip(), kind, sigma=sigma)
        if kind == "mix":
            first, _, last = rest.partition("-")
            a, b = int(first), int(last)
            if not 0 <= a <= b:
                raise ValueError
            return Edit(text.strip(), kind, layers=(a, b))
        if kind == "attribute":
            names, _, alpha = rest.rpartition(":")
            channels = tuple(StyleChannel(c.rsplit("/", 1)[0], int(c.rsplit("/", 1)[1])) for c in names.split("+"))
            if not names or any(not c.layer or c.channel < 0 for c in channels):
                raise ValueError
            return Edit(text.strip(), kind, channels=channels, alpha=float(alpha))
        if kind == "compose" and rest in PART_KINDS:
            return Edit(text.strip(), kind, part=rest)
    except (ValueError, IndexError):
        pass
    raise ValueError(f"--edits: {text.strip()!r} is not an edit; use {SYNTAX}, e.g. "
                     "jitter:0.3,mix:8-17,attribute:b16.conv0/42:3,compose:half")


def parse_edits(text: str) -> list[Edit]:
    """--edits as a list of edits (refused, naming the bad one, if any is not an edit or one repeats)."""
    edits = [parse_edit(item) for item in text.split(",") if item.strip()]
    if not edits:
        raise ValueError(f"--edits names no edit; use {SYNTAX}")
    seen = [e.text for e in edits]
    repeated = sorted({t for t in seen if seen.count(t) > 1})
    if repeated:
        raise ValueError(f"--edits names {repeated} twice; --variants sets how many of each")
    return edits


def check_edits(edits: Sequence[Edit], num_ws: int, style_channels: Mapping[str, int]) -> None:
    """Refuse, before any work, edits the generator cannot take: mix layers beyond its W+, StyleSpace
    layers it does not have or channels beyond a layer's width."""
    for edit in edits:
        if edit.kind == "mix" and edit.layers[1] >= num_ws:
            raise ValueError(f"--edits {edit.text}: the generator's W+ has layers 0-{num_ws - 1}")
        for c in edit.channels:
            if c.layer not in style_channels:
                raise ValueError(f"--edits {edit.text}: no StyleSpace layer {c.layer!r}; the generator has "
                                 f"{', '.join(style_channels)} (see `latentmill channels`)")
            if c.channel >= style_channels[c.layer]:
                raise ValueError(f"--edits {edit.text}: {c.layer} has channels 0-{style_channels[c.layer] - 1}")


def variant_seed(seed: int, source_id: str, edit: Edit, variant: int) -> int:
    """The seed of one variant's stream: the run's seed, the source row, the edit and the variant's index."""
    return stream_seed(seed, "augment", source_id, edit.text, variant)


def jitter(prior: torch.nn.Module, ws: torch.Tensor, sigma: float, streams: Sequence[torch.Generator]) -> torch.Tensor:
    """ws [N, num_ws, D] moved by N(0, sigma^2) in the prior's whitened space (noise from stream i for row i)."""
    noise = torch.stack([torch.randn(ws.shape[1:], generator=g) for g in streams]).to(ws.device)
    return prior.unwhiten(prior.whiten(ws) + sigma * noise)


def mix(ws: torch.Tensor, donors: torch.Tensor, layers: tuple[int, int]) -> torch.Tensor:
    """ws [N, num_ws, D] with layers first..last (inclusive) taken from donors [N, num_ws, D]."""
    mixed = ws.clone()
    mixed[:, layers[0] : layers[1] + 1] = donors[:, layers[0] : layers[1] + 1]
    return mixed


def pick_donors(source_ids: Sequence[str], donor_ids: Sequence[str], streams: Sequence[torch.Generator]) -> list[int]:
    """A donor for each variant, drawn from its stream among `donor_ids`, never the source itself (the next
    donor instead); needs two or more donors."""
    picks = []
    for source, g in zip(source_ids, streams):
        i = int(torch.randint(len(donor_ids), (), generator=g))
        picks.append((i + 1) % len(donor_ids) if donor_ids[i] == source else i)
    return picks


def style_slots(G: torch.nn.Module) -> dict[str, int]:
    """StyleSpace layer -> the W+ slot its affine map reads (StyleGAN2's overlapping windows; one slot a
    layer for StyleGAN3)."""
    synthesis = G.synthesis
    slots = getattr(synthesis, "style_slots", None)
    return dict(slots) if slots is not None else {name: i for i, name in enumerate(synthesis.affine_layers())}


@dataclass
class AttributeDirection:
    """An attribute edit at strength 1: the style change (layer -> [C]) and the W+ change nearest to it."""

    styles: dict[str, torch.Tensor]
    w: torch.Tensor  # [num_ws, w_dim]
    residual: float  # |A dw - ds| / |ds|: the part of the style change the W+ change misses (0: exact)


@torch.no_grad()
def attribute_direction(G: torch.nn.Module, edit: Edit, std: Mapping[str, torch.Tensor]) -> AttributeDirection:
    """The style change of `edit` at alpha 1 (each channel by its std) and its least-squares W+ change.

    Styles are affine in w, so the change is the same for every row: each W+ slot solves
    [A_l for the layers it feeds] dw = [ds_l] (zero for the layers not edited) once."""
    affines = G.synthesis.affine_layers()
    slots = style_slots(G)
    device = G.w_avg.device
    delta = {name: torch.zeros(a.weight.shape[0], device=device) for name, a in affines.items()}
    for c in edit.channels:
        delta[c.layer][c.channel] += std[c.layer][c.channel].to(device)
    dw = torch.zeros(G.num_ws, G.w_dim, device=device)
    missed = total = 0.0
    for slot in sorted({slots[c.layer] for c in edit.channels}):
        layers = [name for name in affines if slots[name] == slot]
        A = torch.cat([(affines[n].weight * affines[n].weight_gain).double() for n in layers])  # [sum C, w_dim]
        target = torch.cat([delta[n].double() for n in layers])
        solution = torch.linalg.lstsq(A.cpu(), target.cpu().unsqueeze(1), driver="gelsd").solution.squeeze(1)
        dw[slot] = solution.to(device, torch.float32)
        missed += float((A.cpu() @ solution - target.cpu()).square().sum())
        total += float(target.square().sum())
    return AttributeDirection(delta, dw, (missed / total) ** 0.5 if total else 0.0)


def edited_styles(G: torch.nn.Module, ws: torch.Tensor, direction: AttributeDirection,
                  alphas: torch.Tensor) -> dict[str, torch.Tensor]:
    """G's styles of ws [N, num_ws, D], each row moved by alphas[i] times the direction's style change."""
    styles = G.styles(ws)
    return {name: s + alphas.to(s.device, s.dtype).unsqueeze(1) * direction.styles[name].to(s.device, s.dtype)
            for name, s in styles.items()}
