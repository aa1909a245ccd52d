"""Build the offline demo data set: `latentmill make-demo-data`.

No image data set can be downloaded here, but Debian's `fonts-noto-color-emoji` package can: its
colour bitmaps (rendered by Pillow with `embedded_color=True` at size 109, the font's bitmap size)
give about 1,300 single-codepoint emoji, 165 of them faces. Each is cropped to its bounding box,
centred on white with a margin, resized to `--resolution`, and written as webdataset tar shards:
`u1f600.png` plus `u1f600.json` = {"codepoint", "name", "group": "face" | "other"}.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from pipeline.data.webdataset import TarShardWriter
from pipeline.imaging import png_bytes

DEFAULT_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
FONT_SIZE = 109  # the only size the font's CBDT bitmaps come in
EMOJI_RANGES = [(0x1F300, 0x1FAFF), (0x2600, 0x27BF)]


def load_font(path: str = DEFAULT_FONT) -> ImageFont.FreeTypeFont:
    if not Path(path).is_file():
        raise FileNotFoundError(f"--font {path}: not found; install Debian's fonts-noto-color-emoji "
                                "(apt-get install fonts-noto-color-emoji) or pass --font")
    return ImageFont.truetype(path, FONT_SIZE)


def render_emoji(char: str, font: ImageFont.FreeTypeFont, resolution: int, margin: float = 0.08) -> Image.Image | None:
    """The emoji centred on white, [resolution x resolution] RGB; None if the font has no glyph."""
    canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    side = int(max(glyph.size) * (1 + 2 * margin))
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square.convert("RGB").resize((resolution, resolution), Image.Resampling.LANCZOS)


def emoji_catalog(font: ImageFont.FreeTypeFont) -> list[tuple[int, str]]:
    """(codepoint, Unicode name) of every single-codepoint emoji the font draws, in code order."""
    found = []
    for lo, hi in EMOJI_RANGES:
        for cp in range(lo, hi + 1):
            try:
                name = unicodedata.name(chr(cp))
            except ValueError:
                continue
            if render_emoji(chr(cp), font, 8) is not None:
                found.append((cp, name))
    return found


def run(output: str, *, font_path: str = DEFAULT_FONT, resolution: int = 64, shard_size: int = 500,
        limit: int | None = None) -> list[Path]:
    """Write the tar shards; returns their paths."""
    font = load_font(font_path)
    catalog = emoji_catalog(font)[:limit]
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    writer = TarShardWriter(str(out), "emoji", shard_size)
    for cp, name in catalog:
        meta = {"codepoint": f"U+{cp:04X}", "name": name, "group": "face" if "FACE" in name else "other"}
        writer.add(f"u{cp:x}", {"png": png_bytes(render_emoji(chr(cp), font, resolution), optimize=True),
                                "json": json.dumps(meta).encode()})
    shards = [Path(uri) for uri in writer.close()]
    faces = sum("FACE" in name for _, name in catalog)
    print(f"wrote {len(catalog)} emoji ({faces} faces) at {resolution} px in {len(shards)} shards to {out}")
    return shards

