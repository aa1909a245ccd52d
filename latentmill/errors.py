"""How the command line reports a user's mistake: one line naming what to change, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click


@contextmanager
def as_usage_errors(*kinds: type[Exception]) -> Iterator[None]:
    """Turn the given exceptions (a job's ValueError for a bad setting, a missing file) into click's
    usage error: the message, the command's usage line and exit status 2."""
    try:
        yield
    except kinds as exc:
        raise click.UsageError(str(exc)) from None


def parse_ids(spec: str) -> list[str]:
    """'a.png,b.png' or '@FILE' (one id per line, kept whole: ids may hold spaces and commas) -> ids."""
    from pathlib import Path

    if spec.startswith("@"):
        try:
            lines = Path(spec[1:]).read_text().splitlines()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {spec[1:]}: {exc.strerror}") from None
        return [line.strip("\r") for line in lines if line.strip()]
    return [i for i in spec.split(",") if i]
