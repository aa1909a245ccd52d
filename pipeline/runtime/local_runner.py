"""Running a store's shards in this process, one after another, without Ray.

The same shard processor, the same accounting (pipeline/invert/shard_book.py) and the same
orchestration (jobs/invert.py) as the Ray runner; only the pool is missing. For small jobs where
starting Ray costs more than the work, and for tests of everything around the pool.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from pipeline.runtime.ray_runner import progress_bars, show_rows
from pipeline.invert.shard_book import RunSummary, ShardBook
from pipeline.store.writer import ShardWriter


def run_shards_here(config: Any, shards: list[Any], summary: RunSummary, book: ShardBook,
                    shard_writer: ShardWriter | None, *, processor_class: type | None = None, models: Any = None,
                    precisions: dict[str, str] | None = None, recipe_models: dict[str, str | None] | None = None,
                    started: float | None = None, actor_args: Callable[[Any, Any], tuple] | None = None,
                    total_rows: int | None = None) -> RunSummary:
    """Process `shards` here with one processor (a fresh one after a shard failure); fills `summary`.
    actor_args, total_rows: as for the Ray runner (pipeline/runtime/ray_runner.run_shards)."""
    from pipeline.invert.shard_processor import REPLACE, STOP, ShardProcessor, after_failure

    started = time.perf_counter() if started is None else started
    cls = processor_class or ShardProcessor

    finished_rows = 0
    bars: list[Any] = []

    def report(shard: str, rows: int, stage: str | None, ok: int = 0) -> None:
        if bars:
            show_rows(bars[1], finished_rows + rows, summary.ok + ok, summary.errors + rows - ok, stage)

    def new_processor():
        args = actor_args(models, None) if actor_args is not None else \
            (config, shard_writer, None, models, None, precisions, recipe_models)  # GPU with --num-gpus
        processor = cls(*args)
        processor.progress = report if config.progress else None
        book.started(processor.ready())
        return processor

    processor = new_processor()
    if processor.batch_note:
        print(f"latentmill: {processor.batch_note}", file=sys.stderr)
    summary.batch_size = processor.batch_size
    summary.startup_seconds = time.perf_counter() - started
    start = time.perf_counter()
    bar, image_bar = progress_bars(config, shards, total_rows)
    bars[:] = [bar, image_bar]
    for spec in shards:
        attempt = 1
        while True:
            try:
                entry = processor.process(spec, attempt)
            except Exception as exc:  # a shard's failure: retried, then recorded (as on Ray)
                action = after_failure(exc)
                if action == STOP:
                    raise
                if action == REPLACE:
                    processor = new_processor()
                if book.failed(spec, attempt, exc, worker_died=False):
                    attempt += 1
                    continue
                break
            book.done(entry)
            finished_rows += entry["rows"]
            show_rows(image_bar, finished_rows, summary.ok, summary.errors, None)
            break
        bar.update(1)
    bar.close()
    image_bar.close()
    summary.seconds = time.perf_counter() - start
    return summary
