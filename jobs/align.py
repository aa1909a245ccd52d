"""`latentmill align`: detect and align the faces of a dataset, the step before inverting faces.

Reads any input `latentmill invert` reads, with the same decoding and alignment code (so the ids and
pixels are those `invert --align` would use), and writes OUTPUT/images/ (one PNG per face, a
`.mask.png` beside it where the aligned square leaves the photo: a ready input folder for `invert`)
and OUTPUT/faces.parquet (schema faces v1: one row per face, or per input without one, with its box,
landmarks, quad and error).
"""

from __future__ import annotations

import collections
import io
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.data.align_settings import AlignConfig
from pipeline.data.align_sheet import SheetRow, contact_sheet
from pipeline.data.decode import Decoded, DecodeSettings, open_image
from pipeline.data.planning import plan_input
from pipeline.data.sources import InputRecord, read_shard
from pipeline.errors import LatentmillError
from pipeline.store.faces_schema import FACES
from pipeline.uris import check_writable_dir, link, read_if_exists, write_bytes

__all__ = ["AlignConfig", "run"]

TABLE = "faces.parquet"
IMAGES = "images"
SHEET = "contact_sheet.png"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class AlignOutputExists(LatentmillError, FileExistsError):
    """The output already holds an alignment."""


def _png(array: np.ndarray | Image.Image) -> bytes:
    buffer = io.BytesIO()
    (array if isinstance(array, Image.Image) else Image.fromarray(array)).save(buffer, "PNG")
    return buffer.getvalue()


def _to_uint8(decoded: Decoded) -> np.ndarray:
    return np.clip((decoded.image.transpose(1, 2, 0) + 1) * 127.5, 0, 255).round().astype(np.uint8)


class _Names:
    """Output file stems: the input id without its image suffix, '.face<k>' per face with --faces all;
    a stem seen again (x.jpg and x.png) gets '~1', '~2', ... so no face overwrites another."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def stem(self, input_id: str, face_index: int | None) -> str:
        base = input_id
        if base.lower().endswith(_IMAGE_SUFFIXES):
            base = base.rsplit(".", 1)[0]
        base = base.replace("#", "_")
        if face_index is not None:
            base = f"{base}.face{face_index}"
        stem, n = base, 0
        while stem in self.used:
            n += 1
            stem = f"{base}~{n}"
        self.used.add(stem)
        return stem


def _decode(decoding: DecodeSettings, aligner, resolution: int, record: InputRecord) -> list[Decoded]:
    if record.error is not None:
        return [Decoded(None, record.error)]
    try:
        return decoding.decode_rows(record.data, resolution=resolution, channels=3, aligner=aligner)
    except Exception as exc:  # one photo's failure is its row, never the job's
        return [Decoded(None, f"decoder failed: {type(exc).__name__}: {exc}")]


def _records(config: AlignConfig) -> tuple[int | None, Iterator[InputRecord]]:
    shards = plan_input(config).shards
    known = all(s.layout == "folder" for s in shards)
    total = sum(len(s.members) for s in shards) if known else None
    return total, (record for shard in shards for record in read_shard(shard))


def run(config: AlignConfig) -> dict[str, Any]:
    """Align every face of config.input; returns a summary (inputs, faces, errors by reason, paths)."""
    from pipeline.progress import progress_bar

    config.check()
    check_writable_dir(config.output, setting="--output")
    root = config.output.rstrip("/")
    table_uri = posixpath.join(root, TABLE)
    if read_if_exists(table_uri) is not None and not config.overwrite:
        raise AlignOutputExists(f"--output {root} already holds {TABLE}; add --overwrite to align again, or write "
                                "to a new --output")
    decoding = config.decode_settings()
    aligner = decoding.aligner()
    total, records = _records(config)
    names, columns = _Names(), collections.defaultdict(list)
    inputs, errors = 0, collections.Counter()
    sheet: list[SheetRow] = []
    bar = progress_bar(total=total, desc="align", unit="photo", enabled=config.progress)
    with ThreadPoolExecutor(max_workers=config.threads) as pool:
        # a bounded window of photos in flight: the threads run ahead while results are written in order
        window: collections.deque = collections.deque()
        iterator = iter(records)

        def submit() -> bool:
            record = next(iterator, None)
            if record is None:
                return False
            window.append((record, pool.submit(_decode, decoding, aligner, config.resolution, record)))
            return True

        while len(window) < 2 * config.threads and submit():
            pass
        while window:
            record, future = window.popleft()
            submit()
            rows = future.result()
            inputs += 1
            for row_id, decoded in zip(decoding.row_ids(record.image_id, rows), rows):
                _add_row(columns, names, root, config, record, row_id, decoded, errors)
            if len(sheet) < config.sheet_size:
                sheet.extend(_sheet_row(record, rows))
            bar.update(1)
    bar.close()
    if sheet:
        write_bytes(posixpath.join(root, SHEET), _png(contact_sheet(sheet)))
    columns["schema_version"] = [FACES.version] * len(columns["image_id"])
    schema = FACES.schema({"settings": {k: v for k, v in vars(config).items() if k != "progress"}})
    table = pa.table({name: pa.array(columns[name], type=schema.field(name).type) for name in schema.names},
                     schema=schema)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_bytes(table_uri, buffer.getvalue().to_pybytes())
    ok = len(columns["image_id"]) - sum(errors.values())
    return {"inputs": inputs, "faces": ok, "errors": dict(errors), "table": link(table_uri),
            "images": link(posixpath.join(root, IMAGES)),
            "contact_sheet": link(posixpath.join(root, SHEET)) if sheet else None}


def _sheet_row(record: InputRecord, rows: list[Decoded]) -> list[SheetRow]:
    """The contact-sheet row of one photo; none for an input that is not an image at all."""
    photo = open_image(record.data)[0] if record.data is not None else None
    if photo is None:
        return []
    ok = [d for d in rows if d.ok]
    return [SheetRow(photo, record.image_id, [d.quad for d in ok], [_to_uint8(d) for d in ok],
                     [None if d.valid is None else d.valid[0] for d in ok],
                     error=None if ok else rows[0].error)]


def _add_row(columns, names: _Names, root: str, config: AlignConfig, record: InputRecord, row_id: str,
             decoded: Decoded, errors: collections.Counter) -> None:
    face = decoded.face
    columns["image_id"].append(row_id)
    columns["input_id"].append(record.image_id)
    columns["source_uri"].append(record.source_uri)
    width, height = decoded.original_size or (None, None)
    columns["width"].append(width)
    columns["height"].append(height)
    columns["face_index"].append(face.index if face else None)
    columns["face_confidence"].append(face.confidence if face else None)
    columns["face_box"].append(list(face.box) if face else None)
    columns["face_landmarks"].append([v for point in face.landmarks for v in point] if face else None)
    columns["quad"].append([float(v) for v in decoded.quad.flatten()] if decoded.quad is not None else None)
    if not decoded.ok:
        columns["status"].append("error")
        columns["error"].append(decoded.error)
        errors[decoded.error.split(":", 1)[0]] += 1
        for name in ("output", "mask", "known_fraction"):
            columns[name].append(None)
        return
    stem = names.stem(record.image_id, face.index if config.faces == "all" else None)
    write_bytes(posixpath.join(root, IMAGES, stem + ".png"), _png(_to_uint8(decoded)))
    mask_name = None
    if decoded.valid is not None:
        mask_name = stem + ".mask.png"
        write_bytes(posixpath.join(root, IMAGES, mask_name), _png((decoded.valid[0] * 255).astype(np.uint8)))
    columns["status"].append("ok")
    columns["error"].append(None)
    columns["output"].append(stem + ".png")
    columns["mask"].append(mask_name)
    columns["known_fraction"].append(float(decoded.valid.mean()) if decoded.valid is not None else 1.0)
