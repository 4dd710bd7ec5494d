"""Returning freed heap memory to the system between batches."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


def release_free_heap() -> None:
    """Hand the heap memory freed by a batch back to the system (glibc's ``malloc_trim``): a process
    waiting for its next batch then holds only what it uses, not the high-water mark of the batches
    before. Does nothing where the C library has no ``malloc_trim``."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
