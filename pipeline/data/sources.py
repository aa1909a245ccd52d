"""Reading the input records of one planned shard (planning is pipeline/data/planning.py).

A record is one input before decoding: its id, where it came from, its bytes (and sidecars), or the
reason it could not be read. Every planned input yields exactly one record, whatever happens:
- only regular files are opened; a FIFO, socket or device is a record saying what it is (opening
  a FIFO would block forever), and every read of a folder input has a timeout (`read_timeout`);
- a shard that cannot be read at all (a corrupt tar, say) yields one error record for itself;
- names that are not UTF-8 become escaped ids (pipeline/data/names.py) and are opened by their bytes;
- a tar key seen again becomes 'key~n' (the first such suffix that is no other key of the tar),
  or an error record with `on_duplicate_id="error"`.
Folder inputs are read ahead of the consumer with bounded concurrency (`prefetch`), so an actor's
accelerator never waits for an object store's round trips while reading is faster than computing.
"""

from __future__ import annotations

import itertools
import json
import os
import posixpath
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.concurrency import bounded_map
from pipeline.data.names import default_id, escape_name, id_text, os_name

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
MASK_SUFFIX = ".mask.png"
DEFAULT_READ_TIMEOUT_S = 120.0
DEFAULT_PREFETCH = 16
T = TypeVar("T")


@dataclass
class InputRecord:
    """One input before decoding; `error` set when its bytes could not even be read."""

    image_id: str
    source_uri: str
    data: bytes | None = None
    mask: bytes | None = None
    meta: dict | None = None
    error: str | None = None


@dataclass
class ShardSpec:
    shard_id: str
    layout: str  # folder | tar | parquet
    uri: str  # the tar or parquet file; the folder root for folder shards
    members: list[str] = field(default_factory=list)  # folder shards: escaped file paths under the root
    # parquet: image_column, id_column, renamed_ids {row: new id}; folder: sidecars {member: [".mask.png", ...]};
    # any layout: kinds {member or "": what a non-regular file is}
    options: dict = field(default_factory=dict)

    @property
    def file(self) -> str:
        """A tar or Parquet shard's file name (escaped), as its plan lists it."""
        return posixpath.basename(self.uri)


def sidecar_stem(relative: str) -> str | None:
    """The image stem a sidecar file belongs to ('x' for 'x.mask.png' and 'x.json'), else None."""
    for suffix in (MASK_SUFFIX, ".json"):
        if relative.endswith(suffix):
            return relative[: -len(suffix)]
    return None


def stem(relative: str) -> str:
    return relative.rsplit(".", 1)[0] if "." in posixpath.basename(relative) else relative


def is_sidecar_name(relative: str, image_stems: set[str]) -> bool:
    """A sidecar with its image beside it; an orphan sidecar is planned as an input (its row says so)."""
    found = sidecar_stem(relative)
    return found is not None and found in image_stems


def call_with_timeout(fn: Callable[[], T], seconds: float | None) -> T:
    """fn(), or TimeoutError after `seconds`. The call runs on a daemon thread that is abandoned on a
    timeout (a blocked open or read cannot be interrupted), so a hung file never hangs the run or its exit."""
    if not seconds:
        return fn()
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            result["error"] = exc

    thread = threading.Thread(target=target, name="latentmill-read", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


def kind_of_mode(mode: int | None) -> str:
    """'file' for a regular file (or an unknown mode), else what it is."""
    if mode is None or stat.S_ISREG(mode):
        return "file"
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device")):
        if test(mode):
            return name
    return "other"


def local_kind(path: str) -> str:
    """What a local path is now: 'file', 'missing', 'fifo', 'socket', 'device', ... (without opening it)."""
    try:
        return kind_of_mode(os.stat(path).st_mode)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable path ({exc.strerror})"


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(uri)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def _not_regular(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """What a local path is when it is not a regular file (None for a regular file or a remote object)."""
    if not _is_local(fs):
        return None
    kind = local_kind(path)
    return None if kind == "file" else kind


def read_shard(spec: ShardSpec, *, timeout: float | None = DEFAULT_READ_TIMEOUT_S,
               prefetch: int = DEFAULT_PREFETCH, on_duplicate_id: str = "suffix") -> Iterator[InputRecord]:
    """The input records of one shard, in a deterministic order."""
    if spec.layout == "folder":
        yield from _read_folder(spec, timeout, prefetch)
    elif spec.layout == "tar":
        yield from _read_tar(spec, on_duplicate_id)
    elif spec.layout == "parquet":
        yield from _read_parquet(spec)
    else:
        raise ValueError(f"unknown shard layout {spec.layout!r}")


def _read_folder(spec: ShardSpec, timeout: float | None, prefetch: int) -> Iterator[InputRecord]:
    fs, root = _fs(spec.uri)
    sidecars: dict[str, list[str]] | None = spec.options.get("sidecars")  # None: a legacy plan, look for them

    def read_optional(path: str) -> bytes | None:
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None

    def read_one(relative: str) -> InputRecord:
        path = posixpath.join(root, os_name(relative))
        source = fs.unstrip_protocol(posixpath.join(root, relative))
        orphan = sidecar_stem(relative)
        if orphan is not None:
            return InputRecord(relative, source, error=f"orphan sidecar: no image {posixpath.basename(orphan)}.* "
                                                       f"beside {posixpath.basename(relative)}")
        try:
            kind = _not_regular(fs, path)
            if kind == "missing":
                return InputRecord(relative, source, error="missing: the file disappeared after planning")
            if kind is not None:
                return InputRecord(relative, source, error=f"not a regular file: a {kind}")
            data = call_with_timeout(lambda: read_optional(path), timeout)
            if data is None:
                return InputRecord(relative, source, error="missing: the file disappeared after planning")
            base = posixpath.join(root, os_name(stem(relative)))
            wanted = sidecars.get(relative, []) if sidecars is not None else [MASK_SUFFIX, ".json"]
            mask = call_with_timeout(lambda: read_optional(base + MASK_SUFFIX), timeout) if MASK_SUFFIX in wanted else None
            meta = call_with_timeout(lambda: read_optional(base + ".json"), timeout) if ".json" in wanted else None
            return InputRecord(relative, source, data, mask=mask, meta=_parse_json(meta))
        except TimeoutError as exc:
            return InputRecord(relative, source, error=f"read timeout: {exc} (--read-timeout)")
        except Exception as exc:  # one unreadable file is that file's row, whatever the storage raised
            return InputRecord(relative, source, error=f"unreadable: {type(exc).__name__}: {exc}")

    yield from bounded_map(read_one, spec.members, workers=prefetch, window=prefetch, name="latentmill-read")


def _parse_json(data: bytes | None) -> dict | None:
    if not data:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return {"_unparsable_json": True}
    return value if isinstance(value, dict) else {"value": value}


def _tar_members(spec: ShardSpec) -> tuple[list[tuple[str, str, bytes]], str | None]:
    """Every (key, extension, bytes) of a tar's regular members in archive order (keys escaped), and the
    reason the rest could not be read, if it could not."""
    fs, path = _fs(spec.uri)
    members: list[tuple[str, str, bytes]] = []
    kind = spec.options.get("kind") or _not_regular(fs, path)
    if kind == "missing":
        return members, "missing: the tar disappeared after planning"
    if kind is not None:
        return members, f"not a regular file: a {kind}"
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                directory, name = posixpath.split(member.name)
                if name.startswith("."):
                    continue
                key, _, suffix = name.partition(".")
                members.append((escape_name(posixpath.join(directory, key)), suffix.lower(),
                                archive.extractfile(member).read()))
    except (tarfile.TarError, OSError, EOFError) as exc:
        return members, f"unreadable tar: {exc}"
    return members, None


def _read_tar(spec: ShardSpec, on_duplicate_id: str) -> Iterator[InputRecord]:
    members, failure = _tar_members(spec)
    natural = {key for key, _, _ in members}
    samples: dict[str, dict[str, bytes]] = {}
    repeats: set[str] = set()  # samples made by a repeated member
    order: list[str] = []
    for key, ext, data in members:
        unique = key
        if unique in samples and ext in samples[unique]:  # a repeated member: the first free 'key~n'
            for n in itertools.count(1):
                unique = f"{key}~{n}"
                if unique not in natural and (unique not in samples or ext not in samples[unique]):
                    break
            repeats.add(unique)
        if unique not in samples:
            samples[unique] = {}
            order.append(unique)
        samples[unique][ext] = data
    for key in order:
        parts = samples[key]
        source = f"{spec.uri}#{key}"
        image_suffix = next((s for s in TAR_IMAGE_EXTENSIONS if s in parts), None)
        image_id = f"{spec.shard_id}/{key}"
        if key in repeats and on_duplicate_id == "error":
            original = key.rsplit("~", 1)[0]
            yield InputRecord(image_id, source, error=f"duplicate id: the tar holds {original} more than once "
                                                      "(--on-duplicate-id error)")
        elif image_suffix is None:
            yield InputRecord(image_id, source, error=f"no image: the sample has only {sorted(parts)}")
        else:
            yield InputRecord(image_id, source, parts[image_suffix], mask=parts.get("mask.png"),
                              meta=_parse_json(parts.get("json")))
    if failure is not None:  # what could not be enumerated gets one row, so nothing vanishes silently
        yield InputRecord(f"{spec.shard_id}/<rest of shard>", spec.uri, error=failure)


def _read_parquet(spec: ShardSpec) -> Iterator[InputRecord]:
    image_column, id_column = spec.options.get("image_column", "image"), spec.options.get("id_column")
    fs, path = _fs(spec.uri)
    kind = spec.options.get("kind") or _not_regular(fs, path)
    try:
        if kind is not None:
            raise OSError("it disappeared after planning" if kind == "missing" else f"not a regular file: a {kind}")
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    except (OSError, ValueError, pa.ArrowException) as exc:
        yield InputRecord(f"{spec.shard_id}/<whole file>", spec.uri, error=f"unreadable parquet: {exc}")
        return
    if image_column not in table.column_names:
        raise ValueError(f"--image-column {image_column!r} is not a column of {spec.uri} "
                         f"(columns: {table.column_names})")
    if id_column is not None and id_column not in table.column_names:
        raise ValueError(f"--id-column {id_column!r} is not a column of {spec.uri}")
    images = table.column(image_column).to_pylist()
    ids = table.column(id_column).to_pylist() if id_column else [None] * len(images)
    renamed = spec.options.get("renamed_ids") or {}
    for row, (value, given) in enumerate(zip(images, ids)):
        image_id = renamed.get(str(row)) or (default_id(spec.shard_id, row) if given is None else id_text(given))
        source = f"{spec.uri}#row={row}"
        if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
            value = value.get("bytes")
        if value is None:
            yield InputRecord(image_id, source, error="empty: the image cell is null")
        elif not isinstance(value, (bytes, bytearray)):
            yield InputRecord(image_id, source, error=f"not an image: the cell holds {type(value).__name__}")
        else:
            yield InputRecord(image_id, source, bytes(value))
