"""Python API: ``export(...)`` (blocking) and ``start(...)`` (a non-blocking handle)."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from .cluster import ensure_ray, gcs_address_of
from .errors import ExportCancelled, ExportError
from .options import ExportOptions, OptionError, build_options, check_environment_address
from .planning import check_export
from .run import ExportResult, new_export_id, run_export


def _as_options(options: ExportOptions | dict | None, overrides: dict[str, Any]) -> ExportOptions:
    if isinstance(options, ExportOptions):
        if overrides:
            raise TypeError("pass either an ExportOptions object or keyword options, not both")
        return options
    return build_options(options or None, overrides)


#: loggers an export quiets while it runs (Ray Data's own progress and executor notices)
QUIETED_LOGGERS = ("ray.data", "ray.data._internal.execution.streaming_executor", "ray.data._internal.progress")


def start_ray_for_caller(address: str | None) -> None:
    """Start or attach Ray the way a plain ``ray.init()`` would, when the caller has not: Ray's defaults
    (the dashboard when installed, worker output shown in this process, Ray's own log level, the
    anonymous namespace), so the caller's session behaves as if they had started Ray themselves; a
    later ``ray.init(ignore_reinit_error=True)`` of theirs is a no-op, as it is after their own. A
    dashboard URL as the address is mapped to the cluster's GCS (see :func:`gcs_address_of`)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=gcs_address_of(address or os.environ.get("RAY_ADDRESS")) or None)


@contextlib.contextmanager
def _caller_logging() -> Iterator[None]:
    """Restore the levels of the loggers an export changes, when it ends."""
    loggers = [logging.getLogger(name) for name in QUIETED_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _start_ray(address: str | None) -> None:
    import ray

    if not ray.is_initialized():  # Ray would attach to RAY_ADDRESS: a malformed one is a usage error
        try:
            check_environment_address(address)
        except OptionError as exc:
            raise ExportError(str(exc), 2) from None
    try:  # in the caller's thread: Ray installs its signal handlers there
        start_ray_for_caller(address)
        ensure_ray(address)
    except Exception as exc:
        raise ExportError(f"cannot start or reach Ray: {type(exc).__name__}: {exc}", 1) from exc


def export(
    options: ExportOptions | dict | None = None, service: str | None = None, token: str | None = None, **overrides: Any
) -> ExportResult:
    """Run an export and wait for it; raises :class:`ExportError` / :class:`ExportCancelled`.

    ``export(db="demo.db", project="Demo", output="/tmp/demo.zip")`` or ``export(ExportOptions(...))``.
    Without a Ray in this process, Ray is started as a plain ``ray.init()`` would
    (see :func:`start_ray_for_caller`).

    ``service``: the URL of a running export service (``ray-export serve``), which runs the export instead
    (``token``: its bearer token, default ``RAY_EXPORT_TOKEN``); the result is the same object, its
    ``output`` a path on the service's machine. An interrupt (Ctrl-C) cancels the export there.
    """
    if service is not None:
        return _service_handle(service, token, options, overrides).wait_cancelling_on_interrupt()
    checked = check_export(_as_options(options, overrides))  # usage errors come before any start-up
    _start_ray(checked.options.address)
    with _caller_logging():
        return run_export(checked)


class ExportHandle:
    """A running export: ``progress()``, ``wait()``, ``cancel()``, ``show_progress()``."""

    def __init__(self, options: ExportOptions) -> None:
        _start_ray(options.address)
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
            with _caller_logging():
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

        from actors.progress import BAR_FORMAT, eta_text

        bar = None
        while not self.done():
            snap = self.progress()
            total = (snap.get("totals") or {}).get("write")
            if total and bar is None:
                bar = tqdm(total=total, desc=f"export {self.export_id}", unit="img", bar_format=BAR_FORMAT)
            if bar is not None:
                bar.n = (snap.get("done") or {}).get("write", 0)
                stalled = snap.get("stalled")
                reuse = snap.get("reuse") or {}
                taken = int(reuse.get("reused", 0)) + int(reuse.get("reused_members", 0))
                eta = eta_text(snap)
                bar.set_postfix_str(
                    snap.get("state", "")
                    + (f", {taken} reused, {int(reuse.get('computed', 0))} computed" if reuse else "")
                    + (f", {stalled['stage']} stalled" if stalled else f", eta {eta}" if eta else "")
                )
                bar.refresh()
            time.sleep(poll_seconds)
        if bar is not None:
            bar.n = bar.total
            bar.refresh()
            bar.close()
        return self.wait()


def start(
    options: ExportOptions | dict | None = None, service: str | None = None, token: str | None = None, **overrides: Any
) -> ExportHandle:
    """Start an export in the background and return its handle (on the export service at ``service``,
    when given: see :func:`export`)."""
    if service is not None:
        return _service_handle(service, token, options, overrides)
    return ExportHandle(_as_options(options, overrides))


class ServiceExportHandle(ExportHandle):
    """An export running on an export service: the same methods as :class:`ExportHandle`. Leaving the
    script does not cancel it (it runs on the service); :meth:`cancel` does."""

    def __init__(self, client: Any, values: dict[str, Any]) -> None:  # no Ray here: the service has it
        self._client = client
        self.export_id = client.submit(values)["id"]
        self._cancel = threading.Event()
        self._result: ExportResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._follow, name=f"ray-export-{self.export_id}", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        from .service.client import wait_for

        try:
            self._result = wait_for(self._client, self.export_id, self._cancel)
        except BaseException as exc:  # handed to wait()
            self._error = exc

    def progress(self) -> dict[str, Any]:
        """The service's status of the export: the progress snapshot, with ``queue_position``."""
        return self._client.status(self.export_id)

    def wait_cancelling_on_interrupt(self) -> ExportResult:
        """:meth:`wait`; an interrupt cancels the export on the service first."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.2)
        except KeyboardInterrupt:
            self.cancel()
            self._thread.join(30)
            raise
        return self.wait()


def _service_handle(
    service: str, token: str | None, options: ExportOptions | dict | None, overrides: dict[str, Any]
) -> ServiceExportHandle:
    from .service.client import ServiceClient, client_for, options_values

    values = options_values(options, overrides)
    client = ServiceClient(service, token) if token is not None else client_for(service)
    return ServiceExportHandle(client, values)


__all__ = ["ExportCancelled", "ExportError", "ExportHandle", "ExportResult", "ServiceExportHandle", "export", "start"]
