"""The export service's queue: exports start in the order they were submitted, at most ``max_running``
at once. Pure and thread-safe."""

from __future__ import annotations

import threading
from collections import deque


class ExportQueue:
    """Exports waiting (in submission order) and running, by id."""

    def __init__(self, max_running: int = 1) -> None:
        if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1:
            raise ValueError(f"max_running must be a positive integer, got {max_running!r}")
        self.max_running = max_running
        self._waiting: deque[str] = deque()
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def submit(self, export_id: str) -> int:
        """Put ``export_id`` at the end of the queue; returns its 1-based position."""
        with self._lock:
            if export_id in self._waiting or export_id in self._running:
                raise ValueError(f"export {export_id} is already queued or running")
            self._waiting.append(export_id)
            return len(self._waiting)

    def start_next(self) -> str | None:
        """The first waiting export, now running, when a slot is free; None otherwise."""
        with self._lock:
            if not self._waiting or len(self._running) >= self.max_running:
                return None
            export_id = self._waiting.popleft()
            self._running.add(export_id)
            return export_id

    def finished(self, export_id: str) -> None:
        """A running export ended: its slot is free."""
        with self._lock:
            self._running.discard(export_id)

    def withdraw(self, export_id: str) -> bool:
        """Take a waiting export out of the queue (a cancel); returns whether it was waiting."""
        with self._lock:
            try:
                self._waiting.remove(export_id)
            except ValueError:
                return False
            return True

    def position(self, export_id: str) -> int | None:
        """1-based place of a waiting export (1: starts next); None when it is not waiting."""
        with self._lock:
            for place, waiting in enumerate(self._waiting, start=1):
                if waiting == export_id:
                    return place
            return None

    def positions(self) -> dict[str, int]:
        """Every waiting export's 1-based place."""
        with self._lock:
            return {export_id: place for place, export_id in enumerate(self._waiting, start=1)}

    def waiting(self) -> list[str]:
        """The waiting exports, first to start first."""
        with self._lock:
            return list(self._waiting)

    def running(self) -> set[str]:
        """The running exports."""
        with self._lock:
            return set(self._running)
