"""Starting (or joining) Ray for a latentmill job: bounded, said in one line, and quiet unless --verbose.

- Where: pipeline/runtime/ray_address.py decides (a given address that does not answer stops the job
  within seconds; a dead cluster's leftover record means an embedded Ray, said so).
- What: one line names the cluster joined (or the embedded Ray) and what it holds: nodes, CPUs, GPUs.
- Quiet: Ray prints its banners, its workers' output and the raylet's own reports (a worker killed, a
  node marked dead, with twenty lines of state dump) straight to the terminal. Without --verbose, its
  loggers are raised to errors, workers' output is not forwarded (a shard's failure is in the
  manifest), and the raylet's reports of lost workers and nodes, which the pool handles, are filtered
  through Ray's own RAY_DEDUP_LOGS_SKIP_REGEX (read when Ray is imported, so it is set before that).
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from pipeline.errors import LatentmillError
from pipeline.runtime.ray_address import RayTarget, RayUnreachableError, choose_ray

# The raylet's reports that the actor pool handles itself (re-queued shards, replaced actors).
HANDLED_RAY_REPORTS = ("A worker died or was killed", "Raylet is terminated", "has been marked dead",
                       "retries remaining", "The node with node id")
# A join that passed the probe still gives up within seconds rather than Ray's many minutes.
BOUNDED_JOIN_ENV = {"RAY_py_gcs_connect_timeout_s": "20", "RAY_gcs_rpc_server_connect_timeout_s": "5"}


class RayJoinError(LatentmillError):
    """The Ray cluster to run on cannot be reached."""


@dataclass(frozen=True)
class RayCluster:
    """The Ray this job runs on, as the driver sees it at start."""

    target: RayTarget
    nodes: int
    cpus: float
    gpus: float

    def describe(self) -> str:
        holds = f"{self.nodes} node{'s' if self.nodes != 1 else ''}, {self.cpus:g} CPUs, {self.gpus:g} GPUs"
        if self.target.embedded:
            return f"started an embedded Ray ({holds})"
        return f"joined the Ray cluster at {self.target.address} (from {self.target.source}): {holds}"


def prepare_ray_environment(verbose: bool) -> None:
    """The environment Ray reads at import and at connect time (user settings win)."""
    if not verbose:
        os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", "|".join(HANDLED_RAY_REPORTS))
    for name, value in BOUNDED_JOIN_ENV.items():
        os.environ.setdefault(name, value)


@contextmanager
def _quiet(logger_name: str, enabled: bool) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    if enabled:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def live_resources() -> tuple[int, float, float]:
    """(live nodes, CPUs, GPUs) of the cluster now."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n.get("Resources", {}).get("CPU", 0.0) for n in nodes)
    gpus = sum(n.get("Resources", {}).get("GPU", 0.0) for n in nodes)
    return len(nodes), cpus, gpus


def init_ray(address: str | None, *, verbose: bool = False, say: bool = True, **kwargs) -> RayCluster | None:
    """ray.init for a job: the cluster chosen by choose_ray, or an embedded Ray; says which in one line.
    A no-op (None) when Ray is already up in this process."""
    prepare_ray_environment(verbose)
    import ray

    if ray.is_initialized():
        return None
    try:
        target = choose_ray(address)
    except RayUnreachableError as exc:
        raise RayJoinError(str(exc)) from None
    if target.note and say:
        print(f"latentmill: {target.note}", file=sys.stderr)
    with _quiet("ray", not verbose):
        try:
            if target.embedded:
                kwargs.setdefault("include_dashboard", False)
            ray.init(address=target.address or "local", configure_logging=False, log_to_driver=verbose, **kwargs)
        except ConnectionError as exc:
            raise RayJoinError(f"could not join the Ray cluster at {target.address} (from {target.source}): "
                               f"{str(exc).splitlines()[0]}") from None
    cluster = RayCluster(target, *live_resources())
    if say:
        print(f"latentmill: {cluster.describe()}", file=sys.stderr)
    return cluster
