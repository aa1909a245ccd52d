"""The Ray edge of `latentmill invert`: an actor pool over shards, with retries and failure accounting.

Why Ray Core actors rather than a Ray Data pipeline: the shard is the unit of output and of resume
(one atomic Parquet file plus a manifest entry per input shard), and a shard must be processed
by one worker so its file is written once. Each actor holds one replica of G, E, prior, perceptual
and identity models (loaded once in its constructor) and pins `--num-gpus`; inside a shard, inputs
are read and decoded on CPU threads ahead of the batches. The driver keeps every actor busy,
replaces an actor whose process died, retries a shard up to `--max-retries` times, then records it
as failed (pipeline/runtime/shard_book.py).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any

from tqdm.auto import tqdm

from pipeline.data.sources import ShardSpec
from pipeline.errors import LatentmillError
from pipeline.runtime.config import InvertConfig
from pipeline.runtime.progress_board import ProgressBoard
from pipeline.runtime.ray_init import init_ray
from pipeline.runtime.shard_book import RunSummary, ShardBook
from pipeline.store.writer import ShardWriter

PROGRESS_POLL_S = 0.5  # how often the driver reads the rows finished inside shards in flight


class BoardReport:
    """What an actor calls to report progress: forwards to the board actor, without waiting."""

    def __init__(self, board: Any) -> None:
        self.board = board

    def __call__(self, shard: str, rows: int, stage: str | None) -> None:
        self.board.report.remote(shard, rows, stage)


def progress_bars(config: InvertConfig, shards: list[ShardSpec]) -> tuple[tqdm, tqdm]:
    """A bar of shards and one of images (its total known only for folders without --faces all)."""
    bar = tqdm(total=len(shards), desc="shards", unit="shard", disable=not config.progress, position=0)
    known = all(spec.layout == "folder" for spec in shards) and config.faces != "all"
    image_bar = tqdm(total=sum(len(s.members) for s in shards) if known else None, desc="images", unit="img",
                     disable=not config.progress, position=1)
    return bar, image_bar


def run_shards(config: InvertConfig, shards: list[ShardSpec], summary: RunSummary, book: ShardBook,
               shard_writer: ShardWriter, *, processor_class: type | None = None, models: Any = None,
               precisions: dict[str, str] | None = None, recipe_models: dict[str, str | None] | None = None,
               started: float | None = None) -> RunSummary:
    """Process `shards` on a pool of `config.concurrency` actors; fills and returns `summary`.

    processor_class: the actor's class, ShardProcessor by default (a subclass may add behaviour,
    e.g. fault injection in the tests). models: the driver's loaded models, put in Ray's object store
    once and handed to every actor (and replacement). started: when the run began (perf_counter),
    for the start-up time in the summary (default: now, so it counts Ray and the actors only)."""
    started = time.perf_counter() if started is None else started
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    from pipeline.runtime.shard_processor import ShardProcessor

    init_ray(config.address, verbose=config.verbose,
             runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore::UserWarning"}})
    Actor = ray.remote(num_gpus=config.num_gpus, num_cpus=config.cpus_per_actor)(processor_class or ShardProcessor)
    models_ref = ray.put(models) if models is not None else None
    board = ray.remote(num_cpus=0)(ProgressBoard).remote()
    report = BoardReport(board)

    def new_actor() -> Any:
        return Actor.remote(config, shard_writer, None, models_ref, report, precisions, recipe_models)

    size = min(config.concurrency, max(len(shards), 1))
    actors = [new_actor() for _ in range(size)]
    try:
        started_actors = ray.get([actor.ready.remote() for actor in actors])
    except ray.exceptions.RayTaskError as exc:  # the actors cannot work (e.g. the batch does not fit)
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if isinstance(exc.cause, LatentmillError):
            raise exc.cause from None
        raise
    for ready in started_actors:
        book.started(ready)
    if started_actors[0]["note"]:
        print(f"latentmill: {started_actors[0]['note']}", file=sys.stderr)
    summary.batch_size = started_actors[0]["batch_size"]
    summary.startup_seconds = time.perf_counter() - started
    queue: deque[tuple[ShardSpec, int]] = deque((spec, 1) for spec in shards)
    running: dict[Any, tuple[Any, ShardSpec, int]] = {}
    idle = list(actors)
    start = time.perf_counter()
    bar, image_bar = progress_bars(config, shards)
    finished_rows = 0  # rows of finished shards; the board adds the rows of shards in flight
    while queue or running:
        while queue and idle:
            actor = idle.pop()
            spec, attempt = queue.popleft()
            board.restart.remote(spec.shard_id)
            running[actor.process.remote(spec, attempt)] = (actor, spec, attempt)
        done, _ = ray.wait(list(running), num_returns=1, timeout=PROGRESS_POLL_S if config.progress else None)
        if not done:  # nothing finished yet: show the rows finished inside the shards in flight
            in_flight, stage = ray.get(board.read.remote())
            image_bar.n = finished_rows + in_flight
            image_bar.set_postfix(stage=stage, ok=summary.ok, errors=summary.errors, refresh=False)
            image_bar.refresh()
            continue
        actor, spec, attempt = running.pop(done[0])
        try:
            entry = ray.get(done[0])
        except (RayActorError, ActorDiedError, ActorUnavailableError, ray.exceptions.RayTaskError) as exc:
            died = isinstance(exc, (RayActorError, ActorDiedError, ActorUnavailableError))
            shard_failed = isinstance(exc, ray.exceptions.RayTaskError) and type(exc.cause).__name__ == "ShardFailure"
            if died or shard_failed:  # the worker process is gone, or its state is suspect: a fresh one
                ray.kill(actor, no_restart=True)
                actor = new_actor()
            idle.append(actor)
            if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, LatentmillError) \
                    and type(exc.cause).__name__ == "StoreClaimLostError":
                raise exc.cause from None
            if book.failed(spec, attempt, exc.cause if shard_failed else exc, worker_died=died):
                queue.append((spec, attempt + 1))
            else:
                bar.update(1)
            continue
        idle.append(actor)
        book.done(entry)
        bar.update(1)
        board.restart.remote(spec.shard_id)
        finished_rows += entry["rows"]
        image_bar.n = finished_rows
        image_bar.set_postfix(ok=summary.ok, errors=summary.errors, refresh=False)
        image_bar.refresh()
    bar.close()
    image_bar.close()
    summary.seconds = time.perf_counter() - start
    for actor in idle:  # every live actor is idle now; replaced ones were killed when replaced
        ray.kill(actor, no_restart=True)
    ray.kill(board, no_restart=True)
    return summary
