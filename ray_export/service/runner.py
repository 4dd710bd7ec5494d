"""The service's exports: each runs :func:`ray_export.run.run_export` in a thread of its own, with its own
cancel event, on the service's Ray (one long-lived job, so the stage workers stay warm between exports).

Nothing here runs inside an HTTP request: a request submits, reads or cancels, and the export goes on
whatever happens to the request's connection. Every export is registered in the cluster's progress
actor at once (state ``queued`` with its queue position while it waits; the service sends the heartbeat
of waiting exports), so ``ray-export status`` and ``ray-export cancel`` see it too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ExportCancelled, ExportError, error_line
from ..options import ExportOptions
from ..planning import check_export
from ..run import ExportResult, new_export_id, run_export
from ..sources import mask_dsn
from .config import RequestError, ServiceConfig, request_options
from .queue import ExportQueue

log = logging.getLogger("ray_export.service")

#: Ended exports the service keeps records of (the oldest go first).
MAX_ENDED_RECORDS = 1000
#: How often waiting exports' heartbeats are sent and their cancel requests looked at (seconds).
QUEUE_WATCH_S = 1.0
SERVICE_STATES_ENDED = frozenset({"succeeded", "failed", "cancelled"})


class ExportGone(Exception):
    """The export's ZIP is no longer there (removed or replaced): HTTP 410."""


class ExportNotReady(Exception):
    """The export has no ZIP to give (not finished, failed or cancelled): HTTP 409."""


class UnknownServiceExport(KeyError):
    """No export of this id was submitted to the service: HTTP 404."""


@dataclass
class ServiceExport:
    """One export submitted to the service."""

    export_id: str
    options: ExportOptions = field(repr=False)
    submitted_at: float
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    #: ``queued``, ``running``, then ``succeeded``, ``failed`` or ``cancelled``
    state: str = "queued"
    output: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: ExportResult | None = None
    error: str | None = None
    exit_code: int | None = None
    #: (device, inode, size, mtime) of the committed ZIP: a download gives only that file
    file_identity: tuple[int, int, int, int] | None = None
    output_removed: bool = False
    progress: Any = field(default=None, repr=False)
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def ended(self) -> bool:
        return self.state in SERVICE_STATES_ENDED


def file_identity(path: str | os.PathLike[str]) -> tuple[int, int, int, int] | None:
    """``(device, inode, size, mtime_ns)`` of a regular file (no link followed), or None."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    import stat

    if not stat.S_ISREG(info.st_mode):
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def usage_refusal(message: str, exit_code: int) -> RequestError:
    """The refusal of a request whose export a usage check stopped (``invalid option X: ...`` names X)."""
    status = 422 if exit_code == 2 else 500
    match = re.match(r"invalid option (\S+): (.*)", message, flags=re.S)
    if match:
        return RequestError(match.group(1), match.group(2), status)
    return RequestError(None, message, status)


def result_dict(result: ExportResult) -> dict[str, Any]:
    """An :class:`ExportResult` as JSON values (what ``GET /exports/{id}`` gives as ``result``)."""
    return dataclasses.asdict(result)


class ExportService:
    """The exports of one service: submit, status, cancel, download; the queue and the threads."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.queue = ExportQueue(config.max_concurrent)
        self._records: dict[str, ServiceExport] = {}
        self._lock = threading.RLock()
        self._stopping = False
        self._stopped = threading.Event()
        self._watcher = threading.Thread(target=self._watch_queue, name="ray-export-service-queue", daemon=True)
        self._watcher.start()

    # ----------------------------------------------------------------------------------------------- requests
    def submit(self, body: Any) -> ServiceExport:
        """Check the options of a request and queue the export; raises :class:`RequestError` (nothing is
        started then)."""
        options = request_options(body, self.config)
        try:
            checked = check_export(options)
        except ExportError as exc:
            raise usage_refusal(self.masked(str(exc)), exc.exit_code) from None
        output = str(checked.output) if checked.output is not None else None
        with self._lock:
            if self._stopping:
                raise RequestError(None, "the service is stopping", 503)
            if output is not None:
                for other in self._records.values():
                    if not other.ended and other.output == output:
                        raise RequestError("output", f"export {other.export_id} is already writing {output}", 409)
            record = ServiceExport(new_export_id(), options, time.time(), output=output)
            record.progress = self._register(record.export_id, output)
            self._records[record.export_id] = record
            self.queue.submit(record.export_id)
            self._forget_old_records()
        log.info("export %s queued", record.export_id)
        self._dispatch()
        return record

    def record(self, export_id: str) -> ServiceExport:
        with self._lock:
            record = self._records.get(export_id)
        if record is None:
            raise UnknownServiceExport(export_id)
        return record

    def records(self) -> list[ServiceExport]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: (r.submitted_at, r.export_id))

    def status(self, export_id: str) -> dict[str, Any]:
        """The export's progress snapshot (as ``ray-export status --json`` gives it), with the service's
        own fields: ``queue_position``, ``submitted_at``, ``result`` (once succeeded), ``error`` and
        ``exit_code`` (once failed or cancelled), ``download`` and ``output_removed``."""
        return self._status(self.record(export_id))

    def statuses(self) -> list[dict[str, Any]]:
        return [self._status(record) for record in self.records()]

    def cancel(self, export_id: str, wait_s: float = 20.0) -> dict[str, Any]:
        """Cancel a waiting or running export (its files are removed), or remove a finished export's ZIP;
        waits up to ``wait_s`` for a running export to end."""
        record = self.record(export_id)
        if record.state == "queued" and self.queue.withdraw(export_id):
            record.cancel.set()
            self._end(record, "cancelled", "export cancelled", 130)
        elif record.state == "running":
            record.cancel.set()
            if record.thread is not None:
                record.thread.join(wait_s)
        elif record.state == "succeeded":
            self._remove_output(record)
        return self._status(record)

    def download_path(self, export_id: str) -> Path:
        """The committed ZIP of a succeeded export, as long as it is the file the export wrote."""
        record = self.record(export_id)
        if record.state != "succeeded":
            raise ExportNotReady(f"export {export_id} is {record.state}; only a succeeded export has a ZIP")
        if record.output_removed or record.output is None:
            raise ExportGone(f"the ZIP of export {export_id} was removed")
        if file_identity(record.output) != record.file_identity:
            raise ExportGone(f"the ZIP of export {export_id} is no longer there (removed or replaced)")
        return Path(record.output)

    def health(self) -> dict[str, Any]:
        return {
            "status": "stopping" if self._stopping else "ok",
            "running": len(self.queue.running()),
            "queued": len(self.queue.waiting()),
            "max_concurrent": self.config.max_concurrent,
        }

    def masked(self, text: str) -> str:
        """``text`` without any of the service's database passwords."""
        text = mask_dsn(text)
        for db in self.config.databases:
            shown = mask_dsn(db)
            if shown != db:
                text = text.replace(db, shown)
        return text

    # ------------------------------------------------------------------------------------------ running them
    def _dispatch(self) -> None:
        started = []
        with self._lock:
            if self._stopping:
                return
            while (export_id := self.queue.start_next()) is not None:
                record = self._records[export_id]
                record.state = "running"
                record.started_at = time.time()
                record.thread = threading.Thread(
                    target=self._run, args=(record,), name=f"ray-export-{export_id}", daemon=True
                )
                started.append(record)
            for record in started:
                record.thread.start()
        self._publish_positions()

    def _run(self, record: ServiceExport) -> None:
        log.info("export %s started", record.export_id)
        try:
            result = run_export(record.options, export_id=record.export_id, cancel=record.cancel)
        except ExportCancelled:
            self._end(record, "cancelled", "export cancelled", 130)
        except ExportError as exc:
            self._end(record, "failed", self.masked(str(exc)), exc.exit_code)
        except BaseException as exc:  # the service goes on; the export fails with one line
            log.warning("export %s failed", record.export_id, exc_info=exc)
            self._end(record, "failed", self.masked(f"export failed: {type(exc).__name__}: {error_line(exc)}"), 1)
        else:
            record.output = result.output
            record.file_identity = file_identity(result.output)
            record.result = result
            self._end(record, "succeeded", None, 0)
        finally:
            self.queue.finished(record.export_id)
            self._dispatch()

    def _end(self, record: ServiceExport, state: str, message: str | None, exit_code: int) -> None:
        with self._lock:
            if record.ended:
                return
            record.state, record.error, record.exit_code = state, message, exit_code
            record.finished_at = time.time()
        if state != "succeeded":
            _call(record.progress, "set_state", state, message or state)
        log.info("export %s %s%s", record.export_id, state, f": {message}" if message else "")

    def _remove_output(self, record: ServiceExport) -> None:
        with self._lock:
            if record.output_removed or record.output is None:
                return
            if file_identity(record.output) == record.file_identity:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(record.output)
            record.output_removed = True

    # ------------------------------------------------------------------------------------------------ status
    def _status(self, record: ServiceExport) -> dict[str, Any]:
        from actors.progress import ProgressState

        snapshot = _call(record.progress, "snapshot", timeout=5)
        if not isinstance(snapshot, dict):  # the progress actor no longer holds it (or did not answer)
            state = ProgressState(record.export_id, output=record.output, now=record.submitted_at)
            state.set_state("queued", now=record.submitted_at)
            snapshot = state.snapshot(now=record.submitted_at)
            snapshot.update({"heartbeat_age_s": 0.0, "finished_at": record.finished_at})
        position = self.queue.position(record.export_id)
        if record.ended:
            snapshot["state"] = record.state
            if record.error:
                snapshot["message"] = record.error
        elif record.state == "queued":
            snapshot["state"] = "queued"
        elif snapshot.get("state") == "queued":  # started; the progress actor is about to hear of it
            snapshot["state"] = "querying"
        elif snapshot.get("state") in SERVICE_STATES_ENDED:  # ended, and the service about to record how
            snapshot["state"] = "finalizing"
        snapshot["queue_position"] = position if record.state == "queued" else None
        snapshot["submitted_at"] = record.submitted_at
        snapshot["output"] = snapshot.get("output") or record.output
        snapshot["result"] = result_dict(record.result) if record.result is not None else None
        snapshot["error"] = record.error
        snapshot["exit_code"] = record.exit_code
        snapshot["output_removed"] = record.output_removed
        downloadable = record.state == "succeeded" and not record.output_removed
        snapshot["download"] = f"/exports/{record.export_id}/download" if downloadable else None
        return snapshot

    # --------------------------------------------------------------------------------------- the queue watch
    def _register(self, export_id: str, output: str | None) -> Any:
        from actors.progress import create_progress_actor

        progress = create_progress_actor(export_id, output=output)
        _call(progress, "set_state", "queued")
        return progress

    def _publish_positions(self) -> None:
        for export_id, position in self.queue.positions().items():
            record = self._records.get(export_id)
            if record is not None and record.progress is not None:
                with contextlib.suppress(Exception):
                    record.progress.set_queue_position.remote(position)

    def _watch_queue(self) -> None:
        """Heartbeats of the waiting exports (their driver is the service), and the cancel requests that
        reach them through the progress actor (``ray-export cancel``)."""
        import ray

        while not self._stopped.wait(QUEUE_WATCH_S):
            waiting = [self._records[i] for i in self.queue.waiting() if i in self._records]
            if not waiting:
                continue
            try:
                refs = [record.progress.heartbeat.remote() for record in waiting]
                cancels = ray.get(refs, timeout=10)
            except Exception:
                log.debug("queue heartbeat failed", exc_info=True)
                continue
            for record, cancel_requested in zip(waiting, cancels, strict=True):
                if cancel_requested and self.queue.withdraw(record.export_id):
                    record.cancel.set()
                    self._end(record, "cancelled", "export cancelled", 130)
            self._publish_positions()

    def _forget_old_records(self) -> None:
        ended = sorted((r.finished_at or 0.0, r.export_id) for r in self._records.values() if r.ended)
        for _, export_id in ended[: max(0, len(ended) - MAX_ENDED_RECORDS)]:
            self._records.pop(export_id, None)

    # ----------------------------------------------------------------------------------------------- stopping
    def stop(self, timeout_s: float = 60.0) -> list[str]:
        """Stop taking exports, cancel the waiting and running ones (their files are removed) and wait up
        to ``timeout_s`` for them; returns the ids of the exports cancelled."""
        with self._lock:
            self._stopping = True
            records = list(self._records.values())
        cancelled = []
        for record in records:
            if record.state == "queued" and self.queue.withdraw(record.export_id):
                record.cancel.set()
                self._end(record, "cancelled", "export cancelled: the service stopped", 130)
                cancelled.append(record.export_id)
            elif record.state == "running":
                record.cancel.set()
                cancelled.append(record.export_id)
        deadline = time.monotonic() + timeout_s
        for record in records:
            if record.thread is not None:
                record.thread.join(max(0.0, deadline - time.monotonic()))
        self._stopped.set()
        return cancelled


def _call(progress: Any, method: str, *args: Any, timeout: float = 10.0) -> Any:
    """``ray.get(progress.<method>.remote(*args))``, or None when it fails."""
    if progress is None:
        return None
    import ray

    try:
        return ray.get(getattr(progress, method).remote(*args), timeout=timeout)
    except Exception:
        log.debug("progress call %s failed", method, exc_info=True)
        return None
