"""The report's pictures: files beside the page, or embedded in it, and labelled HTML image tables.

By default each picture is a file under STORE/report/ linked relatively (the page works from a
disk or served from a bucket with its folder). `--self-contained` embeds every picture as a data:
URI instead, so report.html alone can be mailed or attached to a ticket. Contact sheets are HTML
tables, one row per image with its id and metrics beside its tiles, each tile a link to itself at
full size; tiles of small generators are enlarged so that nothing is shown below DISPLAY pixels.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from pipeline.imaging import png_bytes, to_uint8
from pipeline.store import layout

DISPLAY = 128  # pixels: the smallest a tile is shown
FULL_SIZE_JPEG_ABOVE = 256  # full-size tiles larger than this are JPEG (quality 92), not PNG


class ReportImages:
    """Stores pictures for one report and hands back what its <img src> should say."""

    def __init__(self, writer, *, self_contained: bool) -> None:
        """writer: the claimed store (pipeline/store/writer.py) the report belongs to."""
        self.writer, self.self_contained = writer, self_contained
        self.written: list[str] = []

    def add(self, name: str, image: Image.Image) -> str:
        """`name` is a path under report/ without extension; returns the src to use."""
        jpeg = max(image.size) > FULL_SIZE_JPEG_ABOVE
        data = _encode(image, jpeg)
        if self.self_contained:
            kind = "jpeg" if jpeg else "png"
            return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"
        path = f"{layout.REPORT_FILES}/{name}.{'jpg' if jpeg else 'png'}"
        self.writer.write_bytes(path, data)
        self.written.append(path)
        return path


def _encode(image: Image.Image, jpeg: bool) -> bytes:
    if not jpeg:
        return png_bytes(image)
    import io

    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def tile_image(tensor: torch.Tensor) -> Image.Image:
    """[C, R, R] in [-1, 1] -> an RGB picture, enlarged (nearest neighbour) to at least DISPLAY pixels."""
    array = to_uint8(tensor.detach().float().cpu()[None])[0]
    image = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).convert("RGB")
    scale = max(1, -(-DISPLAY // image.width))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST) if scale > 1 else image


@dataclass
class ImageRow:
    label: str
    metrics: dict[str, str]  # column title -> formatted value (missing: blank)
    tiles: list[torch.Tensor | None]  # one per tile column; None where there is nothing to show
    note: str = ""  # e.g. a flag or a band, shown under the label
    classes: dict[str, str] = field(default_factory=dict)  # metric title -> CSS class (e.g. a band's colour)


def image_table(rows: Sequence[ImageRow], tile_columns: Sequence[str], images: ReportImages, name: str) -> str:
    """A labelled contact sheet: image | metrics ... | tiles ..., each tile clickable to full size."""
    metric_columns = list(dict.fromkeys(k for row in rows for k in row.metrics))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["image", *metric_columns, *tile_columns])
    body = []
    for i, row in enumerate(rows):
        cells = [f'<td class="id">{html.escape(row.label)}'
                 + (f'<br><span class="note">{html.escape(row.note)}</span>' if row.note else "") + "</td>"]
        cells += [f'<td class="num {row.classes.get(c, "")}">{html.escape(row.metrics.get(c, ""))}</td>'
                  for c in metric_columns]
        for column, tensor in zip(tile_columns, row.tiles):
            if tensor is None:
                cells.append('<td class="tile empty">-</td>')
                continue
            src = images.add(f"{name}-{i:03d}-{_slug(column)}", tile_image(tensor))
            alt = html.escape(f"{row.label}: {column}")
            cells.append(f'<td class="tile"><a href="{src}" target="_blank"><img src="{src}" alt="{alt}" '
                         f'width="{DISPLAY}" height="{DISPLAY}"></a></td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="sheet"><tr>{head}</tr>{"".join(body)}</table>'


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def fmt(value: object, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    return f"{float(value):.{digits}f}"
