"""One writer per store: a run claims the store before any work and holds it to the end.

- Local disks: an OS lock (`fcntl.flock`) on STORE/.lock. The kernel releases it when the holder's
  process ends, however it ends, so a killed run never leaves a stale lock behind. The file also
  says who holds it (host, pid, start time) for the message the second run prints.
- Object stores and other fsspec backends: a lease object STORE/.lease.json, created only if absent
  (exclusive create where the backend has one), renewed by a heartbeat thread every
  `LEASE_HEARTBEAT_S`; a lease older than `LEASE_STALE_S` belongs to a dead run and is taken over.
  Where a backend offers no exclusive create, two runs starting within the same second can both
  take the lease; each then re-reads it after writing and the loser gives up, which narrows that
  window to the backend's read-after-write delay (documented in README and schemas/README.md).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import fsspec

from pipeline.errors import LatentmillError
from pipeline.uris import is_local

LEASE_HEARTBEAT_S = 30.0
LEASE_STALE_S = 180.0
WAIT_POLL_S = 2.0


class StoreLockedError(LatentmillError, RuntimeError):
    """Another run holds the store."""


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                           time.gmtime()),
            "token": uuid.uuid4().hex, "heartbeat": time.time()}


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another run (holder unknown)"
    return f"the run of pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started_at')}"


def _locked_message(store: str, holder: dict[str, Any] | None) -> str:
    return (f"--output {store} is being written by {_describe(holder)}. Wait for it to finish (or rerun with "
            "--wait), or use another --output.")


@contextmanager
def claim_store(store: str, *, wait: bool = False, timeout_s: float | None = None) -> Iterator[dict[str, Any]]:
    """Hold the store for the duration of the block; raise StoreLockedError if another run has it."""
    if is_local(store):
        with _local_lock(Path(store.removeprefix("file://")).expanduser(), store, wait, timeout_s) as holder:
            yield holder
    else:
        with _lease(store, wait, timeout_s) as holder:
            yield holder


@contextmanager
def _local_lock(root: Path, store: str, wait: bool, timeout_s: float | None) -> Iterator[dict[str, Any]]:
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    path = root / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_json_fd(fd)
                if not wait or (deadline is not None and time.monotonic() > deadline):
                    raise StoreLockedError(_locked_message(store, holder)) from None
                time.sleep(WAIT_POLL_S)
        holder = _holder()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield holder
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_json_fd(fd: int) -> dict[str, Any] | None:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"null")
    except (OSError, ValueError):
        return None


@contextmanager
def _lease(store: str, wait: bool, timeout_s: float | None) -> Iterator[dict[str, Any]]:
    fs, root = fsspec.core.url_to_fs(store)
    path = root.rstrip("/") + "/.lease.json"
    fs.makedirs(root, exist_ok=True)
    holder = _holder()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not _take_lease(fs, path, holder):
        current = _read_lease(fs, path)
        if not wait or (deadline is not None and time.monotonic() > deadline):
            raise StoreLockedError(_locked_message(store, current))
        time.sleep(WAIT_POLL_S)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(LEASE_HEARTBEAT_S):
            holder["heartbeat"] = time.time()
            with fs.open(path, "wb") as f:
                f.write(json.dumps(holder).encode())

    thread = threading.Thread(target=heartbeat, name="latentmill-lease", daemon=True)
    thread.start()
    try:
        yield holder
    finally:
        stop.set()
        thread.join()
        if (_read_lease(fs, path) or {}).get("token") == holder["token"]:
            fs.rm(path)


def _read_lease(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    try:
        return json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None


def _take_lease(fs: fsspec.AbstractFileSystem, path: str, holder: dict[str, Any]) -> bool:
    current = _read_lease(fs, path)
    if current is not None and time.time() - float(current.get("heartbeat", 0)) < LEASE_STALE_S:
        return False
    data = json.dumps(holder).encode()
    if current is None:
        try:
            with fs.open(path, "xb") as f:  # exclusive create where the backend supports it
                f.write(data)
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):
            with fs.open(path, "wb") as f:
                f.write(data)
    else:  # a stale lease: take it over
        with fs.open(path, "wb") as f:
            f.write(data)
    time.sleep(0.05)
    return (_read_lease(fs, path) or {}).get("token") == holder["token"]
