"""Fault injection for the tests: a shard processor whose worker process dies on chosen shards."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.runtime.shard_processor import ShardProcessor


def crashing_once_on(shards: list[str]) -> type[ShardProcessor]:
    """A ShardProcessor class whose process exits abruptly the first time it starts one of `shards`
    (as a machine or process failure would), so actor replacement and retries run on a real Ray.
    The class is made here, not imported by the workers: cloudpickle ships it by value."""

    class CrashOnce(ShardProcessor):
        def process(self, spec, attempt=1):
            if spec.shard_id in shards:
                marker = Path(self.config.output.removeprefix("file://")) / ".crash-markers" / spec.shard_id
                if not marker.exists():
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.touch()
                    os._exit(1)
            return super().process(spec, attempt)

    return CrashOnce
