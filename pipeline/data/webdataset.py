"""Writing (and simply reading back) webdataset tar shards: samples of `key.ext` members.

For shards latentmill itself writes (demo data, the demo sample, rebalanced samples). Reading
arbitrary user shards, with their failure modes, is pipeline/data/sources.py's job.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping
from pathlib import Path


def add_sample(archive: tarfile.TarFile, key: str, parts: Mapping[str, bytes]) -> None:
    """Append one sample: a member `key.ext` per part, in the mapping's order."""
    for ext, data in parts.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))


def read_samples(path: str | Path) -> dict[str, dict[str, bytes]]:
    """A shard's samples, key -> {ext: bytes}, in archive order (a trusted shard: no error handling)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            key, _, ext = member.name.partition(".")
            samples.setdefault(key, {})[ext] = archive.extractfile(member).read()
    return samples
