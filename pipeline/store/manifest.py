"""A store's manifest: one small JSON entry per finished (or failed) shard, read all at once.

The entry of a finished shard is written after its data file and records the file's size and
sha256 and the digest of the recipe it was made with (plus rows, ok, errors by reason, seconds,
precision, device). An entry that cannot be read (a torn write, garbage) is named, never a
traceback: its shard counts as not finished, and `verify --repair` removes it.

Reading 10,000 entries from an object store is 10,000 requests; so the run that holds the store
writes `manifest/_index.parquet` when it ends: every entry's text with the size and version (mtime
or ETag) its file had. A reader lists manifest/ (one request per 1,000 names), takes from the
index every entry whose file is listed with the same size and version, and fetches only the others,
concurrently. The entry files stay the truth: an index row whose file is gone or changed is ignored.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store import layout
from pipeline.uris import read_if_exists, read_many


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


def list_entries(store: str) -> dict[str, str]:
    """Entry file name -> its version ('size:mtime or ETag') for every entry under STORE/manifest/."""
    fs, root = fsspec.core.url_to_fs(layout.join(store, layout.MANIFEST))
    try:
        listed = fs.ls(root, detail=True)
    except FileNotFoundError:
        return {}
    out = {}
    for info in listed:
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        if name.endswith(layout.ENTRY_SUFFIX) and not name.startswith("."):
            out[name] = f"{info.get('size')}:{_version(info)}"
    return out


def _version(info: dict[str, Any]) -> str | None:
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "updated"):
        if info.get(key) is not None:
            return str(info[key])
    return None


def _read_index(store: str) -> dict[str, tuple[str, bytes]]:
    """name -> (version, entry text) from manifest/_index.parquet; {} where it is absent or unreadable."""
    data = read_if_exists(layout.join(store, layout.MANIFEST_INDEX))
    if data is None:
        return {}
    try:
        table = pq.read_table(io.BytesIO(data), page_checksum_verification=True)
        return {n: (v, t.encode()) for n, v, t in zip(table.column("name").to_pylist(),
                                                       table.column("version").to_pylist(),
                                                       table.column("entry").to_pylist())}
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return {}


def index_table(store: str) -> pa.Table:
    """The manifest index of the entries as they are now (written by the run that holds the store)."""
    listed = list_entries(store)
    cached = _read_index(store)
    fresh = {n for n, v in listed.items() if cached.get(n, (None,))[0] != v}
    contents = read_many([layout.join(store, layout.MANIFEST, n) for n in sorted(fresh)])
    names, versions, texts = [], [], []
    for name, version in sorted(listed.items()):
        data = contents.get(layout.join(store, layout.MANIFEST, name)) if name in fresh else cached[name][1]
        if isinstance(data, bytes):
            names.append(name)
            versions.append(version)
            texts.append(data.decode("utf-8", "replace"))
    return pa.table({"name": names, "version": versions, "entry": texts})


def read_manifest(store: str) -> Manifest:
    """Every entry under STORE/manifest/: from the index where its file is unchanged, the rest fetched
    concurrently; unreadable ones are `torn`."""
    listed = list_entries(store)
    if not listed:
        return Manifest()
    cached = _read_index(store)
    names = sorted(listed)
    fetch = [layout.join(store, layout.MANIFEST, n) for n in names if cached.get(n, (None,))[0] != listed[n]]
    contents = read_many(fetch)
    manifest = Manifest()
    for name in names:
        uri = layout.join(store, layout.MANIFEST, name)
        data = contents[uri] if uri in contents else cached[name][1]
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
