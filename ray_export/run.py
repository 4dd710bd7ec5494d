"""Running one export: the writer actor fed from the dataset, the heartbeat, cancellation from any
thread, and removal of the export's files when it does not finish."""

from __future__ import annotations

import _thread
import contextlib
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cluster import RayUnreachable, check_read_fits, cluster_cpus, ensure_ray
from .dataset import build_dataset, preload_dataset_modules, quiet_ray_data, streamed_bundles, warm_up_cluster
from .errors import ExportCancelled, ExportError, error_line, ray_error_line
from .locations import uri_for_display
from .options import MAP_STAGES, ExportOptions
from .output_files import OutputFiles, OutputLocked, UnsafeOutputPath, remove_export_files, spool_folder
from .planning import CheckedExport, ExportPlan, assembly_plan, check_export, open_reuse, plan_export
from .ray_address import job_submission_id
from .reuse import PreviousExport
from .sources import SourceError
from .writers import WriterGroup, writer_count

log = logging.getLogger("ray_export")


#: The milestones of an export's fixed cost, in seconds from its start (see :class:`ExportTimings`).
MILESTONES = (
    "ray_ready", "progress_ready", "plan_ready", "writer_ready", "actors_ready", "first_batch_written",
    "last_image_written", "committed",
)  # fmt: skip


class ExportTimings:
    """When an export reached each of its milestones (:data:`MILESTONES`), in seconds from its start.

    Marks come from any thread; each milestone keeps its first mark. ``actors_ready`` is the later of
    ``progress_ready`` and ``writer_ready``; ``finishing`` (in :meth:`as_dict`) is the time from the last
    image written to the committed ZIP.
    """

    def __init__(self, started: float) -> None:
        self.started = started
        self._lock = threading.Lock()
        self._marks: dict[str, float] = {}

    def mark(self, milestone: str, at: float | None = None) -> None:
        """Record ``milestone`` as reached now (or at the wall-clock time ``at``), unless already recorded."""
        if milestone not in MILESTONES:
            raise ValueError(f"unknown milestone {milestone!r}")
        seconds = max(0.0, (time.time() if at is None else at) - self.started)
        with self._lock:
            self._marks.setdefault(milestone, seconds)
            if "progress_ready" in self._marks and "writer_ready" in self._marks:
                self._marks.setdefault("actors_ready", max(self._marks["progress_ready"], self._marks["writer_ready"]))

    def __contains__(self, milestone: str) -> bool:
        with self._lock:
            return milestone in self._marks

    def as_dict(self) -> dict[str, float]:
        """The milestones reached, in :data:`MILESTONES` order, plus ``finishing`` once committed."""
        with self._lock:
            out = {name: round(self._marks[name], 4) for name in MILESTONES if name in self._marks}
        if "committed" in out and "last_image_written" in out:
            out["finishing"] = round(max(0.0, out["committed"] - out["last_image_written"]), 4)
        return out


@dataclass
class ExportResult:
    """What a finished export reports.

    ``timings``: its fixed cost, seconds from the start of the export to each milestone of
    :data:`MILESTONES` (``ray_ready``, ``progress_ready``, ``plan_ready``, ``writer_ready``,
    ``actors_ready``, ``first_batch_written``, ``last_image_written``, ``committed``) and ``finishing``
    (last image written -> ZIP committed). Planning runs beside Ray's start, so ``plan_ready`` may come
    first.
    """

    export_id: str
    output: str
    counts: dict[str, int]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    #: with a previous export given (``reuse``): images taken over and computed (see ``reuse_line``)
    reuse: dict[str, Any] | None = None

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


#: How long Ray's start waits for the light query's usage checks (project, image ids, output): a usage
#: error found by then is reported without starting Ray; a slower query goes on while Ray starts.
USAGE_CHECK_WAIT_S = 1.5


class _Planning(threading.Thread):
    """Runs :func:`plan_export` (the light query: it needs neither Ray nor the actors) while Ray starts,
    then imports Ray Data for the dataset built later."""

    def __init__(self, export: CheckedExport, timings: ExportTimings) -> None:
        super().__init__(name="ray-export-plan", daemon=True)
        self.export = export
        self.timings = timings
        self.plan: ExportPlan | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        #: set once the usage checks passed, or planning ended (with :attr:`error` when it failed)
        self.checked = threading.Event()

    def run(self) -> None:
        try:
            self.plan = plan_export(self.export, on_checked=self.checked.set)
            self.timings.mark("plan_ready")
        except BaseException as exc:  # raised in the export's thread by result()
            self.error = exc
        finally:
            self.checked.set()
            self.done.set()
        preload_dataset_modules()  # Ray is still starting: take the import off the export's path

    def raise_early_error(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the usage checks; raise an export error planning found by then
        (an unknown project, no images, an unreachable database), before anything starts Ray."""
        if not self.checked.wait(timeout) or self.error is None:
            return
        if isinstance(self.error, SourceError):
            raise ExportError(str(self.error), self.error.exit_code) from self.error
        if isinstance(self.error, ExportError):
            raise self.error

    def result(self, cancel: threading.Event) -> ExportPlan:
        """The plan, or the exception planning raised; waits in short steps, so that a cancel (or an
        interrupt of the main thread) ends the wait."""
        while not self.done.wait(0.05):
            if cancel.is_set():
                raise ExportCancelled()
        if self.error is not None:
            raise self.error
        assert self.plan is not None
        return self.plan


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
        #: the ZIP writer actors (one, or several writing segments)
        self.writers: WriterGroup | None = None
        self.progress: Any = None
        self.output: Path | str | None = None
        #: the address of the driver's node (where the writer runs)
        self.driver_ip: str | None = None
        #: the lock taken once the default output name is known (a named output is locked before Ray starts)
        self.output_lock: OutputFiles | None = None

    def enter(self, phase: str) -> None:
        """Move to ``phase`` unless a cancel got there first."""
        with self.lock:
            if self.phase == "cancelling" or self.cancel.is_set():
                raise ExportCancelled()
            self.phase = phase

    def finished(self) -> None:
        """The ZIP is committed: from now on a cancel no longer applies (unless it came first). The
        writers (detached actors) are ended."""
        with self.lock:
            if self.phase == "cancelling":
                raise ExportCancelled()
            self.phase = "done"
            writers, self.writers = self.writers, None
        if writers is not None:
            writers.kill()

    def actor_names(self) -> dict[str, str]:
        """What the export's actors are, by actor id (hex)."""
        names = self.writers.actor_names() if self.writers is not None else {}
        with contextlib.suppress(Exception):
            names[self.progress._actor_id.hex()] = "the progress actor"
        return names

    def set_writers(self, writers: WriterGroup) -> None:
        with self.lock:
            self.writers = writers

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

    def fail(self, state: str, message: str) -> str:
        """Remove the export's files and record ``state``; returns ``message``, naming the files that
        could not be removed, if any."""
        with self.lock:
            committing = self.phase in ("finalizing", "cancelling")
            self.phase = "done"
        left = self.discard(committing)
        if left:
            message += f"; could not remove {', '.join(str(p) for p in left)}"
        _final_state(self.progress, state, message)
        return message

    def discard(self, committing: bool) -> list[Path]:
        """Stop the writers (an upload of several is aborted) and delete the partial output and spool
        folder from the driver (same node).

        ``committing``: the writer may have committed the ZIP in the meantime; then the output this run
        wrote is deleted too.
        """
        with self.lock:
            writers, self.writers = self.writers, None
        if writers is not None:
            writers.discard()
            if committing:
                time.sleep(0.3)  # let a kill that raced a commit land before looking at the output
        return remove_export_files(self.output, self.started if committing else None, self.export_id)


def run_export(
    options: ExportOptions | CheckedExport,
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
    handlers of its own. A local output is locked for the whole run (see :mod:`ray_export.output_files`).
    """
    started = time.time()
    export_id = export_id or new_export_id()
    cancel = cancel or threading.Event()
    if on_start:
        on_start(export_id)
    checked = check_export(options)  # once: the later layers read what it settled
    output_lock: OutputFiles | None = None
    if isinstance(checked.output, Path):
        output_lock = lock_output(checked.output, export_id)
    try:
        return _run_locked(checked, export_id, cancel, handle_signals, started, output_lock)
    finally:
        if output_lock is not None:
            output_lock.release()


def lock_output(output: Path, export_id: str) -> OutputFiles:
    """Take the output's lock for this export (removing what dead exports left beside it) or raise a
    usage error naming the export that holds it, or the path beside the output it refuses to open."""
    lock = OutputFiles(output, export_id)
    try:
        removed = lock.start()
    except (OutputLocked, UnsafeOutputPath) as exc:
        raise ExportError(str(exc), 2) from None
    except OSError as exc:
        raise ExportError(f"output {output}: cannot take its lock file: {error_line(exc)}", 2) from exc
    if removed:
        log.info("removed files left by an export that died: %s", ", ".join(p.name for p in removed))
    return lock


def _run_locked(
    checked: CheckedExport,
    export_id: str,
    cancel: threading.Event,
    handle_signals: bool,
    started: float,
    output_lock: OutputFiles | None,
) -> ExportResult:
    import ray

    from actors.progress import start_progress_actor

    options = checked.options
    timings = ExportTimings(started)
    planning = _Planning(checked, timings)
    planning.start()
    planning.raise_early_error(USAGE_CHECK_WAIT_S)
    try:
        ensure_ray(options.address)
    except RayUnreachable as exc:
        raise ExportError(f"cannot reach Ray: {exc}", 1) from None
    except Exception as exc:
        raise ExportError(f"cannot start or reach Ray: {type(exc).__name__}: {error_line(exc)}", 1) from exc
    timings.mark("ray_ready")
    check_read_fits(options)
    in_main = threading.current_thread() is threading.main_thread()
    if handle_signals and in_main:
        install_signal_handlers(cancel)
    run = _ExportRun(export_id, cancel, interrupt_main=handle_signals and in_main)
    try:
        # the progress actor starts (on first use in the cluster) while the plan and the writer are made
        run.progress, registered = start_progress_actor(export_id)
    except Exception as exc:
        raise ExportError(f"cannot start the progress actor: {type(exc).__name__}: {error_line(exc)}", 1) from exc
    warm_up_cluster()  # Ray Data's actors and the stage imports start now, beside the export's own start
    progress = run.progress
    watcher = _CancelWatcher(cancel, run.on_cancel)
    watcher.start()
    heartbeat: _Heartbeat | None = None
    try:
        try:
            plan = planning.result(cancel)
        except SourceError as exc:
            raise ExportError(str(exc), exc.exit_code) from exc
        if output_lock is None and isinstance(plan.output, Path):  # the default name, known only now
            output_lock = lock_output(plan.output, export_id)
            run.output_lock = output_lock
        previous = open_reuse(options, plan)
        if previous is not None and previous.reason:
            log.warning("previous export not used, every image is computed: %s", previous.reason)
        run.enter("starting")
        driver_node = ray.get_runtime_context().get_node_id()
        run.driver_ip = ray.util.get_node_ip_address()
        run.output = plan.output
        assembly = assembly_plan(options, plan, spool_folder(plan.output), export_id, previous)
        count = writer_count(options.writers, plan.output, cluster_cpus)
        run.set_writers(writers := WriterGroup.create(assembly, export_id, count, driver_node))
        writer_ready = _mark_when_ready(writers.first, timings)
        try:
            ray.get(registered)
            ray.get(progress.set_state.remote("querying"))
            submission_id = job_submission_id()
            if submission_id is not None:  # a `ray job submit` driver: a cancel stops the job (STOPPED)
                ray.get(progress.set_job.remote(submission_id))
        except Exception as exc:
            raise ExportError(f"cannot start the progress actor: {type(exc).__name__}: {error_line(exc)}", 1) from exc
        timings.mark("progress_ready")
        heartbeat = _Heartbeat(progress, cancel)
        heartbeat.start()
        n = len(plan.rows)
        stage_totals = dict.fromkeys(MAP_STAGES, n)
        if not options.include_visualizations:
            stage_totals.pop("visualize")
        if not options.metrics:
            stage_totals.pop("metrics")
        ray.get(progress.set_totals.remote({**stage_totals, "write": n}))
        ray.get(progress.set_output.remote(uri_for_display(str(plan.output))))
        quiet_ray_data()
        # a failed task is reported once, as the export's error line (details in the log), not also by Ray Data
        logging.getLogger("ray.data._internal.execution.streaming_executor_state").setLevel(logging.CRITICAL)
        dataset = build_dataset(options, plan, driver_node, progress, previous.source if previous else None)
        run.enter("running")
        ray.get(progress.set_state.remote("running"))
        if previous is not None:
            ray.get(progress.set_reuse.remote({}, previous.reason))
        feed = None
        if writers.segmented:
            feed = writers.feed(dataset, progress, cancel, timings=timings, track_reuse=previous is not None)
        else:
            _feed_writer(dataset, writers.first, progress, cancel, timings=timings, track_reuse=previous is not None)
        run.enter("finalizing")
        ray.get(progress.set_state.remote("finalizing"))
        counts = writers.finish(feed)
        timings.mark("committed")
        run.finished()
        reuse = reuse_summary(counts.pop("reuse", {}), previous)
        ray.get(progress.set_bytes.remote(counts.get("bytes", 0)))
        if reuse is not None:
            ray.get(progress.set_reuse.remote({k: v for k, v in reuse.items() if k != "note"}))
        ray.get(progress.set_state.remote("succeeded"))
        writer_ready.join(timeout=1.0)  # it answered every call: its mark is (about to be) recorded
        log.info("export %s fixed cost (s from its start at %.3f): %s", export_id, started, timings.as_dict())
        return ExportResult(
            export_id, uri_for_display(str(plan.output)), counts, time.time() - started, timings.as_dict(), reuse
        )
    except (ExportCancelled, KeyboardInterrupt) as exc:
        run.fail("cancelled", "export cancelled")
        if isinstance(exc, ExportCancelled):
            raise
        raise ExportCancelled() from exc
    except ExportError as exc:
        message = run.fail("failed", str(exc))
        if message == str(exc):
            raise
        raise ExportError(message, exc.exit_code) from exc
    except SourceError as exc:  # also a read task's (Ray errors subclass their cause)
        cause = getattr(exc, "cause", exc)
        message = run.fail("failed", str(cause) if isinstance(cause, SourceError) else error_line(exc))
        raise ExportError(message, exc.exit_code) from None
    except OSError as exc:  # also a writer-actor error caused by one
        log.info("export %s failed", export_id, exc_info=exc)
        message = run.fail("failed", f"I/O error: {error_line(exc)}")
        raise ExportError(message, 1) from None
    except Exception as exc:
        if cancel.is_set():
            run.fail("cancelled", "export cancelled")
            raise ExportCancelled() from exc
        log.info("export %s failed", export_id, exc_info=exc)
        line = ray_error_line(exc, run.actor_names(), run.driver_ip)
        message = run.fail("failed", line or f"export failed: {type(exc).__name__}: {error_line(exc)}")
        raise ExportError(message, 1) from None
    finally:
        with run.lock:
            run.active = False
        watcher.stopped.set()
        if heartbeat is not None:
            heartbeat.stopped.set()
        if run.output_lock is not None:
            run.output_lock.release()


def _final_state(progress: Any, state: str, message: str) -> None:
    import ray

    try:
        ray.get(progress.set_state.remote(state, message), timeout=10)
    except Exception:
        log.debug("could not record the final state", exc_info=True)


def reuse_summary(counts: dict[str, int], previous: PreviousExport | None) -> dict[str, Any] | None:
    """The reuse counts of a finished export; an untrusted previous export counts every image as
    computed for that reason, which the ``note`` gives."""
    if previous is None:
        return None
    summary: dict[str, Any] = dict(counts)
    if previous.source is None:
        summary["computed_not_trusted"] = summary.get("computed", 0)
        summary["note"] = previous.reason
    return summary


def _mark_when_ready(writer: Any, timings: ExportTimings) -> threading.Thread:
    """Mark ``writer_ready`` once the writer actor's constructor has run, from a thread (nothing waits for
    it: the first ``add_batch`` does). A writer that fails to start leaves the mark out; its error comes
    from the export's own calls."""
    import ray

    def wait() -> None:
        with contextlib.suppress(Exception):
            ray.get(writer.__ray_ready__.remote())
            timings.mark("writer_ready")

    thread = threading.Thread(target=wait, name="ray-export-writer-ready", daemon=True)
    thread.start()
    return thread


#: Most bytes of result blocks handed to the writer and not yet written (with at least one block).
MAX_INFLIGHT_BYTES = 256 << 20


def _feed_writer(
    dataset: Any,
    writer: Any,
    progress: Any,
    cancel: threading.Event,
    max_inflight: int = 4,
    timings: ExportTimings | None = None,
    track_reuse: bool = False,
    max_inflight_bytes: int = MAX_INFLIGHT_BYTES,
) -> None:
    """Stream result blocks (by reference) into the writer actor, with at most ``max_inflight`` calls
    and ``max_inflight_bytes`` of blocks outstanding (but always one) while the next block is awaited:
    each outstanding block stays in the object store until the writer is done with it. ``timings``
    gets ``first_batch_written`` and ``last_image_written`` (when the driver learnt of them);
    ``track_reuse``: pass the writer's reuse counts on to the progress actor."""
    import ray

    inflight: list[Any] = []
    block_bytes: dict[Any, int] = {}
    last_written: list[float] = []

    def settle(refs: list[Any]) -> None:
        for ref in refs:
            block_bytes.pop(ref, None)
        for written, problems, nbytes, reuse in ray.get(refs):
            if written:
                if timings is not None:  # the writer answered: it is ready (if its own mark is late)
                    timings.mark("writer_ready")
                    timings.mark("first_batch_written")
                last_written[:] = [time.time()]
                progress.add_done.remote("write", written)
            if problems:
                progress.add_problems.remote(problems)
            progress.set_bytes.remote(nbytes)
            if track_reuse and written:
                progress.set_reuse.remote(reuse)

    with streamed_bundles(dataset, cancel) as bundles:
        for bundle in bundles:
            if cancel.is_set():
                raise ExportCancelled()
            for block_ref, metadata in zip(bundle.block_refs, bundle.metadata, strict=True):
                call = writer.add_batch.remote(block_ref)
                inflight.append(call)
                block_bytes[call] = int(metadata.size_bytes or 0)
            while len(inflight) > 1 and (
                len(inflight) > max_inflight or sum(block_bytes.values()) > max_inflight_bytes
            ):
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
    if timings is not None and last_written:
        timings.mark("last_image_written", at=last_written[0])


def install_signal_handlers(cancel: threading.Event) -> None:
    """SIGTERM (``ray job stop``) and SIGINT (Ctrl-C) request cancellation instead of killing the driver."""

    def handler(signum, _frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
