"""One writer per store: a run claims the store before any work and holds it to the end.

- Local disks: an OS lock (`fcntl.flock`) on STORE/.lock. The kernel releases it when the holder's
  process ends, however it ends, so a killed run never leaves a stale lock behind. The file also
  says who holds it (host, pid, start time, a random token) for the message a second run prints
  and for the workers that write on the holder's behalf.
- Object stores and other fsspec backends: a lease object STORE/.lease.json, created only if absent
  (exclusive create where the backend has one), renewed by a heartbeat thread every
  `LEASE_HEARTBEAT_S` only while it still holds the holder's token; a lease whose heartbeat is older
  than `LEASE_STALE_S` belongs to a dead run and is taken over. A heartbeat that finds another token,
  or cannot renew for `LEASE_STALE_S - LEASE_HEARTBEAT_S`, marks the claim lost: every later write
  through it raises StoreClaimLostError, saying so, instead of writing into a store another run now
  owns. Where a backend offers no exclusive create, two runs starting within the same second can
  both take the lease; each then re-reads it after writing and the loser gives up, which narrows
  that window to the backend's read-after-write delay (documented in docs/inverting.md and schemas/README.md).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from pipeline.errors import LatentmillError
from pipeline.store import layout
from pipeline.uris import is_local, read_if_exists

LEASE_HEARTBEAT_S = 30.0
LEASE_STALE_S = 180.0
WAIT_POLL_S = 2.0


class StoreLockedError(LatentmillError, RuntimeError):
    """Another run holds the store."""


class StoreClaimLostError(LatentmillError, RuntimeError):
    """This run's claim on the store was lost (another run took the lease over); it must stop writing."""


@dataclass
class StoreClaim:
    """What a run holds while it writes a store: its holder record, and whether it still holds it."""

    store: str
    holder: dict[str, Any]
    lost: threading.Event = field(default_factory=threading.Event)
    why_lost: str = ""

    @property
    def token(self) -> str:
        return self.holder["token"]

    def check(self) -> None:
        """Raise StoreClaimLostError if the claim was lost: nothing more may be written."""
        if self.lost.is_set():
            raise StoreClaimLostError(f"this run lost its claim on {self.store} ({self.why_lost}); it stopped "
                                      "writing. Rerun to resume once the other run is done.")

    def __getitem__(self, key: str) -> Any:  # the holder's fields: claim["pid"]
        return self.holder[key]


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                           time.gmtime()),
            "token": uuid.uuid4().hex, "heartbeat": time.time()}


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another run (holder unknown)"
    return f"the run of pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started_at')}"


def _locked_message(store: str, holder: dict[str, Any] | None, wait_hint: str) -> str:
    return (f"{store} is being written by {_describe(holder)}. Wait for it to finish{wait_hint}, or use another "
            "store.")


@contextmanager
def claim_store(store: str, *, wait: bool = False, timeout_s: float | None = None,
                wait_hint: str = " (or rerun with --wait)") -> Iterator[StoreClaim]:
    """Hold the store for the duration of the block; raise StoreLockedError if another run has it."""
    if is_local(store):
        with _local_lock(Path(store.removeprefix("file://")).expanduser(), store, wait, timeout_s, wait_hint) as claim:
            yield claim
    else:
        with _lease(store, wait, timeout_s, wait_hint) as claim:
            yield claim


def holds_claim(store: str, token: str) -> bool:
    """True if the run with `token` still holds `store` (what a worker checks before writing for it)."""
    name = layout.LOCK if is_local(store) else layout.LEASE
    try:
        current = json.loads(read_if_exists(layout.join(store, name)) or b"null")
    except ValueError:
        return False
    return isinstance(current, dict) and current.get("token") == token


class StoreLinkError(LatentmillError, ValueError):
    """A symlink stands where a store's own file or folder belongs: writing through it would change a
    file outside the store."""


def _link_message(store: str, name: str, path: Path) -> str:
    return (f"{store}: {name} is a symlink (to {os.readlink(path)}), where the store's own "
            f"{'folder' if '.' not in name else 'file'} belongs; latentmill writes only inside a store and "
            "never through links. Remove the link (or use another --output) and rerun.")


def refuse_links(root: Path, store: str) -> None:
    """Refuse a store whose own entries (its lock, records and folders) are symlinks."""
    for name in layout.OWN_ENTRIES:
        path = root / name
        if path.is_symlink():
            raise StoreLinkError(_link_message(store, name, path))


@contextmanager
def _local_lock(root: Path, store: str, wait: bool, timeout_s: float | None, wait_hint: str) -> Iterator[StoreClaim]:
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    refuse_links(root, store)
    path = root / layout.LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if path.is_symlink():
            raise StoreLinkError(_link_message(store, layout.LOCK, path)) from None
        raise exc
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_json_fd(fd)
                if not wait or (deadline is not None and time.monotonic() > deadline):
                    raise StoreLockedError(_locked_message(store, holder, wait_hint)) from None
                time.sleep(WAIT_POLL_S)
        holder = _holder()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield StoreClaim(store, holder)
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
def _lease(store: str, wait: bool, timeout_s: float | None, wait_hint: str) -> Iterator[StoreClaim]:
    fs, root = fsspec.core.url_to_fs(store)
    path = layout.join(root, layout.LEASE)
    fs.makedirs(root, exist_ok=True)
    holder = _holder()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not _take_lease(fs, path, holder):
        current = _read_lease(fs, path)
        if not wait or (deadline is not None and time.monotonic() > deadline):
            raise StoreLockedError(_locked_message(store, current, wait_hint))
        time.sleep(WAIT_POLL_S)
    claim = StoreClaim(store, holder)
    stop = threading.Event()
    thread = threading.Thread(target=_heartbeat, args=(fs, path, claim, stop), name="latentmill-lease", daemon=True)
    thread.start()
    try:
        yield claim
    finally:
        stop.set()
        thread.join()
        if (_read_lease(fs, path) or {}).get("token") == holder["token"]:
            fs.rm(path)


def _heartbeat(fs: fsspec.AbstractFileSystem, path: str, claim: StoreClaim, stop: threading.Event,
               every_s: float | None = None, give_up_s: float | None = None) -> None:
    """Renew the lease while it is still ours; mark the claim lost when it is not, or when renewing has
    failed for longer than the lease stays fresh (another run may take it over then)."""
    every_s = LEASE_HEARTBEAT_S if every_s is None else every_s
    give_up_s = LEASE_STALE_S - LEASE_HEARTBEAT_S if give_up_s is None else give_up_s
    last_renewed = time.monotonic()
    while not stop.wait(every_s):
        try:
            current = _read_lease(fs, path)
            if (current or {}).get("token") != claim.token:
                claim.why_lost = f"the lease now names {_describe(current)}"
                claim.lost.set()
                return
            claim.holder["heartbeat"] = time.time()
            with fs.open(path, "wb") as f:
                f.write(json.dumps(claim.holder).encode())
            last_renewed = time.monotonic()
        except Exception as exc:  # storage trouble: say it, retry at the next beat, give up in time
            print(f"latentmill: could not renew the lease on {claim.store} ({type(exc).__name__}: {exc}); retrying",
                  file=sys.stderr)
            if time.monotonic() - last_renewed > give_up_s:
                claim.why_lost = f"the lease could not be renewed for {give_up_s:.0f} s"
                claim.lost.set()
                return


def _read_lease(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    try:
        value = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _take_lease(fs: fsspec.AbstractFileSystem, path: str, holder: dict[str, Any]) -> bool:
    current = _read_lease(fs, path)
    if current is not None and time.time() - float(current.get("heartbeat") or 0) < LEASE_STALE_S:
        return False
    data = json.dumps(holder).encode()
    if current is None and not fs.exists(path):
        try:
            with fs.open(path, "xb") as f:  # exclusive create where the backend supports it
                f.write(data)
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):
            with fs.open(path, "wb") as f:
                f.write(data)
    else:  # a stale (or unreadable) lease: take it over
        with fs.open(path, "wb") as f:
            f.write(data)
    time.sleep(0.05)
    return (_read_lease(fs, path) or {}).get("token") == holder["token"]
