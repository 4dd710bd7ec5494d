"""Freed heap memory goes back to the system between batches."""

import ctypes.util
import os
import sys

import pytest

from ray_export.heap import release_free_heap


def _resident_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux") or "musl" in (ctypes.util.find_library("c") or ""),
                    reason="glibc's malloc_trim")  # fmt: skip
def test_memory_freed_inside_the_heap_is_returned():
    blocks = [bytearray(4000) for _ in range(50_000)]  # 200 MB from malloc's heap, not from mmap
    pin = bytearray(4000)  # allocated last: the freed blocks lie below it, out of reach of free()'s own trim
    for block in blocks:
        block[::4096] = b"\x01"  # touch every page
    del blocks
    before = _resident_bytes()
    release_free_heap()
    after = _resident_bytes()
    assert before - after > 150 * 2**20, (before, after)
    assert pin[0] == 0


def test_memory_freed_in_arrows_pool_is_returned():
    import pyarrow as pa

    buffers = [pa.allocate_buffer(64_000) for _ in range(3000)]  # about 180 MiB from Arrow's memory pool
    del buffers
    before = _resident_bytes()
    release_free_heap()
    after = _resident_bytes()
    assert before - after > 150 * 2**20, (before, after)
