"""Random masks of known pixels (1 = known) for training the regressor, and collage regions.

Kinds (Chai et al.: E must complete any missing region, and project collages to realistic images):
  full       everything known                                  known fraction 1
  rectangle  one axis-aligned rectangle hidden                 known fraction 0.5 to 0.9
  strokes    free-form brush strokes hidden                    known fraction 0.6 to 0.95
  half       the left, right, top or bottom half hidden        known fraction 0.5
  collage    everything known, but the image is a collage of two samples; the returned mask is
             the region taken from the first image (used to build the collage, not as E's mask)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from PIL import Image, ImageDraw

MASK_KINDS = ("full", "rectangle", "strokes", "half", "collage")
DEFAULT_KIND_WEIGHTS = {"full": 0.15, "rectangle": 0.25, "strokes": 0.25, "half": 0.15, "collage": 0.2}
KNOWN_FRACTION = {"full": (1.0, 1.0), "rectangle": (0.5, 0.9), "strokes": (0.6, 0.95), "half": (0.5, 0.5)}


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def rectangle_mask(resolution: int, g: torch.Generator) -> torch.Tensor:
    """Hide one rectangle covering 10% to 50% of the image."""
    area = _uniform(g, 0.1, 0.5) * resolution**2
    aspect = math.exp(_uniform(g, math.log(0.5), math.log(2.0)))
    h = max(1, min(resolution, round(math.sqrt(area * aspect))))
    w = max(1, min(resolution, round(area / h)))
    top = int(torch.randint(0, resolution - h + 1, (), generator=g))
    left = int(torch.randint(0, resolution - w + 1, (), generator=g))
    mask = torch.ones(1, resolution, resolution)
    mask[:, top : top + h, left : left + w] = 0
    return mask


def stroke_mask(resolution: int, g: torch.Generator, max_tries: int = 20) -> torch.Tensor:
    """Hide 1 to 4 random thick polylines, redrawn until 5% to 40% is hidden."""
    lo, hi = KNOWN_FRACTION["strokes"]
    for _ in range(max_tries):
        canvas = Image.new("L", (resolution, resolution), 255)
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(torch.randint(1, 5, (), generator=g))):
            points = [tuple(float(v) for v in torch.rand(2, generator=g) * resolution)]
            for _ in range(int(torch.randint(2, 6, (), generator=g))):
                angle, length = _uniform(g, 0, 2 * math.pi), _uniform(g, 0.1, 0.4) * resolution
                x, y = points[-1]
                points.append((x + length * math.cos(angle), y + length * math.sin(angle)))
            draw.line(points, fill=0, width=max(1, round(_uniform(g, 0.04, 0.12) * resolution)), joint="curve")
        mask = torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).float().div(255)
        mask = mask.reshape(1, resolution, resolution)
        if lo <= mask.mean().item() <= hi:
            return mask
    return rectangle_mask(resolution, g)  # rare: strokes kept missing the coverage range


def half_mask(resolution: int, g: torch.Generator) -> torch.Tensor:
    mask = torch.ones(1, resolution, resolution)
    side, half = int(torch.randint(0, 4, (), generator=g)), resolution // 2
    region = [(slice(None), slice(None, half)), (slice(None), slice(half, None)),
              (slice(None, half), slice(None)), (slice(half, None), slice(None))][side]
    mask[(slice(None), *region)] = 0
    return mask


def random_masks(n: int, resolution: int, *, generator: torch.Generator,
                 kind_weights: Mapping[str, float] | None = None) -> tuple[torch.Tensor, list[str]]:
    """n masks [n, 1, R, R] and their kinds, drawn by `kind_weights` (default DEFAULT_KIND_WEIGHTS)."""
    weights = dict(kind_weights or DEFAULT_KIND_WEIGHTS)
    unknown = set(weights) - set(MASK_KINDS)
    if unknown:
        raise ValueError(f"unknown mask kinds {sorted(unknown)}; choose from {MASK_KINDS}")
    kinds: Sequence[str] = list(weights)
    probs = torch.tensor([weights[k] for k in kinds], dtype=torch.float64)
    picks = torch.multinomial(probs / probs.sum(), n, replacement=True, generator=generator)
    masks, names = [], []
    for i in picks.tolist():
        kind = kinds[i]
        if kind == "full":
            mask = torch.ones(1, resolution, resolution)
        elif kind == "rectangle":
            mask = rectangle_mask(resolution, generator)
        elif kind == "strokes":
            mask = stroke_mask(resolution, generator)
        elif kind == "half":
            mask = half_mask(resolution, generator)
        else:  # collage: the region taken from the first image; a rectangle or a half, as in the paper
            mask = rectangle_mask(resolution, generator) if torch.rand((), generator=generator) < 0.5 \
                else half_mask(resolution, generator)
        masks.append(mask)
        names.append(kind)
    return torch.stack(masks), names
