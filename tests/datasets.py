"""Small datasets made in tests: a folder of good and bad images, tar shards, Parquet files."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def png_bytes(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def colorful(size: int = 40, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR)


def messy_folder(root: Path) -> dict[str, str]:
    """Write a folder of inputs; returns relative path -> expected status ('ok' or an error reason prefix)."""
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}

    def put(name: str, data: bytes, status: str) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[name] = status

    for i in range(3):
        put(f"good/rgb_{i}.png", png_bytes(colorful(seed=i)), "ok")
    put("good/photo.jpg", png_bytes(colorful(seed=7), "JPEG"), "ok")
    put("modes/gray.png", png_bytes(colorful(seed=8).convert("L")), "ok")
    put("modes/cmyk.jpg", png_bytes(colorful(seed=9).convert("CMYK"), "JPEG"), "ok")
    sixteen = Image.fromarray((np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16))
    put("modes/sixteen_bit.png", png_bytes(sixteen), "ok")
    put("modes/palette_alpha.png", png_bytes(colorful(seed=10).convert("RGBA").convert("P")), "ok")
    rotated = colorful(seed=11).resize((40, 20))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    put("modes/exif_rotated.jpg", png_bytes(rotated, "JPEG", exif=exif.tobytes()), "ok")
    good = png_bytes(colorful(seed=12))
    put("bad/zero_bytes.png", b"", "empty")
    put("bad/truncated.png", good[: len(good) // 2], "corrupt")
    jpeg = png_bytes(colorful(seed=13, size=64), "JPEG")
    put("bad/corrupt.jpg", jpeg[: len(jpeg) // 3], "corrupt")
    put("bad/notes.txt", b"this is not an image", "orphan sidecar")  # a caption without its image
    put("bad/readme.md", b"this is not an image", "not an image")
    put("bad/huge.png", png_bytes(Image.new("1", (9000, 8000))), "too large")
    put("bad/tiny.png", png_bytes(colorful(size=4)), "too small")
    return expected


def tar_shards(root: Path, n_shards: int = 2, per_shard: int = 3) -> list[str]:
    """webdataset-style tar files; each sample has an image, a json and (for the first) a mask."""
    root.mkdir(parents=True, exist_ok=True)
    ids = []
    for s in range(n_shards):
        with tarfile.open(root / f"shard-{s:05d}.tar", "w") as archive:
            for k in range(per_shard):
                key = f"sample{k:03d}"
                members = {f"{key}.png": png_bytes(colorful(seed=100 * s + k)),
                           f"{key}.json": json.dumps({"label": k % 2}).encode()}
                if k == 0:
                    mask = Image.new("L", (40, 40), 255)
                    mask.paste(0, (0, 0, 20, 40))
                    members[f"{key}.mask.png"] = png_bytes(mask)
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
                ids.append(f"shard-{s:05d}/{key}")
    return ids


def parquet_files(root: Path, n_files: int = 2, per_file: int = 3) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    ids = []
    for f in range(n_files):
        rows = [f"img-{f}-{k}" for k in range(per_file)]
        images = [png_bytes(colorful(seed=200 + 10 * f + k)) for k in range(per_file)]
        images[-1] = b"garbage" if f == 0 else images[-1]
        pq.write_table(pa.table({"id": rows, "image": images}), root / f"part-{f}.parquet")
        ids += rows
    return ids
