"""A contact sheet of face alignment: each photo with its faces' squares drawn, then the aligned crops.

The one picture that tells at a glance whether alignment did what FFHQ-trained models expect:
squares turned with the faces, every face found, and which pixels came from outside the photo
(tinted red: they are unknown to refinement, or reflected with --align-padding reflect).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS = [(255, 214, 0), (0, 200, 255), (255, 80, 200), (120, 255, 80), (255, 140, 0), (170, 120, 255)]


@dataclass
class SheetRow:
    photo: Image.Image  # RGB, EXIF orientation applied
    title: str
    quads: list[np.ndarray]  # [4, 2] per face: top-left, bottom-left, bottom-right, top-right
    crops: list[np.ndarray]  # uint8 [R, R, 3] per face
    known: list[np.ndarray | None]  # float [R, R] per face, None when every pixel is known
    error: str | None = None


def _tinted(crop: np.ndarray, known: np.ndarray | None) -> Image.Image:
    if known is None:
        return Image.fromarray(crop)
    out = crop.astype(np.float32)
    unknown = known < 0.5
    out[unknown] = out[unknown] * 0.45 + np.array([255, 0, 0]) * 0.55
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def contact_sheet(rows: list[SheetRow], *, cell: int = 192, max_faces: int = 4) -> Image.Image:
    """Rows of [photo with squares | aligned face 0 | face 1 | ...], labelled, on a white page."""
    label_height, pad = 18, 6
    columns = 1 + max(1, min(max_faces, max((len(r.crops) for r in rows), default=1)))
    width = columns * (cell + pad) + pad
    height = len(rows) * (cell + label_height + pad) + pad
    sheet = Image.new("RGB", (width, max(height, cell)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        top = pad + r * (cell + label_height + pad)
        # the photo at 80% of its cell, so squares that leave it stay visible around it
        scale = 0.8 * cell / max(row.photo.size)
        thumb = row.photo.resize((max(1, round(row.photo.width * scale)), max(1, round(row.photo.height * scale))),
                                 Image.Resampling.LANCZOS)
        origin = np.array([pad + (cell - thumb.width) / 2, top + label_height + (cell - thumb.height) / 2])
        sheet.paste(thumb, tuple(int(v) for v in origin))
        for k, quad in enumerate(row.quads):
            points = [tuple(p) for p in (quad * scale + origin)]
            colour = COLOURS[k % len(COLOURS)]
            draw.line(points + [points[0]], fill=colour, width=2)
            draw.text(points[0], str(k), fill=colour)
        draw.text((pad, top + 2), row.title[:40], fill=(0, 0, 0))
        if row.error:
            draw.text((2 * pad + cell, top + label_height + cell // 2), row.error[:60], fill=(170, 0, 0))
        for k, (crop, known) in enumerate(zip(row.crops[:max_faces], row.known[:max_faces])):
            left = pad + (k + 1) * (cell + pad)
            sheet.paste(_tinted(crop, known).resize((cell, cell), Image.Resampling.LANCZOS), (left, top + label_height))
            caption = f"face {k}" + (f", {known.mean():.0%} known" if known is not None else "")
            draw.rectangle((left, top + 4, left + 10, top + 14), fill=COLOURS[k % len(COLOURS)], outline=(0, 0, 0))
            draw.text((left + 14, top + 2), caption, fill=(0, 0, 0))
        if len(row.crops) > max_faces:
            draw.text((width - 80, top + 2), f"+{len(row.crops) - max_faces} more", fill=(0, 0, 0))
    return sheet
