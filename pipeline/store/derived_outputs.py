"""Outputs computed from a store (curation, rebalancing, the report) remember what they came from.

Each records an inputs key beside its files: a digest of the store's state (its recipe and every
finished shard's manifest entry), of the settings that shape the output, and of the other outputs
it reads. A rerun whose key matches reuses the files and says so; anything else recomputes them.
The record is written last, after every file it vouches for.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec

from pipeline.store.latent_store import manifest_entries
from pipeline.store.store_recipe import RECIPE_FILE
from pipeline.uris import read_if_exists, write_bytes

RECORD_FILE = "inputs.json"
T = TypeVar("T")


def store_state(store: str) -> dict[str, Any]:
    """The recipe and every finished shard's entry: they change whenever a row can have changed."""
    recipe = read_if_exists(posixpath.join(store.rstrip("/"), RECIPE_FILE))
    return {"recipe": hashlib.sha256(recipe).hexdigest() if recipe else None,
            "shards": {k: [v.get("rows"), v.get("finished_at")] for k, v in sorted(manifest_entries(store).items())}}


def inputs_key(store: str, settings: dict[str, Any], depends_on: list[str] = ()) -> str:
    """Digest of the store's state, `settings`, and the bytes of each file in `depends_on` (if present)."""
    others = {uri: hashlib.sha256(data).hexdigest() if (data := read_if_exists(uri)) is not None else None
              for uri in depends_on}
    blob = json.dumps({"store": store_state(store), "settings": settings, "depends_on": others}, sort_keys=True,
                      default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def is_current(directory: str, key: str, *, outputs: list[str] = ()) -> bool:
    """True if `directory` was computed from these inputs and the `outputs` (URIs) are all there."""
    record = read_if_exists(posixpath.join(directory.rstrip("/"), RECORD_FILE))
    if record is None or json.loads(record).get("inputs_key") != key:
        return False
    return all(read_if_exists(uri) is not None for uri in outputs)


def forget_inputs(directory: str) -> None:
    """Before recomputing: a run killed midway must not leave an old record vouching for new files."""
    fs, path = fsspec.core.url_to_fs(posixpath.join(directory.rstrip("/"), RECORD_FILE))
    if fs.exists(path):
        fs.rm(path)


def record_inputs(directory: str, key: str) -> None:
    write_bytes(posixpath.join(directory.rstrip("/"), RECORD_FILE), json.dumps({"inputs_key": key}).encode())


def reuse_or_compute(directory: str, key: str, *, outputs: list[str], compute: Callable[[], T],
                     reuse: Callable[[], T], what: str) -> T:
    """`reuse()` if `directory` holds results of these inputs (said on stderr), else `compute()` and record."""
    if is_current(directory, key, outputs=outputs):
        print(f"{what}: its inputs are unchanged since the last run; reusing {directory}", file=sys.stderr)
        return reuse()
    forget_inputs(directory)
    result = compute()
    record_inputs(directory, key)
    return result
