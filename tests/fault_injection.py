"""Fault injection for the tests: a shard processor whose worker process dies on chosen shards."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.invert.shard_processor import ShardProcessor


def crashing_once_on(shards: list[str], base: type = ShardProcessor) -> type:
    """A processor class (ShardProcessor, or another with `process(unit, attempt)` and a `config` or `cfg`
    naming the output) whose process exits abruptly the first time it starts one of `shards` (as a machine
    or process failure would), so actor replacement and retries run on a real Ray. The class is made here,
    not imported by the workers: cloudpickle ships it by value."""

    class CrashOnce(base):
        def process(self, spec, attempt=1):
            if spec.shard_id in shards:
                settings = getattr(self, "config", None) or self.cfg
                marker = Path(settings.output.removeprefix("file://")) / ".crash-markers" / spec.shard_id
                if not marker.exists():
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.touch()
                    os._exit(1)
            return super().process(spec, attempt)

    return CrashOnce


def failing_once_on(shards: list[str], exc_type: type[BaseException]) -> type[ShardProcessor]:
    """A ShardProcessor class that raises `exc_type` the first time it runs one of `shards` (the process
    lives on), and records which processor ran each attempt (process id and the processor's number in
    that process) in OUTPUT/.attempts/<shard>."""

    class FailOnce(ShardProcessor):
        made = 0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            FailOnce.made += 1
            self.number = FailOnce.made

        def process(self, spec, attempt=1):
            log = Path(self.config.output.removeprefix("file://")) / ".attempts" / spec.shard_id
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as f:
                f.write(f"{os.getpid()}-{self.number}\n")
            if spec.shard_id in shards and attempt == 1:
                raise exc_type(f"injected on {spec.shard_id}")
            return super().process(spec, attempt)

    return FailOnce
