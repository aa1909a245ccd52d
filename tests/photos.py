"""Real photos for face tests: the public-domain astronaut portrait (tests/data/photos/README.md) and
photos composed from it (a group of three faces, a face cut by the photo's edge)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import Image

PHOTOS = Path(__file__).parent / "data" / "photos"


@lru_cache(maxsize=1)
def _astronaut() -> Image.Image:
    return Image.open(PHOTOS / "astronaut.jpg").convert("RGB")


def astronaut() -> Image.Image:
    return _astronaut().copy()


def rotated(degrees: float) -> Image.Image:
    """The portrait turned by `degrees` (counter-clockwise), on a grey canvas large enough to hold it."""
    return astronaut().rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(200, 200, 200))


def group() -> Image.Image:
    """Three faces of different sizes, one turned, one mirrored, on a 1200 x 700 backdrop."""
    photo = astronaut()
    canvas = Image.new("RGB", (1200, 700), (90, 110, 130))
    canvas.paste(photo.resize((400, 400), Image.Resampling.LANCZOS), (0, 0))
    canvas.paste(photo.rotate(15, resample=Image.Resampling.BICUBIC), (450, 150))
    canvas.paste(photo.resize((300, 300), Image.Resampling.LANCZOS).transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                 (950, 350))
    return canvas


CUT_LEFT = 200  # columns of the portrait cut away: the face's left side leaves the photo


def cut_at_edge() -> Image.Image:
    return astronaut().crop((CUT_LEFT, 0, 512, 512))
