"""Reading one original file, bounded: regular files only, at most a given size and time.

A named pipe, socket or device under the images root would block or never end; a huge file would
exhaust a worker's memory. Each is refused for that image with its own error, never a hang.
"""

from __future__ import annotations

import os
import stat
import time

import pyarrow.fs as pafs

#: Largest original read (bytes); a bigger file is refused for its image.
DEFAULT_MAX_FILE_BYTES = 2 << 30
#: Longest time one file may take to read (seconds) before it is given up.
DEFAULT_READ_TIMEOUT_S = 300.0
READ_CHUNK_BYTES = 8 << 20


class NotRegularFile(OSError):
    """The path names a FIFO, socket, device or folder rather than a regular file."""


class FileTooLarge(OSError):
    """The file is larger than the configured limit."""


class ReadTimedOut(OSError):
    """Reading the file took longer than the configured limit."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a folder")):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


def _read_chunks(read, size: int, max_bytes: int, deadline: float, what: str) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        chunk = read(READ_CHUNK_BYTES)
        if not chunk:
            return b"".join(parts)
        total += len(chunk)
        if total > max_bytes:
            raise FileTooLarge(f"{what} is larger than {max_bytes} bytes (the file size limit)")
        parts.append(chunk)
        if time.monotonic() > deadline:
            raise ReadTimedOut(f"{what}: reading took longer than the time limit ({total} of {size} bytes read)")


def read_local_file(path: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES,
                    timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> bytes:  # fmt: skip
    """The bytes of a local regular file; never blocks on a FIFO (opened non-blocking, checked with fstat)."""
    deadline = time.monotonic() + timeout_s
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(f"{os.path.basename(path)!r} is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise FileTooLarge(f"{info.st_size} bytes, more than the file size limit of {max_bytes}")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as fh:
            fd = -1
            return _read_chunks(fh.read, info.st_size, max_bytes, deadline, "the file")
    finally:
        if fd >= 0:
            os.close(fd)


def read_file(fs: pafs.FileSystem, path: str, is_local: bool, max_bytes: int = DEFAULT_MAX_FILE_BYTES,
              timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> bytes:  # fmt: skip
    """The bytes of one original, from the local disk or a ``pyarrow.fs`` file system, bounded in size and time."""
    if is_local:
        return read_local_file(path, max_bytes, timeout_s)
    deadline = time.monotonic() + timeout_s
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    if info.type != pafs.FileType.File:
        raise NotRegularFile("the path is a folder, not a file")
    if info.size is not None and info.size > max_bytes:
        raise FileTooLarge(f"{info.size} bytes, more than the file size limit of {max_bytes}")
    with fs.open_input_stream(path) as stream:
        return _read_chunks(stream.read, info.size or -1, max_bytes, deadline, "the file")
