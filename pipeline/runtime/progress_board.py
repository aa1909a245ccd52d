"""Progress inside shards: actors report rows as batches finish, the driver's bar reads them.

A shard of 1,000 images can take many minutes; a bar that moves only when a whole shard finishes is
indistinguishable from a hang. Each actor reports the rows it has finished in its current shard
(and the stage it is in) to one small board; the driver polls it between shard completions. A
shard's count is replaced, never added to, so a retried shard is not counted twice, and a finished
shard's count becomes its manifest's row count.
"""

from __future__ import annotations

import time


class ProgressBoard:
    """Rows finished per shard and the latest stage named; Ray makes it an actor at the edge."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.ok: dict[str, int] = {}
        self.stage = ""
        self.updated = time.time()

    def report(self, shard: str, rows: int, stage: str | None = None, ok: int = 0) -> None:
        """`rows` finished so far in the current attempt at `shard`, `ok` of them ok; `stage` is what runs now."""
        self.rows[shard] = rows
        self.ok[shard] = ok
        if stage:
            self.stage = stage
        self.updated = time.time()

    def restart(self, shard: str) -> None:
        """A new attempt at `shard`: what the failed one reported no longer counts."""
        self.rows.pop(shard, None)
        self.ok.pop(shard, None)

    def read(self) -> tuple[int, int, str]:
        """Rows finished in shards in flight, how many of them ok, and the latest stage."""
        return sum(self.rows.values()), sum(self.ok.values()), self.stage
