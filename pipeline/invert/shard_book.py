"""The driver's account of a run's shards, whichever runner ran them: done, retried, failed.

Both runners (Ray actors, pipeline/runtime/ray_runner.py; one process, local_runner.py) report each
shard's outcome here, so retries, failure records and the run's summary follow one rule: a shard
that fails is retried up to `--max-retries` times, then recorded in STORE/manifest/<shard>.failed.json
with the error; each kind of device seen is recorded with the precision it ran in.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

from pipeline.data.sources import ShardSpec
from pipeline.store import layout
from pipeline.store.writer import StoreWriter


@dataclass
class RunSummary:
    shards_done: int = 0
    shards_skipped: int = 0
    shards_failed: list[str] = field(default_factory=list)
    rows: int = 0
    ok: int = 0
    errors: int = 0
    error_reasons: dict[str, int] = field(default_factory=dict)  # of this run's error rows
    seconds: float = 0.0
    retries: int = 0
    requeued: int = 0  # shards whose actor was lost with its node: run again, not counted as retries
    startup_seconds: float = 0.0  # from the start of the run until the actors were ready
    batch_size: int | None = None  # per actor, as chosen (--batch-size auto) or given
    precisions: dict[str, str] = field(default_factory=dict)  # kind of device -> precision it ran
    store_totals: dict[str, Any] = field(default_factory=dict)  # the whole store's rows, ok, errors by reason

    @property
    def images_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class ShardBook:
    """Records outcomes into `summary` and the store (through the run's claim)."""

    def __init__(self, summary: RunSummary, writer: StoreWriter, max_retries: int) -> None:
        self.summary, self.writer, self.max_retries = summary, writer, max_retries
        self.recorded = dict(writer.precisions)
        self.said: set[str] = set()

    def started(self, ready: dict[str, Any]) -> None:
        """An actor is ready: say (once per kind of device) the precision it runs, and record it."""
        kind = ready["device_kind"]
        if kind not in self.said:
            self.said.add(kind)
            print(f"latentmill: {kind} runs refinement in {ready['precision']} ({ready.get('precision_why', '')})",
                  file=sys.stderr)
            if ready.get("device_note"):
                print(f"latentmill: {ready['device_note']}", file=sys.stderr)
        self._record_precision(kind, ready["precision"])

    def done(self, entry: dict[str, Any]) -> None:
        s = self.summary
        s.shards_done += 1
        s.rows += entry["rows"]
        s.ok += entry["ok"]
        s.errors += entry["errors"]
        for reason, n in (entry.get("error_reasons") or {}).items():
            s.error_reasons[reason] = s.error_reasons.get(reason, 0) + n
        if entry.get("device_kind"):
            self._record_precision(entry["device_kind"], entry["precision"])

    def requeued(self, spec: ShardSpec) -> None:
        """The shard's actor was lost with its node: the shard runs again elsewhere."""
        self.summary.requeued += 1

    def failed(self, spec: ShardSpec, attempt: int, exc: BaseException, *, worker_died: bool) -> bool:
        """True if the shard goes back in the queue; else it is recorded as failed."""
        if attempt <= self.max_retries:
            self.summary.retries += 1
            return True
        self.summary.shards_failed.append(spec.shard_id)
        self.writer.record_failure(spec.shard_id, {
            "shard": spec.shard_id, "attempts": attempt, "worker_died": worker_died,
            "error": "".join(traceback.format_exception_only(type(exc), exc)).strip()[-4000:]})
        return False

    def _record_precision(self, kind: str, precision: str) -> None:
        self.summary.precisions[kind] = precision
        if self.recorded.get(kind) != precision:
            self.recorded[kind] = precision
            self.writer.write_json(layout.PRECISION, {k: {"precision": p} for k, p in sorted(self.recorded.items())})
