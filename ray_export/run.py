"""Running one export: the writer actor fed from the dataset, the heartbeat, cancellation from any
thread, and removal of the export's files when it does not finish."""

from __future__ import annotations

import _thread
import contextlib
import logging
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cluster import ensure_ray
from .dataset import build_dataset, quiet_ray_data, streamed_bundles
from .errors import ExportCancelled, ExportError, error_line
from .options import MAP_STAGES, ExportOptions
from .planning import assembly_plan, plan_export, preflight
from .sources import SourceError

log = logging.getLogger("ray_export")


@dataclass
class ExportResult:
    """What a finished export reports."""

    export_id: str
    output: str
    counts: dict[str, int]
    seconds: float

    def summary_line(self) -> str:
        c = self.counts
        return (
            f"{c.get('images', 0)} images, {c.get('objects', 0)} objects, {c.get('problems', 0)} warnings, "
            f"{self.seconds:.1f} s"
        )


def new_export_id() -> str:
    """A short random id naming the export's progress actor."""
    return uuid.uuid4().hex[:12]


class _Heartbeat(threading.Thread):
    """Sends the driver heartbeat and watches the progress actor for a cancel request."""

    def __init__(self, progress: Any, cancel: threading.Event, period: float = 1.0) -> None:
        super().__init__(name="ray-export-heartbeat", daemon=True)
        self.progress = progress
        self.cancel = cancel
        self.period = period
        self.stopped = threading.Event()

    def run(self) -> None:
        import ray

        while not self.stopped.wait(self.period):
            try:
                ray.get(self.progress.heartbeat.remote(), timeout=10)
                if ray.get(self.progress.cancel_requested.remote(), timeout=10):
                    self.cancel.set()
            except Exception:  # a missed beat is not fatal; the actor judges staleness
                log.debug("heartbeat failed", exc_info=True)


class _CancelWatcher(threading.Thread):
    """Acts on a cancel request at once, while the main thread may be waiting for the next block."""

    def __init__(self, cancel: threading.Event, on_cancel: Callable[[], None]) -> None:
        super().__init__(name="ray-export-cancel", daemon=True)
        self.cancel = cancel
        self.on_cancel = on_cancel
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            if self.cancel.wait(0.1):
                if not self.stopped.is_set():
                    self.on_cancel()
                return


class _ExportRun:
    """One export's driver-side state: the phase, the actors, and the cancellation that races them."""

    def __init__(self, export_id: str, cancel: threading.Event, interrupt_main: bool) -> None:
        self.export_id = export_id
        self.cancel = cancel
        self.interrupt_main = interrupt_main
        self.lock = threading.Lock()
        self.phase = "starting"  # starting -> running -> finalizing -> done, or -> cancelling
        self.active = True  # cleared when run_export returns: no interrupt of the main thread after that
        self.started = time.time()
        self.writer: Any = None
        self.progress: Any = None
        self.output: Path | str | None = None
        self.spool_dir: Path | None = None

    def enter(self, phase: str) -> None:
        """Move to ``phase`` unless a cancel got there first."""
        with self.lock:
            if self.phase == "cancelling" or self.cancel.is_set():
                raise ExportCancelled()
            self.phase = phase

    def finished(self) -> None:
        """The ZIP is committed: from now on a cancel no longer applies (unless it came first)."""
        with self.lock:
            if self.phase == "cancelling":
                raise ExportCancelled()
            self.phase = "done"
            self.writer = None

    def set_writer(self, writer: Any) -> None:
        with self.lock:
            self.writer = writer

    def on_cancel(self) -> None:
        """Remove every file of the export and record ``cancelled`` now; the main thread unwinds after."""
        with self.lock:
            if self.phase not in ("starting", "running", "finalizing"):
                return
            committing = self.phase == "finalizing"
            self.phase = "cancelling"
        self.discard(committing)
        _final_state(self.progress, "cancelled", "export cancelled")
        with self.lock:
            if self.interrupt_main and self.active:
                _thread.interrupt_main()

    def fail(self, state: str, message: str) -> None:
        with self.lock:
            committing = self.phase in ("finalizing", "cancelling")
            self.phase = "done"
        self.discard(committing)
        _final_state(self.progress, state, message)

    def discard(self, committing: bool) -> None:
        """Stop the writer and delete the partial output and spool folder from the driver (same node).

        ``committing``: the writer may have committed the ZIP in the meantime; then the output this run
        wrote is deleted too.
        """
        import ray

        with self.lock:
            writer, self.writer = self.writer, None
        if writer is not None:
            with contextlib.suppress(Exception):  # a quick clean abort when the writer is idle
                ray.get(writer.abort.remote(), timeout=1.0)
            with contextlib.suppress(Exception):
                ray.kill(writer)
            if committing:
                time.sleep(0.3)  # let a kill that raced a commit land before looking at the output
        remove_export_files(self.output, self.spool_dir, self.started if committing else None)


def remove_export_files(output: Path | str | None, spool_dir: Path | None, written_since: float | None) -> None:
    """Delete ``<output>.partial`` and the spool folder; with ``written_since``, also an output written
    after that time (by this export). Never raises."""
    if spool_dir is not None:
        shutil.rmtree(spool_dir, ignore_errors=True)
    if output is None:
        return
    if isinstance(output, Path):
        with contextlib.suppress(OSError):
            Path(str(output) + ".partial").unlink(missing_ok=True)
        if written_since is not None:
            with contextlib.suppress(OSError):
                if output.stat().st_mtime >= written_since - 1:
                    output.unlink()
        return
    if written_since is not None:
        import pyarrow.fs as pafs

        with contextlib.suppress(Exception):
            fs, path = pafs.FileSystem.from_uri(output)
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.File and (info.mtime is None or info.mtime.timestamp() >= written_since - 1):
                fs.delete_file(path)


def make_spool_dir(output: Path | str) -> Path:
    """The folder for spooled aggregated members: beside a local output, in the temp folder otherwise."""
    if isinstance(output, Path):
        return Path(tempfile.mkdtemp(prefix=f".{output.name}.spool-", dir=output.parent))
    return Path(tempfile.mkdtemp(prefix=".ray-export-spool-"))


def run_export(
    options: ExportOptions,
    export_id: str | None = None,
    cancel: threading.Event | None = None,
    on_start: Callable[[str], None] | None = None,
    handle_signals: bool = False,
) -> ExportResult:
    """Run one export to completion on the current (or an on-demand) Ray cluster.

    Raises :class:`ExportError` (with ``exit_code``) on fatal problems and :class:`ExportCancelled`
    when ``cancel`` is set or the progress actor receives a cancel request. A cancel removes the
    export's files at once, from a watcher thread, in every phase up to the commit. With
    ``handle_signals`` (main thread only), SIGTERM and SIGINT set ``cancel`` and the main thread is
    interrupted once the files are gone; the handlers are installed after Ray starts, which installs
    handlers of its own.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from actors.progress import create_progress_actor
    from actors.zip_writer import ZipWriterActor

    started = time.time()
    export_id = export_id or new_export_id()
    cancel = cancel or threading.Event()
    if on_start:
        on_start(export_id)
    preflight(options)
    try:
        ensure_ray(options.address)
    except Exception as exc:
        raise ExportError(f"cannot start or reach Ray: {type(exc).__name__}: {error_line(exc)}", 1) from exc
    in_main = threading.current_thread() is threading.main_thread()
    if handle_signals and in_main:
        install_signal_handlers(cancel)
    run = _ExportRun(export_id, cancel, interrupt_main=handle_signals and in_main)
    try:
        run.progress = progress = create_progress_actor(export_id)
        ray.get(progress.set_state.remote("querying"))
    except Exception as exc:
        raise ExportError(f"cannot start the progress actor: {type(exc).__name__}: {error_line(exc)}", 1) from exc
    heartbeat = _Heartbeat(progress, cancel)
    heartbeat.start()
    watcher = _CancelWatcher(cancel, run.on_cancel)
    watcher.start()
    try:
        try:
            plan = plan_export(options)
        except SourceError as exc:
            raise ExportError(str(exc), exc.exit_code) from exc
        run.enter("starting")
        n = len(plan.rows)
        stage_totals = dict.fromkeys(MAP_STAGES, n)
        if not options.include_visualizations:
            stage_totals.pop("visualize")
        if not options.metrics:
            stage_totals.pop("metrics")
        ray.get(progress.set_totals.remote({**stage_totals, "write": n}))
        ray.get(progress.set_output.remote(str(plan.output)))
        quiet_ray_data()
        driver_node = ray.get_runtime_context().get_node_id()
        run.output = plan.output
        run.spool_dir = make_spool_dir(plan.output)
        assembly = assembly_plan(options, plan, run.spool_dir)
        run.set_writer(
            ZipWriterActor.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(driver_node, soft=False)
            ).remote(assembly)
        )
        dataset = build_dataset(options, plan, driver_node, progress)
        run.enter("running")
        ray.get(progress.set_state.remote("running"))
        writer = run.writer
        _feed_writer(dataset, writer, progress, cancel)
        run.enter("finalizing")
        ray.get(progress.set_state.remote("finalizing"))
        counts = ray.get(writer.finish.remote())
        run.finished()
        ray.get(progress.set_bytes.remote(counts.get("bytes", 0)))
        ray.get(progress.set_state.remote("succeeded"))
        return ExportResult(export_id, str(plan.output), counts, time.time() - started)
    except (ExportCancelled, KeyboardInterrupt) as exc:
        run.fail("cancelled", "export cancelled")
        if isinstance(exc, ExportCancelled):
            raise
        raise ExportCancelled() from exc
    except ExportError as exc:
        run.fail("failed", str(exc))
        raise
    except OSError as exc:  # also a writer-actor error caused by one (Ray errors subclass their cause)
        message = f"I/O error: {error_line(exc)}"
        run.fail("failed", message)
        raise ExportError(message, 1) from exc
    except Exception as exc:
        if cancel.is_set():
            run.fail("cancelled", "export cancelled")
            raise ExportCancelled() from exc
        message = f"{type(exc).__name__}: {error_line(exc)}"
        run.fail("failed", message)
        raise ExportError(f"export failed: {message}", 1) from exc
    finally:
        with run.lock:
            run.active = False
        watcher.stopped.set()
        heartbeat.stopped.set()


def _final_state(progress: Any, state: str, message: str) -> None:
    import ray

    try:
        ray.get(progress.set_state.remote(state, message), timeout=10)
    except Exception:
        log.debug("could not record the final state", exc_info=True)


def _feed_writer(dataset: Any, writer: Any, progress: Any, cancel: threading.Event, max_inflight: int = 4) -> None:
    """Stream result blocks (by reference) into the writer actor, with at most ``max_inflight`` calls
    outstanding while the next block is awaited."""
    import ray

    inflight: list[Any] = []

    def settle(refs: list[Any]) -> None:
        for written, problems, nbytes in ray.get(refs):
            if written:
                progress.add_done.remote("write", written)
            if problems:
                progress.add_problems.remote(problems)
            progress.set_bytes.remote(nbytes)

    with streamed_bundles(dataset, cancel) as bundles:
        for bundle in bundles:
            if cancel.is_set():
                raise ExportCancelled()
            for block_ref in bundle.block_refs:
                inflight.append(writer.add_batch.remote(block_ref))
            while len(inflight) > max_inflight:
                done, inflight = ray.wait(inflight, num_returns=1)
                settle(done)
            if inflight:  # count what the writer has written so far, without waiting
                done, inflight = ray.wait(inflight, num_returns=len(inflight), timeout=0)
                settle(done)
            if cancel.is_set():
                raise ExportCancelled()
        if cancel.is_set():  # a cancel ends the stream early
            raise ExportCancelled()
        if inflight:
            settle(inflight)


def install_signal_handlers(cancel: threading.Event) -> None:
    """SIGTERM (``ray job stop``) and SIGINT (Ctrl-C) request cancellation instead of killing the driver."""

    def handler(signum, _frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
