"""A store's manifest: one small JSON entry per finished (or failed) shard, read all at once.

The entry of a finished shard is written after its data file and records the file's size and
sha256 and the digest of the recipe it was made with (plus rows, ok, errors by reason, seconds,
precision, device). Entries are read concurrently on object stores (10,000 shards are 10,000
requests), and an entry that cannot be read (a torn write, garbage) is named, never a traceback:
its shard counts as not finished, and `verify --repair` removes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import fsspec

from pipeline.store import layout
from pipeline.uris import read_many


@dataclass
class Manifest:
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)  # shard -> its entry
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)  # shard -> its failure record
    torn: dict[str, str] = field(default_factory=dict)  # shard -> what is wrong with its entry

    def totals(self) -> dict[str, Any]:
        """Rows, ok and error rows (by reason) of the finished shards."""
        reasons: dict[str, int] = {}
        for entry in self.finished.values():
            for reason, n in (entry.get("error_reasons") or {}).items():
                reasons[reason] = reasons.get(reason, 0) + int(n)
        return {"rows": sum(int(e.get("rows", 0)) for e in self.finished.values()),
                "ok": sum(int(e.get("ok", 0)) for e in self.finished.values()),
                "errors": sum(int(e.get("errors", 0)) for e in self.finished.values()),
                "error_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}


def _entry(data: bytes | Exception) -> tuple[dict[str, Any] | None, str | None]:
    if isinstance(data, Exception):
        return None, f"unreadable ({type(data).__name__}: {data})"
    try:
        entry = json.loads(data)
    except ValueError as exc:
        return None, f"not JSON ({exc}): a torn write"
    if not isinstance(entry, dict) or not isinstance(entry.get("rows"), int):
        return None, "not a manifest entry (no row count)"
    return entry, None


def read_manifest(store: str) -> Manifest:
    """Every entry under STORE/manifest/, read concurrently; unreadable ones are `torn`."""
    fs, root = fsspec.core.url_to_fs(layout.join(store, layout.MANIFEST))
    try:
        names = sorted(n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(root, detail=False))
    except FileNotFoundError:
        return Manifest()
    names = [n for n in names if n.endswith(layout.ENTRY_SUFFIX) and not n.startswith(".")]
    uris = [layout.join(store, layout.MANIFEST, n) for n in names]
    manifest = Manifest()
    contents = read_many(uris)
    for name, uri in zip(names, uris):
        data = contents[uri]
        failed = name.endswith(layout.FAILED_SUFFIX)
        shard = name[: -len(layout.FAILED_SUFFIX if failed else layout.ENTRY_SUFFIX)]
        entry, problem = _entry(data)
        if failed:  # a failure record needs no row count
            manifest.failed[shard] = json_or_note(data)
        elif problem is not None:
            manifest.torn[shard] = problem
        else:
            manifest.finished[shard] = entry
    return manifest


def json_or_note(data: bytes | Exception) -> dict[str, Any]:
    try:
        value = json.loads(data) if not isinstance(data, Exception) else None
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"error": "the failure record is unreadable"}
