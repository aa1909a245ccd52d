"""Which Ray a job joins, found without hanging: the address, where it came from, and whether it answers.

Left to itself, `ray.init` takes its address from RAY_ADDRESS, else from the record the last `ray start`
on this machine left in Ray's temp dir (`ray_current_cluster`), and retries an unreachable GCS for many
minutes, silently, even when the record is a long-dead cluster's. latentmill decides first:
- `--address` (or RAY_ADDRESS): that cluster; if its GCS does not answer within a few seconds the job
  stops, naming the address and where it came from;
- neither: the recorded cluster if its GCS answers, else an embedded Ray, saying that the record was
  stale; `--address auto` insists on the recorded cluster, `--address local` on an embedded Ray.
The probe is one gRPC call to the GCS with a deadline: any answer of the GCS's service (even "not
authenticated") means a live cluster; a refused or silent port, or another server, does not.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

PROBE_TIMEOUT_S = 2.0
PROBE_ATTEMPTS = 3  # a GCS that is just starting gets a few seconds


@dataclass(frozen=True)
class RayTarget:
    """Where to run: `address` None means an embedded Ray; `source` says how it was chosen."""

    address: str | None
    source: str
    note: str | None = None  # said to the user before starting (e.g. a stale record was ignored)

    @property
    def embedded(self) -> bool:
        return self.address is None


class RayUnreachableError(ConnectionError):
    """The cluster a job was told to join does not answer."""


def ray_record_file() -> Path:
    """Ray's record of the last cluster `ray start` made on this machine (what `ray.init()` reads)."""
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(None))


def read_record() -> tuple[str | None, Path]:
    path = ray_record_file()
    try:
        text = path.read_text().strip()
    except OSError:
        return None, path
    return text or None, path


def gcs_answers(address: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """(whether a Ray GCS answers at host:port, why not). A `ray://` client address is checked by TCP."""
    if address.startswith("ray://"):
        host, _, port = address[len("ray://"):].rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                return True, ""
        except (OSError, ValueError) as exc:
            return False, str(exc) or type(exc).__name__
    import grpc

    with grpc.insecure_channel(address) as channel:
        # NodeInfoGcsService.GetClusterId is the first call every Ray client makes; its empty request is
        # valid protobuf, so any status from the service itself proves a GCS is there.
        call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId",
                                   request_serializer=lambda body: body, response_deserializer=lambda body: body)
        try:
            call(b"", timeout=timeout)
            return True, ""
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return True, ""
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return False, f"no answer within {timeout:g} s"
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return False, "something answers there, but not a Ray GCS"
            return False, (exc.details() or code.name).splitlines()[0][:200]


def wait_for_gcs(address: str, attempts: int = PROBE_ATTEMPTS) -> tuple[bool, str]:
    """gcs_answers, tried `attempts` times a second apart (a GCS restarting or still starting)."""
    why = ""
    for attempt in range(attempts):
        alive, why = gcs_answers(address)
        if alive:
            return True, ""
        if attempt + 1 < attempts:
            time.sleep(1.0)
    return False, why


def choose_ray(address: str | None) -> RayTarget:
    """Where a job runs: see the module docstring. Raises RayUnreachableError for a cluster that
    was asked for and does not answer."""
    if address is None and os.environ.get("RAY_ADDRESS"):
        address, source = os.environ["RAY_ADDRESS"], "$RAY_ADDRESS"
        if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
            source = "$RAY_ADDRESS, set by `ray job submit`"
    else:
        source = "--address"
    if address == "local":
        return RayTarget(None, "--address local")
    if address is None or address == "auto":
        recorded, path = read_record()
        if recorded is None:
            if address == "auto":
                raise RayUnreachableError(f"--address auto: no Ray cluster was started on this machine ({path} is "
                                          "missing); start one with `ray start --head`, or leave --address out for "
                                          "an embedded Ray")
            return RayTarget(None, "no cluster given or recorded")
        alive, why = gcs_answers(recorded)
        if alive:
            return RayTarget(recorded, f"the cluster recorded in {path}")
        if address == "auto":
            raise RayUnreachableError(f"the Ray cluster recorded in {path} ({recorded}) does not answer: {why}")
        return RayTarget(None, "no live cluster given or recorded",
                         note=f"{path} records a Ray cluster at {recorded} that no longer answers ({why}); "
                              "starting an embedded Ray instead (give --address to join a cluster)")
    alive, why = wait_for_gcs(address)
    if not alive:
        raise RayUnreachableError(f"cannot reach a Ray cluster at {address} (from {source}): {why}. Is its head "
                                  "running (`ray status` there)? Is the address its GCS port (6379 by default), "
                                  "not the dashboard's?")
    return RayTarget(address, source)
