"""Progress that fits where it goes: a moving bar in a terminal, plain lines everywhere else.

A bar repaints with carriage returns and cursor moves, which a terminal draws in place and a file, a
CI log or `ray job logs` keeps as hundreds of garbled lines. So `progress_bar` gives tqdm's bar when
stderr is a terminal and, elsewhere, a bar of the same interface that writes one plain line every
`PLAIN_INTERVAL_S` seconds and at each tenth of the work: what is done, the rate, the ETA and the
counters set with `set_postfix` (no escapes, no carriage returns). Every command's progress goes
through here, so each of them logs the same way.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm

PLAIN_INTERVAL_S = 30.0
PLAIN_ENV = "LATENTMILL_PLAIN_PROGRESS"  # 1: plain lines even in a terminal; 0: bars even in a file


def plain_output(stream: TextIO | None = None) -> bool:
    """True where progress must be plain lines: not a terminal (a file, a pipe, CI), unless overridden."""
    forced = os.environ.get(PLAIN_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    stream = stream or sys.stderr
    return not (hasattr(stream, "isatty") and stream.isatty()) or bool(os.environ.get("CI"))


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    return tqdm.format_interval(seconds)


class PlainProgress:
    """tqdm's interface (update, n, total, set_postfix, set_description, refresh, close, a context
    manager), written as plain lines: at most one every `interval` seconds, plus one at each tenth of a
    known total and one at the end."""

    def __init__(self, total: float | None = None, desc: str = "", unit: str = "it", initial: float = 0,
                 disable: bool = False, file: TextIO | None = None, interval: float = PLAIN_INTERVAL_S) -> None:
        self.total, self.desc, self.unit, self.n, self.disable = total, desc, unit, initial, disable
        self.file, self.interval = file, interval
        self.postfix: dict[str, Any] = {}
        self.started = self.last_line = time.monotonic()
        self.start_n = initial
        self.tenth = self._tenth()
        self.closed = False
        self.last_state: tuple[float, dict] | None = None  # (n, counters) of the last line written

    def _tenth(self) -> int:
        return int(10 * self.n / self.total) if self.total else 0

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        done = f"{self.n:,.0f}" + (f"/{self.total:,.0f} {self.unit} ({100 * self.n / self.total:.0f}%)" if self.total
                                   else f" {self.unit}")
        eta = (self.total - self.n) / rate if self.total and rate > 0 else None
        parts = [f"{self.desc}: {done}", f"{rate:.3g} {self.unit}/s", f"elapsed {_duration(elapsed)}"]
        if self.total:
            parts.append(f"ETA {_duration(eta)}")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def _emit(self) -> None:
        print(self.line(), file=self.file or sys.stderr, flush=True)
        self.last_line = time.monotonic()
        self.last_state = (self.n, dict(self.postfix))

    def refresh(self, *_: Any, **__: Any) -> None:
        """Write a line if one is due: `interval` seconds since the last, or a new tenth of the work."""
        if self.disable or self.closed:
            return
        tenth = self._tenth()
        if tenth > self.tenth or time.monotonic() - self.last_line >= self.interval:
            self.tenth = max(tenth, self.tenth)
            self._emit()

    def update(self, n: float = 1) -> None:
        self.n += n
        self.refresh()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}
        if refresh:
            self.refresh()

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.set_postfix({"at": text}, refresh=refresh)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""
        if refresh:
            self.refresh()

    def close(self) -> None:
        """The last line, unless the line just written already says it."""
        said = self.last_state == (self.n, self.postfix)
        if not self.disable and not self.closed and not said and (self.n != self.start_n or self.total):
            self._emit()
        self.closed = True

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(*, total: float | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
                 initial: float = 0, leave: bool = True, position: int | None = None) -> Any:
    """A progress bar for `total` units of work: tqdm's in a terminal, PlainProgress elsewhere."""
    if plain_output():
        return PlainProgress(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled)
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled, leave=leave,
                position=position)
