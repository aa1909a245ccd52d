"""Starting (or joining) Ray for a latentmill job: quietly, unless --verbose.

An embedded Ray prints its own banners (token authentication, dashboard, worker log lines) before
anything latentmill says; a newcomer reads them as the first and most important output. Without
--verbose those go: Ray's loggers are raised to errors while it starts, and workers' stdout and
stderr are not forwarded (what they would say about a shard is in the manifest's failure records).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def _quiet(logger_name: str, enabled: bool) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    if enabled:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def init_ray(address: str | None, *, verbose: bool = False, **kwargs) -> None:
    """ray.init for a job (no-op when Ray is already up): $RAY_ADDRESS or `address`, else embedded."""
    import ray

    if ray.is_initialized():
        return
    with _quiet("ray", not verbose):
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False, configure_logging=False,
                 log_to_driver=verbose, **kwargs)
