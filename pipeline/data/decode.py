"""Decoding and validating one input image with Pillow, to the generator's resolution.

Failures are data: `decode_image` returns a `Decoded` whose `error` names the reason (empty file,
not an image, truncated, decompression bomb, unsupported mode, too small), so every input can become
exactly one row. What it normalizes: EXIF orientation; palette, L, LA, RGBA, CMYK, I;16, I and F
modes to RGB (alpha composited on white); then a named resize policy to a square of `resolution`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.settings import setting

if TYPE_CHECKING:
    from pipeline.data.align import FaceAligner

RESIZE_POLICIES = ("center-crop", "pad", "stretch")
DEFAULT_MAX_PIXELS = 64_000_000  # refuse larger images (decompression bombs); Pillow's default is ~89M
MIN_SIDE = 8
ALIGN_MODES = ("none", "faces")


@dataclass(kw_only=True)
class DecodeSettings:
    """How inputs become the generator's pixels; shared by invert and by every re-reading of a store's
    inputs (report, curate, rebalance), which reads these fields back from the store's metadata."""

    resize_policy: str = setting("center-crop", "How images become the generator's square resolution (pad marks "
                                                "the border as unknown pixels).", choices=RESIZE_POLICIES)
    align: str = setting("none", "faces: crop the most confident face (facenet-pytorch's MTCNN) before resizing; "
                                 "images without a face become error rows.", choices=ALIGN_MODES)
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, "Larger images are error rows (decompression bombs).")

    def check(self) -> None:
        if self.max_pixels < MIN_SIDE**2:
            raise ValueError(f"--max-pixels must be at least {MIN_SIDE**2} (images have sides of {MIN_SIDE} "
                             "pixels or more)")

    @classmethod
    def recorded(cls, settings: dict) -> "DecodeSettings":
        """The decode settings a store's run recorded (defaults for settings older stores lack)."""
        return cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings})

    def aligner(self) -> "FaceAligner | None":
        if self.align == "none":
            return None
        from pipeline.data.align import FaceAligner

        return FaceAligner()

    def decode(self, data: bytes, *, resolution: int, channels: int, aligner: "FaceAligner | None" = None) -> Decoded:
        return decode_image(data, resolution=resolution, channels=channels, policy=self.resize_policy,
                            max_pixels=self.max_pixels, aligner=aligner)


@dataclass
class Decoded:
    image: np.ndarray | None  # float32 [C, R, R] in [-1, 1]
    error: str | None = None  # "<reason>: <detail>" when image is None
    original_size: tuple[int, int] | None = None  # (width, height) before resizing
    valid: np.ndarray | None = None  # float32 [1, R, R]: 0 where the 'pad' policy added border

    @property
    def ok(self) -> bool:
        return self.image is not None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(array.max(), 1.0)
        array = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _resize(img: Image.Image, resolution: int, policy: str) -> Image.Image:
    if policy == "stretch":
        return img.resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if policy == "center-crop":
        return ImageOps.fit(img, (resolution, resolution), Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    return ImageOps.pad(img, (resolution, resolution), Image.Resampling.LANCZOS, color=(255, 255, 255))


def decode_image(data: bytes, *, resolution: int, policy: str = "center-crop", channels: int = 3,
                 max_pixels: int = DEFAULT_MAX_PIXELS, aligner: "FaceAligner | None" = None) -> Decoded:
    """bytes -> Decoded (image [channels, R, R] in [-1, 1], or the reason it could not be used)."""
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}")
    if not data:
        return Decoded(None, "empty: the file has no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                return Decoded(None, f"too large: {width}x{height} pixels exceeds the {max_pixels:,} limit "
                                     "(possible decompression bomb)", (width, height))
            img.load()
    except UnidentifiedImageError:
        return Decoded(None, "not an image: Pillow cannot identify the format")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Decoded(None, f"too large: {exc}")
    except (OSError, SyntaxError, ValueError) as exc:
        return Decoded(None, f"corrupt: {exc}")
    if min(width, height) < MIN_SIDE:
        return Decoded(None, f"too small: {width}x{height} (minimum side {MIN_SIDE})", (width, height))
    try:
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
    except (OSError, ValueError) as exc:
        return Decoded(None, f"unsupported: cannot convert mode {img.mode} to RGB ({exc})", (width, height))
    if aligner is not None:
        img, reason = aligner.crop(img)
        if img is None:
            return Decoded(None, reason, (width, height))
    valid = None
    if policy == "pad":
        border = ImageOps.pad(Image.new("L", img.size, 255), (resolution, resolution), color=0)
        valid = (np.asarray(border, dtype=np.float32)[None] >= 128).astype(np.float32)
    img = _resize(img, resolution, policy)
    array = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0  # [3, R, R]
    if channels == 1:
        array = array.mean(axis=0, keepdims=True)
    return Decoded(np.ascontiguousarray(array), None, (width, height), valid)


def decode_mask(data: bytes, *, resolution: int, policy: str = "center-crop") -> np.ndarray | None:
    """A mask image (white = known) -> float32 [1, R, R] in {0, 1}, resized like its image; None if unreadable."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        img = _resize(ImageOps.exif_transpose(img).convert("L").convert("RGB"), resolution, policy).convert("L")
    except (OSError, ValueError, UnidentifiedImageError):
        return None
    return (np.asarray(img, dtype=np.float32)[None] >= 128).astype(np.float32)
