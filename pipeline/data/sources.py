"""Reading the input records of one planned shard (planning is pipeline/data/planning.py).

A record is one input before decoding: its id, where it came from, its bytes (and sidecars), or the
reason it could not be read. Every planned input yields exactly one record, whatever happens:
- only regular files are opened; a FIFO, socket or device is a record saying what it is (opening
  a FIFO would block forever), and every read of a folder input has a timeout (`read_timeout`);
- a shard that cannot be read at all (a corrupt tar, say) yields one error record for itself;
- names that are not UTF-8 become escaped ids (pipeline/data/names.py) and are opened by their bytes;
- tars are streamed a sample at a time (consecutive members sharing a key, as webdataset defines a
  sample); a key seen again becomes 'key~n' (the first such suffix no earlier sample of the tar has;
  a later key spelled like a suffix already given gets one itself), or an error record with
  `on_duplicate_id="error"`; a member above `max_input_bytes` is a 'too large' record, never read; a
  hardlinked member gives its target's bytes; symlink, device and FIFO members are records saying so;
  a tar damaged part way keeps the records before the damage and gives one record for the rest;
- Parquet shards are read a batch of rows at a time; other scalar columns become the row's meta;
- img2dataset's per-shard metadata Parquet (planned beside a shard) is joined into each sample's meta
  by key, as are a sample's JSON and small text parts (`.txt`, `.cls`).
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
TEXT_PART_EXTENSIONS = ("txt", "cls", "caption", "label")  # small text parts of a sample, kept in its meta
TEXT_SIDECAR_SUFFIXES = tuple(f".{e}" for e in TEXT_PART_EXTENSIONS)
TEXT_PART_MAX_BYTES = 65536  # larger text parts are not meta
SIDECAR_SUFFIXES = (".mask.png", ".json", *TEXT_SIDECAR_SUFFIXES)  # read with the image of the same stem
MASK_SUFFIX = ".mask.png"
DEFAULT_READ_TIMEOUT_S = 120.0
MAX_READ_TIMEOUT_S = 86400.0  # a day: a longer wait is a mistake in the setting (and overflows timers)
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
    path: str | None = None  # tar and Parquet shards: the file's escaped path relative to the input root

    @property
    def file(self) -> str:
        """A tar or Parquet shard's file (escaped, relative to the input root), as its plan lists it."""
        return self.path if self.path is not None else posixpath.basename(self.uri)


def sidecar_stem(relative: str) -> str | None:
    """The image stem a sidecar file belongs to ('x' for 'x.mask.png' and 'x.json'), else None."""
    for suffix in SIDECAR_SUFFIXES:
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
               prefetch: int = DEFAULT_PREFETCH, on_duplicate_id: str = "suffix",
               max_input_bytes: int | None = None) -> Iterator[InputRecord]:
    """The input records of one shard, in a deterministic order, streamed: an input larger than
    `max_input_bytes` is a 'too large' record without its bytes being read."""
    metadata = read_metadata(spec.options["metadata"]) if spec.options.get("metadata") else None
    if spec.layout == "folder":
        yield from _read_folder(spec, timeout, prefetch, max_input_bytes, metadata)
    elif spec.layout == "tar":
        yield from _read_tar(spec, on_duplicate_id, max_input_bytes, metadata)
    elif spec.layout == "parquet":
        yield from _read_parquet(spec, max_input_bytes)
    else:
        raise ValueError(f"unknown shard layout {spec.layout!r}")


def read_metadata(uri: str) -> dict[str, dict]:
    """A per-sample metadata Parquet written beside shards (img2dataset's `00000.parquet`): key -> its
    scalar fields; an unreadable one gives nothing (its samples are still read)."""
    fs, path = _fs(uri)
    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    except Exception:  # metadata is a courtesy: never the reason a sample is lost
        return {}
    if "key" not in table.column_names:
        return {}
    keep = [n for n in table.column_names if n != "key" and is_scalar(table.schema.field(n).type)]
    keys = table.column("key").to_pylist()
    columns = {n: table.column(n).to_pylist() for n in keep}
    return {str(k): {n: columns[n][i] for n in keep if columns[n][i] is not None} for i, k in enumerate(keys)
            if k is not None}


def is_scalar(kind: pa.DataType) -> bool:
    """A column worth carrying into a row's meta: text, numbers, booleans (not bytes, lists or structs)."""
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
            or pa.types.is_floating(kind) or pa.types.is_boolean(kind))


def _read_folder(spec: ShardSpec, timeout: float | None, prefetch: int, max_input_bytes: int | None,
                 metadata: dict[str, dict] | None) -> Iterator[InputRecord]:
    fs, root = _fs(spec.uri)
    sidecars: dict[str, list[str]] | None = spec.options.get("sidecars")  # None: a legacy plan, look for them

    def read_optional(path: str, limit: int | None = None) -> bytes | None:
        """The file's bytes, or None if it is gone; at most limit + 1 bytes are read (so a file past the
        limit is known as such without reading it whole)."""
        try:
            if limit is None:
                return fs.cat_file(path)
            with fs.open(path, "rb") as f:
                return f.read(limit + 1)
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
            data = call_with_timeout(lambda: read_optional(path, max_input_bytes), timeout)
            if data is None:
                return InputRecord(relative, source, error="missing: the file disappeared after planning")
            if max_input_bytes is not None and len(data) > max_input_bytes:
                return InputRecord(relative, source, error=f"too large: more than --max-input-bytes "
                                                           f"{max_input_bytes:,} bytes (not read)")
            base = posixpath.join(root, os_name(stem(relative)))
            wanted = sidecars.get(relative, []) if sidecars is not None else [MASK_SUFFIX, ".json"]
            limits = {".json": max_input_bytes}  # a JSON sidecar whole (up to the input limit); text parts are short
            found = {suffix: call_with_timeout(lambda s=suffix: read_optional(base + s, limits.get(
                     s, TEXT_PART_MAX_BYTES)), timeout) for suffix in wanted if suffix != MASK_SUFFIX}
            mask = call_with_timeout(lambda: read_optional(base + MASK_SUFFIX), timeout) if MASK_SUFFIX in wanted else None
            meta = dict(metadata.get(posixpath.basename(stem(relative)), {})) if metadata else {}
            meta.update(_parse_json(found.pop(".json", None)) or {})
            for suffix, text in found.items():
                if text is not None and len(text) <= TEXT_PART_MAX_BYTES:
                    meta[suffix.lstrip(".")] = text.decode("utf-8", "replace").strip()
            return InputRecord(relative, source, data, mask=mask, meta=meta or None)
        except TimeoutError as exc:
            return InputRecord(relative, source, error=f"read timeout: {exc} (--read-timeout)")
        except Exception as exc:  # one unreadable file is that file's row, whatever the storage raised
            return InputRecord(relative, source, error=f"unreadable: {type(exc).__name__}: {exc}")

    yield from bounded_map(read_one, spec.members, workers=prefetch, window=prefetch, name="latentmill-read")


def _parse_json(data: bytes | None) -> dict | None:
    """A sidecar's JSON as a dict; a sidecar that is not JSON (or nested past the parser's depth) is
    marked, never the row's failure."""
    if not data:
        return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return {"_unparsable_json": True}
    return value if isinstance(value, dict) else {"value": value}


class _PartProblem(str):
    """Why a tar member's bytes were not read (too large, a link, a device): the sample's row says so."""


def _member_problem(member: tarfile.TarInfo, max_input_bytes: int | None) -> _PartProblem | None:
    if member.issym():
        return _PartProblem(f"a symlink member: {member.name} -> {member.linkname} (links are not followed "
                            "out of the archive)")
    if member.ischr() or member.isblk():
        return _PartProblem(f"a device member: {member.name}")
    if member.isfifo():
        return _PartProblem(f"a fifo member: {member.name}")
    if not (member.isfile() or member.islnk()):
        return _PartProblem(f"not a regular file member: {member.name}")
    if max_input_bytes is not None and member.isfile() and member.size > max_input_bytes:
        return _PartProblem(f"too large: {member.name} holds {member.size:,} bytes, more than --max-input-bytes "
                            f"{max_input_bytes:,} (not read)")
    return None


def _extract(archive: tarfile.TarFile, member: tarfile.TarInfo, max_input_bytes: int | None) -> bytes | _PartProblem:
    """A member's bytes; a hardlink gives its target's (GNU tar stores a second name of a file that way)."""
    if member.islnk():
        try:
            target = archive._find_link_target(member)  # the members read so far, as extractfile uses
        except KeyError:
            return _PartProblem(f"a hardlink to {member.linkname}, which is not an earlier member of the tar")
        if max_input_bytes is not None and target.size > max_input_bytes:
            return _PartProblem(f"too large: {member.name} (a link to {target.name}) holds {target.size:,} bytes, "
                                f"more than --max-input-bytes {max_input_bytes:,} (not read)")
    handle = archive.extractfile(member)
    if handle is None:
        return _PartProblem(f"not a regular file member: {member.name}")
    return handle.read()


@dataclass
class _Sample:
    key: str  # escaped, unique within the tar
    parts: dict[str, bytes | _PartProblem] = field(default_factory=dict)
    repeat_of: str | None = None  # the key it repeats (a member seen again)
    archive_key: str = ""  # the key as the archive spells it

    def __post_init__(self) -> None:
        self.archive_key = self.archive_key or self.key


def _tar_samples(spec: ShardSpec, max_input_bytes: int | None) -> Iterator[_Sample | str]:
    """A tar's samples, streamed in archive order (consecutive members sharing a key, as the webdataset
    format defines them), each read when its last member has been; a str at the end: why the rest of the
    tar could not be read. Memory: one sample's bytes, plus tarfile's small record of each member."""
    fs, path = _fs(spec.uri)
    kind = spec.options.get("kind") or _not_regular(fs, path)
    if kind == "missing":
        yield "missing: the tar disappeared after planning"
        return
    if kind is not None:
        yield f"not a regular file: a {kind}"
        return
    taken: set[str] = set()  # ids given so far
    keys: set[str] = set()  # keys as the archive spells them, seen so far
    current: _Sample | None = None
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:*") as archive:
            for member in archive:
                if member.isdir():
                    continue
                directory, name = posixpath.split(member.name)
                if name.startswith("."):
                    continue
                base_key, _, ext = name.partition(".")
                key, ext = escape_name(posixpath.join(directory, base_key)), ext.lower()
                if current is not None and current.archive_key == key and ext not in current.parts:
                    sample = current
                else:
                    if current is not None:
                        yield current
                    sample = current = _Sample(key)
                    if key in taken:  # the first 'key~n' no earlier sample has
                        current.key = next(f"{key}~{n}" for n in itertools.count(1) if f"{key}~{n}" not in taken)
                        current.repeat_of = key if key in keys else None  # else a key equal to an earlier suffix
                    taken.add(current.key)
                    keys.add(key)
                problem = _member_problem(member, max_input_bytes)
                try:
                    sample.parts[ext] = problem if problem is not None else _extract(archive, member, max_input_bytes)
                except Exception as exc:  # a decompressor's error mid-member: this sample, then the rest
                    sample.parts[ext] = _PartProblem(f"unreadable: {type(exc).__name__}: {exc}")
                    raise
            _check_end(archive)
    except Exception as exc:  # a damaged or truncated archive: rows read so far stay, the rest is one row
        if current is not None:
            yield current
        yield f"unreadable tar: {type(exc).__name__}: {exc}"
        return
    if current is not None:
        yield current


def _check_end(archive: tarfile.TarFile) -> None:
    """tarfile ends its iteration quietly at a damaged header past the first member; the archive really
    ended only if what follows the last member is its end marker (zero blocks) or nothing."""
    archive.fileobj.seek(archive.offset)
    block = archive.fileobj.read(tarfile.BLOCKSIZE)
    if block.strip(b"\0"):
        raise tarfile.ReadError(f"a damaged member header at byte {archive.offset:,}: the members after it "
                                "cannot be found")


def _text_parts(parts: dict[str, bytes | _PartProblem], image_suffix: str) -> dict[str, str]:
    """A sample's small text parts (a caption `.txt`, a label `.cls`), for its meta."""
    found = {}
    for ext, data in parts.items():
        if ext in (image_suffix, "json", "mask.png") or isinstance(data, _PartProblem) or len(data) > TEXT_PART_MAX_BYTES:
            continue
        if ext in TEXT_PART_EXTENSIONS:
            try:
                found[ext] = data.decode("utf-8").strip()
            except UnicodeDecodeError:
                continue
    return found


def _read_tar(spec: ShardSpec, on_duplicate_id: str, max_input_bytes: int | None,
              metadata: dict[str, dict] | None) -> Iterator[InputRecord]:
    keys: set[str] = set()
    for sample in _tar_samples(spec, max_input_bytes):
        if isinstance(sample, str):  # what could not be enumerated gets one row, so nothing vanishes silently
            rest = next(f"<rest of shard>{'' if n == 0 else f'~{n}'}" for n in itertools.count()
                        if f"<rest of shard>{'' if n == 0 else f'~{n}'}" not in keys)
            yield InputRecord(f"{spec.shard_id}/{rest}", spec.uri, error=sample)
            return
        keys.add(sample.key)
        parts = sample.parts
        source = f"{spec.uri}#{sample.key}"
        image_id = f"{spec.shard_id}/{sample.key}"
        image_suffix = next((s for s in TAR_IMAGE_EXTENSIONS if s in parts), None)
        if sample.repeat_of is not None and on_duplicate_id == "error":
            yield InputRecord(image_id, source, error=f"duplicate id: the tar holds {sample.repeat_of} more than once "
                                                      "(--on-duplicate-id error)")
            continue
        if image_suffix is None:
            problems = [p for p in parts.values() if isinstance(p, _PartProblem)]
            error = problems[0] if problems else f"no image: the sample has only {sorted(parts)}"
            yield InputRecord(image_id, source, error=str(error))
            continue
        image = parts[image_suffix]
        if isinstance(image, _PartProblem):
            yield InputRecord(image_id, source, error=str(image))
            continue
        meta = dict(metadata.get(sample.archive_key, {})) if metadata else {}
        json_part = parts.get("json")
        meta.update(_parse_json(json_part if isinstance(json_part, bytes) else None) or {})
        meta.update(_text_parts(parts, image_suffix))
        mask = parts.get("mask.png")
        yield InputRecord(image_id, source, image, mask=mask if isinstance(mask, bytes) else None, meta=meta or None)


PARQUET_BATCH_ROWS = 64  # rows decoded from a Parquet shard at a time: memory is a row group, not the file


def _read_parquet(spec: ShardSpec, max_input_bytes: int | None) -> Iterator[InputRecord]:
    """One record per row, a batch of rows at a time. Other scalar columns (a label, a caption, img2dataset's
    url and status) go into the row's meta; a row without bytes whose `status` says it failed to download
    (img2dataset) says so."""
    image_column, id_column = spec.options.get("image_column", "image"), spec.options.get("id_column")
    problem = spec.options.get("problem")
    fs, path = _fs(spec.uri)
    kind = spec.options.get("kind") or _not_regular(fs, path)
    renamed = spec.options.get("renamed_ids") or {}
    row = 0
    try:
        if kind is not None:
            raise OSError("it disappeared after planning" if kind == "missing" else f"not a regular file: a {kind}")
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            if problem is None and image_column not in names:
                problem = f"no image column: --image-column {image_column!r} is not a column (columns: {names})"
            if problem is None and id_column is not None and id_column not in names:
                problem = f"no id column: --id-column {id_column!r} is not a column (columns: {names})"
            if problem is not None:
                yield InputRecord(f"{spec.shard_id}/<whole file>", spec.uri, error=problem)
                return
            scalars = [n for n in names if n not in (image_column, id_column)
                       and is_scalar(parquet.schema_arrow.field(n).type)]
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                images = batch.column(image_column).to_pylist()
                ids = batch.column(id_column).to_pylist() if id_column else [None] * len(images)
                extra = {n: batch.column(n).to_pylist() for n in scalars}
                for j, (value, given) in enumerate(zip(images, ids)):
                    image_id = renamed.get(str(row)) or (default_id(spec.shard_id, row) if given is None
                                                         else id_text(given))
                    meta = {n: values[j] for n, values in extra.items() if values[j] is not None} or None
                    yield _parquet_record(image_id, f"{spec.uri}#row={row}", value, meta, max_input_bytes)
                    row += 1
    except Exception as exc:  # unreadable, or damaged part way: rows read so far stay, the rest is one row
        what = "unreadable parquet" if row == 0 else f"unreadable parquet after row {row - 1}"
        yield InputRecord(f"{spec.shard_id}/<{'whole file' if row == 0 else 'rest of file'}>", spec.uri,
                          error=f"{what}: {type(exc).__name__}: {exc}")


def _parquet_record(image_id: str, source: str, value: Any, meta: dict | None,
                    max_input_bytes: int | None) -> InputRecord:
    if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    if value is None:
        if meta and meta.get("status") not in (None, "success"):  # img2dataset's failed downloads
            why = meta.get("error_message") or meta["status"]
            return InputRecord(image_id, source, meta=meta, error=f"not downloaded: {why}")
        return InputRecord(image_id, source, meta=meta, error="empty: the image cell is null")
    if not isinstance(value, (bytes, bytearray)):
        return InputRecord(image_id, source, meta=meta, error=f"not an image: the cell holds {type(value).__name__}")
    if max_input_bytes is not None and len(value) > max_input_bytes:
        return InputRecord(image_id, source, meta=meta, error=f"too large: {len(value):,} bytes, more than "
                                                             f"--max-input-bytes {max_input_bytes:,}")
    return InputRecord(image_id, source, bytes(value), meta=meta)
