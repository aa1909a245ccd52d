"""Bounded, ordered concurrency for streams: read or decode ahead of a consumer without holding it all.

`ThreadPoolExecutor.map` submits every item before it yields the first result: a shard's whole input
would be read (and held) before its first batch could start. `bounded_map` keeps at most `window`
calls in flight and yields results in input order as the consumer asks for them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, window: int | None = None,
                name: str = "latentmill") -> Iterator[R]:
    """fn(item) for each item, computed by `workers` threads at most `window` (default 2 x workers) items
    ahead of the consumer, yielded in order."""
    window = max(1, window or 2 * workers)
    if workers <= 1 and window <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=name) as pool:
        pending: deque[Future[R]] = deque()
        source = iter(items)
        for item in source:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            for item in source:
                pending.append(pool.submit(fn, item))
                break
            yield result
