"""Conversions between generator tensors and pictures, and image grids for contact sheets."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] (clamped)."""
    x = (images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5
    return x.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def grid_image(images: torch.Tensor, *, nrow: int = 8, padding: int = 2) -> Image.Image:
    """One picture of a batch [N, C, H, W] in [-1, 1], `nrow` images per row."""
    grid = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, padding=padding, pad_value=1.0)
    array = to_uint8(grid[None])[0]
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_grid(images: torch.Tensor, path: str | Path, *, nrow: int = 8) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images, nrow=nrow).save(path)
    return path


def png_bytes(image: Image.Image | np.ndarray, **save_options: object) -> bytes:
    """PNG file bytes of a Pillow image or a uint8 [H, W, C] array (C = 1 is saved as grayscale)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_options)
    return buffer.getvalue()
