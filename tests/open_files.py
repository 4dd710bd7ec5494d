"""What tests see of an export's unnamed files: a partial ZIP or spool file made with ``O_TMPFILE`` (or
unlinked once open) has no name in its folder, but every process that holds it open shows it in
``/proc/PID/fd`` as ``<folder>/#<inode> (deleted)`` (``<folder>/<name> (deleted)`` once unlinked)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path


def unnamed_files_in(folder: Path) -> list[str]:
    """``pid: target`` of every open file, in any process, that lives in ``folder`` without a name."""
    prefix = str(folder.resolve()) + "/"
    found = []
    with contextlib.suppress(OSError):
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    rest = target[len(prefix) :]
                    if target.startswith(prefix) and "/" not in rest and target.endswith(" (deleted)"):
                        found.append(f"{pid}: {target}")
    return sorted(found)


def named_files_in(folder: Path) -> list[str]:
    """The names in ``folder``."""
    return sorted(p.name for p in folder.iterdir())


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.05) -> object:
    """Poll ``condition`` until it is true (returned) or raise after ``timeout_s`` (a liveness deadline)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
