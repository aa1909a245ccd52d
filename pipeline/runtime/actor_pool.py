"""A driver-side pool of shard actors that follows the cluster: nodes may die, join or come back.

Why this shape, given what Ray offers:
- Ray's actor restarts (`max_restarts`) and task retries (`max_task_retries`) re-run a lost call on the
  *same* actor once it is restarted, which waits for room that may never come and leaves live actors
  idle meanwhile; `ray.util.ActorPool` is fixed-size and neither re-queues nor grows; Ray Data's
  autoscaling actor pools need a Dataset pipeline, where one shard is not one worker's atomic file.
  So the driver owns the queue: a shard lost with its actor goes back to the queue and to any *ready*
  actor, and the dead actor is replaced (actors run with `max_restarts=0`).
- Placement is Ray's scheduler: a requested actor that does not fit stays pending, is placed as soon
  as a node with room joins (and is the demand an autoscaler sees), and never receives work before its
  `ready()` returns. So the pool grows by itself when nodes join and shrinks when they leave.
- The target size is `--concurrency` or, with `auto`, what the live nodes can hold (re-read while
  running), never more than the shards left.
- The run never waits on actors that cannot start: if no actor is ready for `--placement-timeout`
  seconds while shards remain, it stops and says what an actor needs and what the cluster has.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

NODES_POLL_S = 2.0  # how often `auto` re-reads the live nodes
GCS_CALL_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ActorNeeds:
    """What one actor reserves on a node."""

    cpus: float
    gpus: float

    def fits(self, resources: dict[str, float]) -> int:
        """How many such actors a node with `resources` holds."""
        counts = [math.floor(resources.get("CPU", 0.0) / self.cpus + 1e-9)] if self.cpus > 0 else []
        if self.gpus > 0:
            counts.append(math.floor(resources.get("GPU", 0.0) / self.gpus + 1e-9))
        return min(counts) if counts else 0

    def describe(self) -> str:
        return f"{self.cpus:g} CPU" + (f" and {self.gpus:g} GPU" if self.gpus else "")


def cluster_nodes(timeout: float = GCS_CALL_TIMEOUT_S) -> list[dict[str, Any]] | None:
    """ray.nodes(), or None if the cluster's head does not answer within `timeout` (a GCS that is gone
    makes the call wait for a minute and then end the process; the driver must notice first)."""
    import ray

    answer: list[Any] = []
    caller = threading.Thread(target=lambda: answer.append(ray.nodes()), daemon=True)
    caller.start()
    caller.join(timeout)
    return answer[0] if answer else None


def live_nodes() -> list[dict[str, float]] | None:
    """Total resources of each live node (None: the head did not answer)."""
    nodes = cluster_nodes()
    return None if nodes is None else [dict(n.get("Resources", {})) for n in nodes if n.get("Alive")]


def placeable(needs: ActorNeeds, nodes: list[dict[str, float]]) -> int:
    """How many actors the nodes can hold in all (what `--concurrency auto` asks for)."""
    return sum(needs.fits(node) for node in nodes)


class NoActorCanStartError(RuntimeError):
    """No actor became ready within the placement timeout."""


@dataclass
class ElasticPool:
    """Actors requested up to a target; work goes only to ready ones. The caller drives the loop:
    `fill()`, hand shards to `take_ready()`, and report each finished call with `finished` or `lost`."""

    new_actor: Callable[[], Any]
    needs: ActorNeeds
    concurrency: int | None  # None: auto
    placement_timeout: float
    ready: list[Any] = field(default_factory=list)  # idle and ready for work
    starting: dict[Any, Any] = field(default_factory=dict)  # ready() ref -> actor
    busy: set[Any] = field(default_factory=set)
    node_of: dict[Any, str | None] = field(default_factory=dict)  # ready actor -> its Ray node
    _target: int = 1
    _nodes_read: float = -math.inf
    _last_ready: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return len(self.ready) + len(self.starting) + len(self.busy)

    def target(self, work_left: int) -> int:
        if self.concurrency is not None:
            wanted = self.concurrency
        else:
            now = time.monotonic()
            if now - self._nodes_read >= NODES_POLL_S:
                nodes = live_nodes()
                if nodes is not None:  # else keep the last target: the head watch decides about a silent head
                    self._target = max(1, placeable(self.needs, nodes))
                self._nodes_read = now
            wanted = self._target
        return max(0, min(wanted, work_left))

    def fill(self, work_left: int) -> None:
        """Request actors up to the target; drop idle or unstarted surplus."""
        wanted = self.target(work_left)
        while self.size < wanted:
            actor = self.new_actor()
            self.starting[actor.ready.remote()] = actor
        while self.size > wanted and (self.starting or self.ready):
            if self.starting:
                ref, actor = self.starting.popitem()
            else:
                actor = self.ready.pop()
                self.node_of.pop(actor, None)
            kill(actor)

    def take_ready(self) -> Any | None:
        if not self.ready:
            return None
        actor = self.ready.pop()
        self.busy.add(actor)
        return actor

    def wait_refs(self) -> list[Any]:
        return list(self.starting)

    def on_ready_ref(self, ref: Any) -> dict[str, Any] | None:
        """A ready() call finished: the actor joins the ready ones (returns its start info), or, if its
        node died while it started, it is dropped (a new one is requested by the next fill). An error
        of the actor's own making (e.g. a batch that does not fit) is raised."""
        import ray
        from ray.exceptions import RayActorError

        actor = self.starting.pop(ref)
        try:
            info = ray.get(ref)
        except RayActorError:
            kill(actor)
            return None
        self.ready.append(actor)
        self.node_of[actor] = info.get("node")
        self._last_ready = time.monotonic()
        return info

    def finished(self, actor: Any) -> None:
        """A call finished on a healthy actor: it is ready for the next shard."""
        self.busy.discard(actor)
        self.ready.append(actor)
        self._last_ready = time.monotonic()

    def lost(self, actor: Any) -> None:
        """An actor died (or its state is suspect): dropped; the next fill requests a replacement."""
        self.busy.discard(actor)
        self.node_of.pop(actor, None)
        kill(actor)

    def node_alive(self, actor: Any) -> bool:
        """Whether the node the actor was placed on is still alive (unknown: assumed alive)."""
        node, nodes = self.node_of.get(actor), cluster_nodes()
        return node is None or nodes is None or any(n.get("NodeID") == node and n.get("Alive") for n in nodes)

    def check_progress(self) -> None:
        """Raise if no actor has been ready or busy for the placement timeout."""
        if self.ready or self.busy:
            self._last_ready = time.monotonic()
            return
        if time.monotonic() - self._last_ready > self.placement_timeout:
            nodes = live_nodes() or []
            biggest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
            raise NoActorCanStartError(
                f"no actor could start within --placement-timeout {self.placement_timeout:g} s: each needs "
                f"{self.needs.describe()}; the cluster has {len(nodes)} live node(s), the largest with "
                f"{biggest.get('CPU', 0.0):g} CPU and {biggest.get('GPU', 0.0):g} GPU. Lower --cpus-per-actor or "
                "--num-gpus, add nodes, or raise --placement-timeout; finished shards are kept for a rerun")

    def close(self) -> None:
        for actor in [*self.ready, *self.starting.values(), *self.busy]:
            kill(actor)
        self.ready, self.starting, self.busy = [], {}, set()


def kill(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already gone with its node
        pass
