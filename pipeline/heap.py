"""Giving freed heap memory back to the system between the batches of a long streamed pass.

Torch and Arrow free each batch's large buffers from several threads; glibc keeps such frees in its
per-thread arenas and, once its mmap threshold has risen past a batch's size, serves the next batch
from a fresh part of the heap. A pass over millions of rows then grows by gigabytes that it no longer
uses. `malloc_trim(0)` returns those free pages; on a C library without it this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim") if name else None
    except (OSError, AttributeError):
        return None


def release_free_heap() -> None:
    """Return the heap's free pages to the system (glibc); call between batches, not inside one."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
