"""The Parquet files of a store: written with page checksums, read with them verified.

Every data page carries a CRC (Parquet's `write_page_checksum`), and every read verifies it, so bytes
flipped inside a page (a bad disk, a torn copy) are found when read instead of decoding into wrong
numbers or a crash deep in pyarrow. A file that fails to read is a `DamagedFileError` naming the file
and the way out (`latentmill verify --repair`), never a traceback.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import LatentmillError

PAGE_CHECKSUMS = {"write_page_checksum": True}


class DamagedFileError(LatentmillError, OSError):
    """A store's file cannot be read as what it should be (truncated, bytes flipped, not Parquet)."""


def parquet_bytes(table: pa.Table, *, compression: str = "zstd") -> bytes:
    """`table` as the bytes of a Parquet file with a checksum on every page."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=compression, **PAGE_CHECKSUMS)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def damaged(uri: str, exc: BaseException, remedy: str) -> DamagedFileError:
    detail = " ".join(str(exc).split())
    return DamagedFileError(f"{uri} is damaged ({type(exc).__name__}: {detail}); {remedy}")


@contextmanager
def open_parquet(uri: str, *, remedy: str = "replace it") -> Iterator[pq.ParquetFile]:
    """The Parquet file at `uri`, every page checked against its checksum as it is read."""
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        handle = fs.open(path, "rb")
    except FileNotFoundError:
        raise DamagedFileError(f"{uri} is missing; {remedy}") from None
    try:
        try:
            parquet = pq.ParquetFile(handle, page_checksum_verification=True)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise damaged(uri, exc, remedy) from None
        yield parquet
    finally:
        handle.close()


def read_parquet(uri: str, columns: Iterable[str] | None = None, *, remedy: str = "replace it") -> pa.Table:
    """The columns of the Parquet file at `uri` (all when None; asked-for columns it lacks are left out)."""
    with open_parquet(uri, remedy=remedy) as parquet:
        wanted = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
        try:
            return parquet.read(columns=wanted)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise damaged(uri, exc, remedy) from None


def iter_parquet(uri: str, columns: Iterable[str] | None = None, *, batch_size: int = 65_536,
                 remedy: str = "replace it") -> Iterator[pa.RecordBatch]:
    """The rows of the Parquet file at `uri` in record batches, read one row group at a time."""
    with open_parquet(uri, remedy=remedy) as parquet:
        wanted = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
        try:
            yield from parquet.iter_batches(batch_size=batch_size, columns=wanted)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise damaged(uri, exc, remedy) from None
