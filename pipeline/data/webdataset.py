"""Writing (and simply reading back) webdataset tar shards: samples of `key.ext` members.

For shards latentmill itself writes (demo data, the demo sample, rebalanced samples), numbered
PREFIX-00000.tar, PREFIX-00001.tar, ... by one writer. Reading arbitrary user shards, with their
failure modes, is pipeline/data/sources.py's job.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import tempfile
from collections.abc import Mapping
from typing import BinaryIO
from pathlib import Path

from pipeline.uris import write_file

SPOOL_BYTES = 1 << 26


def add_sample(archive: tarfile.TarFile, key: str, parts: Mapping[str, bytes]) -> None:
    """Append one sample: a member `key.ext` per part, in the mapping's order."""
    for ext, data in parts.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))


class TarShardWriter:
    """Samples into numbered webdataset shards `folder`/PREFIX-00000.tar, ... of `shard_size` samples each
    (single: one shard, `folder`/PREFIX.tar). `folder` is any URI; a shard is spooled to a temporary file
    (memory holds at most SPOOL_BYTES of it) and written whole (atomically on a local disk), so a crash
    never leaves a partial shard under its final name."""

    def __init__(self, folder: str, prefix: str, shard_size: int = 1 << 62, *, single: bool = False) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.folder, self.prefix, self.shard_size, self.single = folder.rstrip("/"), prefix, shard_size, single
        self.index = self.count = 0
        self.buffer: BinaryIO | None = None
        self.archive: tarfile.TarFile | None = None
        self.written: list[str] = []

    @property
    def shard_name(self) -> str:
        """The shard the next sample goes to, without '.tar'."""
        return self.prefix if self.single else f"{self.prefix}-{self.index:05d}"

    def add(self, key: str, parts: Mapping[str, bytes]) -> str:
        """Append one sample (a member `key.ext` per part); returns the name of the shard holding it."""
        if self.archive is None:
            self.buffer = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
            self.archive = tarfile.open(fileobj=self.buffer, mode="w")
        add_sample(self.archive, key, parts)
        shard = self.shard_name
        self.count += 1
        if self.count == self.shard_size:
            self._finish()
        return shard

    def close(self) -> list[str]:
        """Write the last, partial shard; returns every shard's URI, in order."""
        self._finish()
        return self.written

    def _finish(self) -> None:
        if self.archive is None:
            return
        self.archive.close()
        uri = posixpath.join(self.folder, f"{self.shard_name}.tar")
        self.buffer.seek(0)
        write_file(uri, self.buffer)
        self.buffer.close()
        self.written.append(uri)
        self.archive, self.buffer, self.count = None, None, 0
        self.index += 1

    def __enter__(self) -> TarShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


def read_samples(path: str | Path) -> dict[str, dict[str, bytes]]:
    """A shard's samples, key -> {ext: bytes}, in archive order (a trusted shard: no error handling)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            key, _, ext = member.name.partition(".")
            samples.setdefault(key, {})[ext] = archive.extractfile(member).read()
    return samples
