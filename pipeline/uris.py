"""Files behind URIs (local path, file://, s3://, gs://, https://, memory://, ...), via fsspec.

Reading: remote files are copied once into a cache directory through fsspec's `filecache`, so a
cluster of workers reads a bucket once per machine. A missing file is a `WeightsNotFoundError` that
names the setting the user must change, never a silent fallback to random weights.
Writing: local files appear atomically (temp file + rename), so a killed job leaves no half file,
with the permissions the umask gives (teammates on a shared disk can read a store); other
backends get one whole-object put (`pipe_file`), which object stores apply atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

import fsspec

from pipeline.errors import WeightsNotFoundError


def default_cache_dir() -> Path:
    """$LATENTMILL_CACHE, else $XDG_CACHE_HOME/latentmill, else ~/.cache/latentmill."""
    if os.environ.get("LATENTMILL_CACHE"):
        return Path(os.environ["LATENTMILL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "latentmill"


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str, *, setting: str, cache_dir: str | Path | None = None) -> Path:
    """A local file holding the bytes of `uri`, downloading into the cache if it is remote.

    `setting` is the option that supplied the URI (e.g. '--generator'); errors name it.
    """
    if is_local(uri):
        path = Path(uri.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"{setting}: no file at '{uri}'. Point {setting} at an existing checkpoint.")
        return path
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "weights"
    cache.mkdir(parents=True, exist_ok=True)
    try:
        return Path(fsspec.open_local(f"filecache::{uri}", filecache={"cache_storage": str(cache)}))
    except FileNotFoundError:
        raise WeightsNotFoundError(f"{setting}: no file at '{uri}'. Point {setting} at an existing checkpoint.") from None


def absolute(uri: str) -> str:
    """A local path made absolute (what a store records, so it reads from any directory); other URIs as given."""
    if not is_local(uri):
        return uri
    return str(Path(uri.removeprefix("file://")).expanduser().absolute())


def link(uri: str) -> str:
    """An absolute file:// URL for a local path (clickable in terminals and mail), else the URI itself."""
    if is_local(uri):
        trailing = "/" if uri.endswith("/") else ""
        return Path(uri.removeprefix("file://")).expanduser().resolve().as_uri() + trailing
    return uri


def check_writable_dir(uri: str, *, setting: str) -> None:
    """Refuse, naming `setting`, a local output that is a file or cannot be created or written."""
    if not is_local(uri):
        return
    path = Path(uri.removeprefix("file://")).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{setting} {uri} is a file; give a directory")
    existing = next(p for p in [path, *path.parents] if p.exists())
    try:  # a real probe: permission bits do not tell for root, read-only mounts or pseudo filesystems
        os.rmdir(tempfile.mkdtemp(prefix=".latentmill-probe-", dir=existing))
    except OSError:
        raise ValueError(f"{setting} {uri} is not writable (checked {existing}); choose another {setting}") from None


def read_bytes(uri: str, *, setting: str, cache_dir: str | Path | None = None) -> bytes:
    return local_path(uri, setting=setting, cache_dir=cache_dir).read_bytes()


def read_if_exists(uri: str) -> bytes | None:
    """The bytes at `uri` (any fsspec URI, no cache), or None where there is no such file."""
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` to `uri`; a local file is replaced atomically, parents are created; other backends get
    one whole-object put."""
    if is_local(uri):
        _write_local(uri, lambda f: f.write(data))
    else:
        fs, path = _remote_parent_made(uri)
        fs.pipe_file(path, data)


def write_file(uri: str, source: BinaryIO) -> None:
    """Write the rest of the open file `source` to `uri`, streamed (no copy in memory); a local file is
    replaced atomically, parents are created; other backends get a streamed upload (an object appears whole
    when it completes)."""
    if is_local(uri):
        _write_local(uri, lambda f: shutil.copyfileobj(source, f, 1 << 22))
    else:
        fs, path = _remote_parent_made(uri)
        with fs.open(path, "wb") as f:
            shutil.copyfileobj(source, f, 1 << 22)


def _write_local(uri: str, write: Callable[[BinaryIO], object]) -> None:
    """A temporary file beside the target, written by `write`, then renamed over it."""
    path = Path(uri.removeprefix("file://")).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, as open() gives
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remote_parent_made(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    return fs, path


METADATA_CONCURRENCY = 32  # requests in flight for a store's small files on object stores


def _is_async(fs: fsspec.AbstractFileSystem) -> bool:
    return bool(getattr(fs, "async_impl", False))


def read_many(uris: list[str]) -> dict[str, bytes | Exception]:
    """The bytes of each URI (or the exception reading it raised), fetched concurrently: fsspec's async
    batch call on object stores, a thread pool elsewhere. Local files are read one after another."""
    if not uris:
        return {}
    fs, _ = fsspec.core.url_to_fs(uris[0])
    paths = [fsspec.core.url_to_fs(u)[1] for u in uris]
    if _is_async(fs):
        # start=0: one ranged GET per object. Without a range, s3fs first asks each object's size, which it
        # looks up by scanning its cached listing of the folder: quadratic in a folder of 10,000 entries.
        got = fs.cat(paths, on_error="return", batch_size=METADATA_CONCURRENCY, start=0)
        got = got if isinstance(got, dict) else {paths[0]: got}
        for path, value in got.items():  # an empty object refuses a range: read it whole
            if isinstance(value, Exception) and not isinstance(value, FileNotFoundError):
                try:
                    got[path] = fs.cat_file(path)
                except Exception as exc:  # handed back with the path, for the caller to name
                    got[path] = exc
        return {uri: got.get(path, FileNotFoundError(uri)) for uri, path in zip(uris, paths)}

    def one(path: str) -> bytes | Exception:
        try:
            return fs.cat_file(path)
        except Exception as exc:  # handed back with the path, for the caller to name
            return exc

    if is_local(uris[0]):
        return {uri: one(path) for uri, path in zip(uris, paths)}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=METADATA_CONCURRENCY) as pool:
        return dict(zip(uris, pool.map(one, paths)))


def list_sizes(folder: str) -> dict[str, int]:
    """Base name -> size of every file directly in `folder` (one listing; empty when it does not exist)."""
    fs, path = fsspec.core.url_to_fs(folder)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    return {entry["name"].rstrip("/").rsplit("/", 1)[-1]: int(entry.get("size") or 0)
            for entry in entries if entry.get("type") != "directory"}


def remove_if_exists(uri: str) -> bool:
    """Delete the file at `uri`; False when there was none."""
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        return False
    return True


def move(uri: str, target: str) -> None:
    """Move a file within one filesystem, creating the target's folder."""
    fs, path = fsspec.core.url_to_fs(uri)
    _, destination = fsspec.core.url_to_fs(target)
    parent = destination.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.mv(path, destination)
