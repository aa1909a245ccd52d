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

from pipeline.data.align import ALIGN_MODES, FACE_MODES, PADDING_MODES
from pipeline.settings import setting

if TYPE_CHECKING:
    from pipeline.data.align import Face, FaceAligner

RESIZE_POLICIES = ("center-crop", "pad", "stretch")
DEFAULT_MAX_PIXELS = 64_000_000  # refuse larger images (decompression bombs); Pillow's default is ~89M


def input_bytes_for(max_pixels: int) -> int:
    """The most bytes an input of at most `max_pixels` pixels needs: uncompressed RGBA, plus room for
    headers and metadata (a larger file is refused unread)."""
    return 4 * max_pixels + (1 << 20)
MIN_SIDE = 8
FACE_ID_SEPARATOR = "#face"  # with --faces all, a photo's rows are IMAGE#face0, IMAGE#face1, ...


@dataclass(kw_only=True)
class FaceSettings:
    """Whether and how faces are found and aligned: shared by `latentmill invert` and `latentmill align`."""

    align: str = setting("none", "ffhq: align each face as FFHQ was made (oriented square from MTCNN's eye and mouth "
                                 "landmarks); faces: a square box around the detection. Images without a face become "
                                 "error rows.", choices=ALIGN_MODES)
    faces: str = setting("best", "With --align: best keeps the most confident face of a photo; all makes one row per "
                                 "face (ids IMAGE#face0, IMAGE#face1, ...).", choices=FACE_MODES)
    align_padding: str = setting("unknown", "With --align, where the face's square leaves the photo: unknown masks "
                                            "those pixels; reflect fills them as FFHQ did (mirrored, blurred).",
                                 choices=PADDING_MODES)


@dataclass(kw_only=True)
class DecodeSettings(FaceSettings):
    """How inputs become the generator's pixels; shared by invert and by every re-reading of a store's
    inputs (report, curate, rebalance), which reads these fields back from the store's metadata."""

    resize_policy: str = setting("center-crop", "How images become the generator's square resolution (pad marks "
                                                "the border as unknown pixels).", choices=RESIZE_POLICIES)
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, "Larger images are error rows (decompression bombs).",
                              minimum=MIN_SIDE**2)


    @classmethod
    def recorded(cls, settings: dict) -> "DecodeSettings":
        """The decode settings a store's run recorded (defaults for settings older stores lack)."""
        return cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings})

    def aligner(self) -> "FaceAligner | None":
        if self.align == "none":
            return None
        from pipeline.data.align import FaceAligner

        return FaceAligner(self.align, faces=self.faces, padding=self.align_padding)

    def decode(self, data: bytes, *, resolution: int, channels: int, aligner: "FaceAligner | None" = None) -> Decoded:
        """One image (with an aligner: its first face)."""
        return self.decode_rows(data, resolution=resolution, channels=channels, aligner=aligner)[0]

    def decode_rows(self, data: bytes, *, resolution: int, channels: int,
                    aligner: "FaceAligner | None" = None) -> list[Decoded]:
        """What one input becomes: one Decoded, or with an aligner one per face (one error when none)."""
        return decode_faces(data, resolution=resolution, channels=channels, policy=self.resize_policy,
                            max_pixels=self.max_pixels, aligner=aligner)

    def row_ids(self, image_id: str, decoded: list[Decoded]) -> list[str]:
        """The store ids of an input's rows: the input's id, or IMAGE#faceK per face with --faces all."""
        if self.align == "none" or self.faces == "best" or not decoded[0].ok:
            return [image_id] * len(decoded)
        return [face_row_id(image_id, d.face.index) for d in decoded]


def face_row_id(image_id: str, index: int) -> str:
    return f"{image_id}{FACE_ID_SEPARATOR}{index}"


def input_id(row_id: str) -> str:
    """The input a row came from (IMAGE#face2 -> IMAGE)."""
    head, sep, tail = row_id.rpartition(FACE_ID_SEPARATOR)
    return head if sep and tail.isdigit() else row_id


@dataclass
class Decoded:
    image: np.ndarray | None  # float32 [C, R, R] in [-1, 1]
    error: str | None = None  # "<reason>: <detail>" when image is None
    original_size: tuple[int, int] | None = None  # (width, height) before resizing
    valid: np.ndarray | None = None  # float32 [1, R, R]: 0 where pixels are unknown (pad border, outside the photo)
    face: "Face | None" = None  # with --align: the detected face this image is
    quad: np.ndarray | None = None  # with --align: [4, 2] photo points of the output's corners (TL, BL, BR, TR)

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


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image | None, Decoded]:
    """bytes -> (an RGB image with EXIF orientation applied, an empty Decoded holding the file's own
    size), or (None, the error)."""
    if not data:
        return None, Decoded(None, "empty: the file has no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                return None, Decoded(None, f"too large: {width}x{height} pixels exceeds the {max_pixels:,} limit "
                                           "(possible decompression bomb)", (width, height))
            img.load()
    except UnidentifiedImageError:
        return None, Decoded(None, "not an image: Pillow cannot identify the format")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return None, Decoded(None, f"too large: {exc}")
    except (OSError, SyntaxError, ValueError) as exc:
        return None, Decoded(None, f"corrupt: {exc}")
    if min(width, height) < MIN_SIDE:
        return None, Decoded(None, f"too small: {width}x{height} (minimum side {MIN_SIDE})", (width, height))
    try:
        return _to_rgb(ImageOps.exif_transpose(img)), Decoded(None, None, (width, height))
    except (OSError, ValueError) as exc:
        return None, Decoded(None, f"unsupported: cannot convert mode {img.mode} to RGB ({exc})", (width, height))


def _array(img: Image.Image, channels: int) -> np.ndarray:
    array = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0  # [3, R, R]
    if channels == 1:
        array = array.mean(axis=0, keepdims=True)
    return np.ascontiguousarray(array)


def decode_faces(data: bytes, *, resolution: int, policy: str = "center-crop", channels: int = 3,
                 max_pixels: int = DEFAULT_MAX_PIXELS, aligner: "FaceAligner | None" = None) -> list[Decoded]:
    """bytes -> [Decoded]: the image, or with an aligner each aligned face (its `valid` mask marks the
    pixels outside the photo as unknown); one error Decoded when the input cannot be used."""
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}")
    img, opened = open_image(data, max_pixels)
    if img is None:
        return [opened]
    original_size = opened.original_size
    if aligner is not None:
        aligned, reason = aligner.align(img, resolution)
        if not aligned:
            return [Decoded(None, reason, original_size)]
        return [Decoded(_array(a.image, channels), None, original_size, a.known, a.face, a.quad) for a in aligned]
    valid = None
    if policy == "pad":
        border = ImageOps.pad(Image.new("L", img.size, 255), (resolution, resolution), color=0)
        valid = (np.asarray(border, dtype=np.float32)[None] >= 128).astype(np.float32)
    return [Decoded(_array(_resize(img, resolution, policy), channels), None, original_size, valid)]


def decode_image(data: bytes, *, resolution: int, policy: str = "center-crop", channels: int = 3,
                 max_pixels: int = DEFAULT_MAX_PIXELS, aligner: "FaceAligner | None" = None) -> Decoded:
    """bytes -> Decoded (image [channels, R, R] in [-1, 1], or the reason it could not be used); with an
    aligner, the most confident face."""
    return decode_faces(data, resolution=resolution, policy=policy, channels=channels, max_pixels=max_pixels,
                        aligner=aligner)[0]


def decode_mask(data: bytes, *, resolution: int, policy: str = "center-crop") -> np.ndarray | None:
    """A mask image (white = known) -> float32 [1, R, R] in {0, 1}, resized like its image; None if unreadable."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        img = _resize(ImageOps.exif_transpose(img).convert("L").convert("RGB"), resolution, policy).convert("L")
    except (OSError, ValueError, UnidentifiedImageError):
        return None
    return (np.asarray(img, dtype=np.float32)[None] >= 128).astype(np.float32)
