"""Writing a latent store: only through a claim (`claim(uri)`), never by hand.

    with claim("out/store") as writer:          # one writer at a time (pipeline/store/store_lock.py)
        writer.write_json(layout.RECIPE, recipe)
        shard_writer = writer.shard_writer(digest)   # picklable: handed to the actors
        ...

Every write checks first that the claim is still held, so a run whose object-store lease was taken
over stops instead of writing into a store another run owns. Workers write shards on the claim's
behalf with a `ShardWriter`, which carries the claim's token and checks it against the lock before
each shard. A shard's data file is written first, with a checksum on every page, then its manifest
entry with the file's size, sha256 and the recipe's digest: a shard is finished exactly when its
entry exists and matches its file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa

from pipeline.store import layout
from pipeline.store.manifest import index_table
from pipeline.store.parquet_files import parquet_bytes, sha256
from pipeline.store.store import Store
from pipeline.store.store_lock import StoreClaim, StoreClaimLostError, claim_store, holds_claim
from pipeline.uris import list_sizes, move, remove_if_exists, write_bytes


class StoreWriter(Store):
    """A store this run has claimed: the reader's methods, and writes that check the claim first."""

    def __init__(self, uri: str, claim: StoreClaim) -> None:
        super().__init__(uri)
        self.claim = claim

    def reread(self) -> None:
        """Forget what was read lazily (after this run changed the files it describes)."""
        for name in ("manifest", "files", "recipe", "precisions", "metadata", "schema", "input_plan"):
            self.__dict__.pop(name, None)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.claim.check()
        write_bytes(self.path(name), data)

    def write_json(self, name: str, value: Any) -> None:
        self.write_bytes(name, json.dumps(value, indent=2, default=str).encode())

    def write_table(self, name: str, table: pa.Table) -> None:
        """A Parquet file (page checksums on) at `name`."""
        self.write_bytes(name, parquet_bytes(table))

    def remove(self, name: str) -> bool:
        self.claim.check()
        return remove_if_exists(self.path(name))

    def write_manifest_index(self) -> None:
        """Write manifest/_index.parquet from the entries as they are now (see pipeline/store/manifest.py)."""
        self.write_table(layout.MANIFEST_INDEX, index_table(self.uri))

    def shard_writer(self, recipe: str | None) -> ShardWriter:
        """What workers write finished shards with; `recipe`: the digest each entry records."""
        self.claim.check()
        return ShardWriter(self.uri, self.claim.token, recipe)

    def record_failure(self, shard: str, entry: dict[str, Any]) -> None:
        self.write_json(layout.entry_name(shard, failed=True), entry)

    def remove_shard(self, shard: str) -> None:
        """Forget a shard: manifest entries first, then its data."""
        for name in (layout.entry_name(shard), layout.entry_name(shard, failed=True), layout.shard_file_name(shard)):
            self.remove(name)

    def quarantine(self, name: str) -> str | None:
        """Move a damaged file of the store to STORE/quarantine/ (timestamped); returns where it went."""
        self.claim.check()
        source = self.path(name)
        fs, path = fsspec.core.url_to_fs(source)
        if not fs.exists(path):
            return None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = self.path(f"{layout.QUARANTINE}/{name.replace('/', '_')}.{stamp}")
        move(source, target)
        return target

    def forget_shards(self) -> None:
        """--overwrite: every shard of the store goes (manifest entries first), whatever its recipe."""
        manifest = self.manifest
        for shard in sorted(set(manifest.finished) | set(manifest.failed) | set(manifest.torn)):
            self.remove_shard(shard)
        for name in list_sizes(self.path(layout.LATENTS)):
            self.remove(f"{layout.LATENTS}/{name}")
        self.reread()


@dataclass(frozen=True)
class ShardWriter:
    """Writes finished shards for the run holding the store's claim (shipped to workers by value)."""

    store: str
    token: str
    recipe: str | None  # the digest of the recipe the shards are made with

    def write(self, shard: str, table: pa.Table, entry: dict[str, Any]) -> dict[str, Any]:
        """Data first (page checksums on), then the manifest entry with its size, sha256 and the recipe's
        digest; a crash between the two leaves the shard unfinished, not half-done. Returns the entry."""
        if not holds_claim(self.store, self.token):
            raise StoreClaimLostError(f"the run this worker writes for no longer holds {self.store}; shard {shard} "
                                      "was not written")
        data = parquet_bytes(table)
        entry = {**entry, "bytes": len(data), "sha256": sha256(data), "recipe": self.recipe}
        write_bytes(layout.shard_file(self.store, shard), data)
        write_bytes(layout.manifest_file(self.store, shard), json.dumps(entry, indent=2, default=str).encode())
        remove_if_exists(layout.manifest_file(self.store, shard, failed=True))
        return entry


@contextmanager
def claim(uri: str, *, wait: bool = False, timeout_s: float | None = None,
          wait_hint: str = " (or rerun with --wait)") -> Iterator[StoreWriter]:
    """The store at `uri`, claimed for writing for the duration of the block (StoreLockedError naming the
    holder when another run has it)."""
    with claim_store(uri, wait=wait, timeout_s=timeout_s, wait_hint=wait_hint) as held:
        yield StoreWriter(uri, held)
