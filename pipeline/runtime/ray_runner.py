"""The Ray edge of `latentmill invert`: shards over a pool of actors that follows the cluster.

Why Ray Core actors rather than a Ray Data pipeline: the shard is the unit of output and of resume
(one atomic Parquet file plus a manifest entry per input shard), and a shard must be processed
by one worker so its file is written once. Each actor holds one replica of G, E, prior, perceptual
and identity models (loaded once in its constructor) and pins `--num-gpus`; inside a shard, inputs
are read and decoded on CPU threads ahead of the batches. The pool (pipeline/runtime/actor_pool.py)
hands shards only to ready actors, re-queues the shards of actors lost with their node, and grows
when nodes join; a shard's own failure is retried up to `--max-retries` times, then recorded as failed
(pipeline/invert/shard_book.py). If the cluster's head stops answering, the run stops with a message
saying so; finished shards are kept and a rerun resumes.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any, Callable

from pipeline.progress import progress_bar

from pipeline.data.sources import ShardSpec
from pipeline.errors import LatentmillError
from pipeline.invert.config import InvertConfig
from pipeline.runtime.progress_board import ProgressBoard
from pipeline.runtime.ray_address import gcs_answers
from pipeline.runtime.ray_init import init_ray
from pipeline.invert.shard_book import RunSummary, ShardBook
from pipeline.store.writer import ShardWriter

PROGRESS_POLL_S = 0.5  # how often the driver reads the rows finished inside shards in flight
HEAD_PROBE_S = 2.0  # how often the driver checks that the cluster's head (its GCS) answers
MAX_NODE_LOSSES = 5  # a shard lost with its node this often is a failure after all (it may be the cause)
HEAD_LOST_S = 12.0  # no answer for this long: the cluster is gone (Ray itself gives up after 60 s, abruptly)

# what every shard actor runs with, merged by Ray into the job's runtime env (working_dir, pip) rather than
# replacing it
ACTOR_RUNTIME_ENV = {"env_vars": {"PYTHONWARNINGS": "ignore::UserWarning"}}


class RayClusterLostError(LatentmillError):
    """The cluster's head stopped answering during a run."""


class HeadWatch:
    """Probes the GCS between waits; raises RayClusterLostError once it has not answered for HEAD_LOST_S."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.last_probe = time.monotonic()
        self.silent_since: float | None = None

    def check(self, resume_hint: str) -> None:
        now = time.monotonic()
        if now - self.last_probe < HEAD_PROBE_S:
            return
        self.last_probe = now
        alive, why = gcs_answers(self.address, timeout=1.0)
        if alive:
            self.silent_since = None
            return
        self.silent_since = self.silent_since or now
        if now - self.silent_since >= HEAD_LOST_S:
            raise RayClusterLostError(f"lost the Ray cluster: its head at {self.address} has not answered for "
                                      f"{HEAD_LOST_S:g} s ({why}). {resume_hint}")


class BoardReport:
    """What an actor calls to report progress: forwards to the board actor, without waiting."""

    def __init__(self, board: Any) -> None:
        self.board = board

    def __call__(self, shard: str, rows: int, stage: str | None, ok: int = 0) -> None:
        self.board.report.remote(shard, rows, stage, ok)


def idle_note(config: InvertConfig, cluster: Any, shards: int) -> str | None:
    """A line when a fixed --concurrency leaves much of the cluster idle (or the shards do): what would use it."""
    if cluster is None or config.concurrency == "auto" or config.num_gpus > 0:
        return None
    room = int(cluster.cpus / config.cpus_per_actor)
    actors = min(int(config.concurrency), shards)
    if room <= actors:
        return None
    head = f"{actors} actor{'s' if actors != 1 else ''} on {cluster.cpus:g} CPUs"
    if actors < int(config.concurrency):
        return f"{head} ({shards} shard{'s' if shards != 1 else ''} to run): a smaller --shard-size gives every actor work"
    return f"{head} (--concurrency {config.concurrency}): --concurrency auto runs {room}"


def progress_bars(config: Any, shards: list[Any], total_rows: int | None = None) -> tuple[Any, Any]:
    """A bar of shards and one of images: `total_rows` where given, else known only for folders without
    --faces all."""
    bar = progress_bar(total=len(shards), desc="shards", unit="shard", enabled=config.progress, position=0)
    if total_rows is None and all(getattr(spec, "layout", None) == "folder" for spec in shards) \
            and getattr(config, "faces", None) != "all":
        total_rows = sum(len(s.members) for s in shards)
    image_bar = progress_bar(total=total_rows, desc="images", unit="img", enabled=config.progress, position=1)
    return bar, image_bar


def placed(processor_class: type) -> type:
    """The processor, told on start which Ray node it runs on (recorded with each shard, so a run's spread over
    the cluster is visible); the processor itself knows nothing of Ray."""
    import ray

    class Placed(processor_class):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.node = ray.get_runtime_context().get_node_id()

    Placed.__name__ = Placed.__qualname__ = processor_class.__name__  # Ray names the actor (ray::ShardProcessor)
    return Placed


def run_shards(config: Any, shards: list[Any], summary: RunSummary, book: ShardBook,
               shard_writer: ShardWriter | None, *, processor_class: type | None = None, models: Any = None,
               precisions: dict[str, str] | None = None, recipe_models: dict[str, str | None] | None = None,
               started: float | None = None, actor_args: Callable[[Any, Any], tuple] | None = None,
               total_rows: int | None = None) -> RunSummary:
    """Process `shards` on a pool of `config.concurrency` actors; fills and returns `summary`.

    processor_class: the actor's class, ShardProcessor by default (a subclass may add behaviour,
    e.g. fault injection in the tests). models: the driver's loaded models, put in Ray's object store
    once and handed to every actor (and replacement). started: when the run began (perf_counter),
    for the start-up time in the summary (default: now, so it counts Ray and the actors only).
    actor_args: for another kind of work (augment's units), the processor's arguments given (the models'
    object ref, the progress report); its processor has `ready()` and `process(unit, attempt)` like
    ShardProcessor. total_rows: the images bar's total, where the caller knows it."""
    started = time.perf_counter() if started is None else started
    # no runtime_env in ray.init: inside `ray job submit` it would replace the job's own, and Ray would release
    # the job's working_dir while this driver still imports from it; the actors' env_vars merge with the job's
    cluster = init_ray(config.address, verbose=config.verbose)
    idle = idle_note(config, cluster, len(shards))
    if idle:
        print(f"latentmill: {idle}", file=sys.stderr)
    import ray
    from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.runtime.actor_pool import ActorNeeds, ElasticPool, NoActorCanStartError
    from pipeline.invert.shard_processor import REPLACE, STOP, ShardProcessor, after_failure

    Actor = ray.remote(num_gpus=config.num_gpus, num_cpus=config.cpus_per_actor, max_restarts=0,
                       runtime_env=ACTOR_RUNTIME_ENV)(placed(processor_class or ShardProcessor))
    models_ref = ray.put(models) if models is not None else None
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    board = ray.remote(num_cpus=0)(ProgressBoard).options(scheduling_strategy=here).remote()
    report = BoardReport(board)
    head = HeadWatch(ray.get_runtime_context().gcs_address)
    resume_hint = "Finished shards are kept in the store: run the same command again, on a live cluster, to resume."

    if actor_args is None:
        def actor_args(models_ref: Any, report: Any) -> tuple:
            return config, shard_writer, None, models_ref, report, precisions, recipe_models
    pool = ElasticPool(
        new_actor=lambda: Actor.remote(*actor_args(models_ref, report)),
        needs=ActorNeeds(config.cpus_per_actor, config.num_gpus),
        concurrency=None if config.concurrency == "auto" else int(config.concurrency),
        placement_timeout=config.placement_timeout)
    queue: deque[tuple[ShardSpec, int]] = deque((spec, 1) for spec in shards)
    running: dict[Any, tuple[Any, ShardSpec, int]] = {}
    node_losses: dict[str, int] = {}  # shard -> times its actor was lost with its node
    bar = image_bar = None
    finished_rows = 0  # rows of finished shards; the board adds the rows of shards in flight
    start = time.perf_counter()
    try:
        while queue or running:
            head.check(resume_hint)
            pool.fill(len(queue) + len(running))
            while queue and (actor := pool.take_ready()) is not None:
                spec, attempt = queue.popleft()
                board.restart.remote(spec.shard_id)
                running[actor.process.remote(spec, attempt)] = (actor, spec, attempt)
            done, _ = ray.wait([*running, *pool.wait_refs()], num_returns=1, timeout=PROGRESS_POLL_S)
            head.check(resume_hint)
            if not done:
                pool.check_progress()
                if image_bar is not None and config.progress:
                    show_in_flight(board, image_bar, finished_rows, summary, GetTimeoutError, RayActorError)
                continue
            ref = done[0]
            if ref not in running:  # an actor finished starting
                info = pool.on_ready_ref(ref)
                if info is not None:
                    book.started(info)
                    if bar is None:  # the first ready actor: the run starts
                        if info["note"]:
                            print(f"latentmill: {info['note']}", file=sys.stderr)
                        summary.batch_size = info["batch_size"]
                        summary.startup_seconds = time.perf_counter() - started
                        start = time.perf_counter()
                        bar, image_bar = progress_bars(config, shards, total_rows)
                continue
            actor, spec, attempt = running.pop(ref)
            try:
                entry = ray.get(ref)
            except RayActorError as exc:  # the actor's process or node is gone: a replacement is requested
                lost_with_node = isinstance(exc, ActorUnavailableError) or not pool.node_alive(actor)
                pool.lost(actor)
                node_losses[spec.shard_id] = node_losses.get(spec.shard_id, 0) + lost_with_node
                if lost_with_node and node_losses[spec.shard_id] <= MAX_NODE_LOSSES:
                    book.requeued(spec)  # costs only time: not one of the shard's retries
                    queue.append((spec, attempt))
                elif book.failed(spec, attempt, exc, worker_died=True):
                    queue.append((spec, attempt + 1))
                elif bar is not None:
                    bar.update(1)
                continue
            except RayTaskError as exc:  # the shard's own failure, raised inside the actor
                action = after_failure(exc.cause)
                if action == STOP:
                    raise exc.cause from None
                if action == REPLACE:  # the actor's state is suspect (e.g. out of memory): a fresh one
                    pool.lost(actor)
                else:
                    pool.finished(actor)
                if book.failed(spec, attempt, exc.cause if action == REPLACE else exc, worker_died=False):
                    queue.append((spec, attempt + 1))
                elif bar is not None:
                    bar.update(1)
                continue
            pool.finished(actor)
            book.done(entry)
            board.restart.remote(spec.shard_id)
            finished_rows += entry["rows"]
            if bar is not None:
                bar.update(1)
                show_rows(image_bar, finished_rows, summary.ok, summary.errors, None)
    except RayTaskError as exc:  # an actor could not start (e.g. an explicit batch that does not fit)
        if isinstance(exc.cause, LatentmillError):
            raise exc.cause from None
        raise
    except NoActorCanStartError as exc:
        raise LatentmillError(str(exc)) from None
    finally:
        for b in (bar, image_bar):
            if b is not None:
                b.close()
        if not isinstance(sys.exc_info()[1], RayClusterLostError):  # a dead head takes its actors with it
            pool.close()
            ray.kill(board, no_restart=True)
    summary.seconds = time.perf_counter() - start
    return summary


def show_in_flight(board: Any, image_bar: Any, finished_rows: int, summary: RunSummary, *errors: type) -> None:
    """The images bar with the rows finished inside shards in flight (skipped if the board is slow or gone)."""
    import ray

    try:
        in_flight, ok, stage = ray.get(board.read.remote(), timeout=PROGRESS_POLL_S)
    except errors:
        return
    show_rows(image_bar, finished_rows + in_flight, summary.ok + ok, summary.errors + in_flight - ok, stage)


def show_rows(image_bar: Any, rows: int, ok: int, errors: int, stage: str | None) -> None:
    """The images bar at `rows` finished rows, counting ok and error rows as they finish."""
    image_bar.n = rows
    image_bar.set_postfix(ok=ok, errors=errors, **({"stage": stage} if stage else {}), refresh=False)
    image_bar.refresh()
