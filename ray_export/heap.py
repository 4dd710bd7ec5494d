"""Returning freed heap memory to the system between batches."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import pyarrow as pa


def release_free_heap() -> None:
    """Hand the memory freed by a batch back to the system: Arrow's memory pool (where the batches'
    columns live) and the C heap (glibc's ``malloc_trim``, where NumPy and OpenCV allocate). A process
    waiting for its next batch then holds only what it uses, not the high-water mark of the batches
    before. The C heap is left alone where the C library has no ``malloc_trim``."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
