"""One export per output file: an exclusive lock beside a local output for the whole run.

``<output>.lock`` holds the id of the export that writes ``<output>``; the lock is an ``flock`` on that
file, so it ends with the process that holds it, however that process ends. Each export writes its own
``<output>.<export id>.partial`` and spool folder ``.<output name>.spool-*``; once an export holds the
lock, any such file left beside the output can only come from an export that died, and is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

LOCK_SUFFIX = ".lock"
PARTIAL_SUFFIX = ".partial"


class OutputLocked(Exception):
    """Another live export writes the same output."""


def partial_path(output: Path, export_id: str) -> Path:
    """Where the export ``export_id`` writes ``output`` before its final rename."""
    return output.with_name(f"{output.name}.{export_id}{PARTIAL_SUFFIX}")


def spool_prefix(output: Path) -> str:
    """Name prefix of the spool folders of exports to ``output`` (made beside it)."""
    return f".{output.name}.spool-"


def leftover_files(output: Path) -> list[Path]:
    """Partial files and spool folders of exports to ``output`` found beside it."""
    folder, name = output.parent, output.name
    found: list[Path] = []
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            partial = entry.name.startswith(name + ".") and entry.name.endswith(PARTIAL_SUFFIX)
            if partial or entry.name.startswith(spool_prefix(output)):
                found.append(entry)
    return sorted(found)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


class OutputLock:
    """The held lock on one output; :meth:`release` (or leaving the ``with`` block) gives it up."""

    def __init__(self, output: Path, export_id: str) -> None:
        self.output = output
        self.export_id = export_id
        self.path = output.with_name(output.name + LOCK_SUFFIX)
        self._fd: int | None = None

    def acquire(self) -> list[Path]:
        """Take the lock or raise :class:`OutputLocked`; returns the leftovers of dead exports it removed."""
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another export"
                os.close(fd)
                raise OutputLocked(f"output {self.output} is being written by export {holder}") from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # the holder released (and removed) the file between our open and flock
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, self.export_id.encode("utf-8"))
            self._fd = fd
            leftovers = leftover_files(self.output)
            for path in leftovers:
                _remove(path)
            return leftovers
        raise OutputLocked(f"output {self.output}: could not take its lock file {self.path}")

    def release(self) -> None:
        """Remove the lock file and let go of the lock. Idempotent; never raises."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # removed while still held: a waiting export re-opens a fresh file
        with contextlib.suppress(OSError):
            os.close(fd)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
