"""Outputs computed from a store (curation, rebalancing, the report) remember what they came from.

Each records an inputs key beside its files: a digest of the store's state (its recipe and every
finished shard's manifest entry), of the settings that shape the output, and of the other outputs
it reads. A rerun whose key matches reuses the files and says so; anything else recomputes them.
The record is written last, after every file it vouches for. An output folder inside the store is
written through the store's claim (`StoreFolder`), one outside it directly (`UriFolder`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pipeline.store import layout
from pipeline.store.store import Store
from pipeline.uris import read_if_exists, remove_if_exists, write_bytes

T = TypeVar("T")


class OutputFolder(Protocol):
    """Where an output's inputs record lives, and how it is written."""

    def uri(self) -> str: ...
    def read_record(self) -> bytes | None: ...
    def write_record(self, data: bytes) -> None: ...
    def forget_record(self) -> None: ...


@dataclass
class StoreFolder:
    """A folder of a claimed store (e.g. layout.CURATION), written through its claim."""

    writer: Any  # StoreWriter
    folder: str

    def uri(self) -> str:
        return self.writer.path(self.folder)

    def read_record(self) -> bytes | None:
        return self.writer.read_bytes(f"{self.folder}/{layout.INPUTS_RECORD}")

    def write_record(self, data: bytes) -> None:
        self.writer.write_bytes(f"{self.folder}/{layout.INPUTS_RECORD}", data)

    def forget_record(self) -> None:
        self.writer.remove(f"{self.folder}/{layout.INPUTS_RECORD}")


@dataclass
class UriFolder:
    """A folder outside any store (e.g. rebalance's --output)."""

    root: str

    def uri(self) -> str:
        return self.root

    def read_record(self) -> bytes | None:
        return read_if_exists(layout.join(self.root, layout.INPUTS_RECORD))

    def write_record(self, data: bytes) -> None:
        write_bytes(layout.join(self.root, layout.INPUTS_RECORD), data)

    def forget_record(self) -> None:
        remove_if_exists(layout.join(self.root, layout.INPUTS_RECORD))


def store_state(store: Store) -> dict[str, Any]:
    """The recipe and every finished shard's entry: they change whenever a row can have changed."""
    recipe = store.read_bytes(layout.RECIPE)
    return {"recipe": hashlib.sha256(recipe).hexdigest() if recipe else None,
            "shards": {k: [v.get("rows"), v.get("finished_at"), v.get("sha256")]
                       for k, v in sorted(store.finished.items())}}


def inputs_key(store: Store, settings: dict[str, Any], depends_on: Sequence[str] = ()) -> str:
    """Digest of the store's state, `settings`, and the bytes of each URI in `depends_on` (if present)."""
    others = {uri: hashlib.sha256(data).hexdigest() if (data := read_if_exists(uri)) is not None else None
              for uri in depends_on}
    blob = json.dumps({"store": store_state(store), "settings": settings, "depends_on": others}, sort_keys=True,
                      default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def is_current(folder: OutputFolder, key: str, *, outputs: Sequence[str] = ()) -> bool:
    """True if `folder` was computed from these inputs and the `outputs` (URIs) are all there."""
    record = folder.read_record()
    try:
        if record is None or json.loads(record).get("inputs_key") != key:
            return False
    except (ValueError, AttributeError):
        return False
    return all(read_if_exists(uri) is not None for uri in outputs)


def reuse_or_compute(folder: OutputFolder, key: str, *, outputs: Sequence[str], compute: Callable[[], T],
                     reuse: Callable[[], T], what: str) -> T:
    """`reuse()` if `folder` holds results of these inputs (said on stderr), else `compute()` and record."""
    if is_current(folder, key, outputs=outputs):
        print(f"{what}: its inputs are unchanged since the last run; reusing {folder.uri()}", file=sys.stderr)
        return reuse()
    folder.forget_record()  # a run killed midway must not leave an old record vouching for new files
    result = compute()
    folder.write_record(json.dumps({"inputs_key": key}).encode())
    return result
