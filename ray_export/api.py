"""Python API: ``export(...)`` (blocking) and ``start(...)`` (a non-blocking handle)."""

from __future__ import annotations

import atexit
import threading
import time
from typing import Any

from .cluster import ensure_ray
from .errors import ExportCancelled, ExportError
from .options import ExportOptions, build_options
from .run import ExportResult, new_export_id, run_export


def _as_options(options: ExportOptions | dict | None, overrides: dict[str, Any]) -> ExportOptions:
    if isinstance(options, ExportOptions):
        if overrides:
            raise TypeError("pass either an ExportOptions object or keyword options, not both")
        return options
    return build_options(options or None, overrides)


def export(options: ExportOptions | dict | None = None, **overrides: Any) -> ExportResult:
    """Run an export and wait for it; raises :class:`ExportError` / :class:`ExportCancelled`.

    ``export(db="demo.db", project="Demo", output="/tmp/demo.zip")`` or ``export(ExportOptions(...))``.
    """
    return run_export(_as_options(options, overrides))


class ExportHandle:
    """A running export: ``progress()``, ``wait()``, ``cancel()``, ``show_progress()``."""

    def __init__(self, options: ExportOptions) -> None:
        try:  # in the caller's thread: Ray installs its signal handlers there
            ensure_ray(options.address)
        except Exception as exc:
            raise ExportError(f"cannot start or reach Ray: {type(exc).__name__}: {exc}", 1) from exc
        self.export_id = new_export_id()
        self._cancel = threading.Event()
        self._result: ExportResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(options,), name=f"ray-export-{self.export_id}")
        self._thread.daemon = True
        self._thread.start()
        # Registered after Ray's own exit hook, so it runs first: a script that ends without wait()
        # cancels its export cleanly (no partial file left) instead of killing it mid-write.
        atexit.register(self._cancel_at_exit)

    def _cancel_at_exit(self) -> None:
        if self._thread.is_alive():
            self._cancel.set()
            self._thread.join(timeout=15)

    def _run(self, options: ExportOptions) -> None:
        try:
            self._result = run_export(options, export_id=self.export_id, cancel=self._cancel)
        except BaseException as exc:  # handed to wait()
            self._error = exc

    def progress(self) -> dict[str, Any]:
        """The progress actor's snapshot (state, counts, bytes, throughput, ETA, ...)."""
        import ray

        from actors.progress import get_progress_actor

        if not ray.is_initialized():
            return {"export_id": self.export_id, "state": "starting"}
        actor = get_progress_actor(self.export_id)
        if actor is None:
            return {"export_id": self.export_id, "state": "starting"}
        return ray.get(actor.snapshot.remote())

    def done(self) -> bool:
        """True once the export has ended (successfully or not)."""
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> ExportResult:
        """Block until the export ends; returns its result or raises its error."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"export {self.export_id} still running after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Ask the export to stop; ``wait()`` then raises :class:`ExportCancelled`."""
        self._cancel.set()

    def show_progress(self, poll_seconds: float = 0.5) -> ExportResult:
        """Draw a progress bar (a widget in Jupyter, text elsewhere) until the export ends."""
        from tqdm.auto import tqdm

        bar = None
        while not self.done():
            snap = self.progress()
            total = (snap.get("totals") or {}).get("write")
            if total and bar is None:
                bar = tqdm(total=total, desc=f"export {self.export_id}", unit="img")
            if bar is not None:
                bar.n = (snap.get("done") or {}).get("write", 0)
                bar.set_postfix_str(snap.get("state", ""))
                bar.refresh()
            time.sleep(poll_seconds)
        if bar is not None:
            bar.n = bar.total
            bar.refresh()
            bar.close()
        return self.wait()


def start(options: ExportOptions | dict | None = None, **overrides: Any) -> ExportHandle:
    """Start an export in the background and return its handle."""
    return ExportHandle(_as_options(options, overrides))


__all__ = ["ExportCancelled", "ExportError", "ExportHandle", "ExportResult", "export", "start"]
