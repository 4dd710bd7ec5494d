"""Progress of exports: a pure state object per export, a pure registry of them, and one detached Ray
actor wrapping the registry.

``ProgressState`` holds one export's state machine and counters and computes snapshots (with the ETA
of :class:`EtaEstimator`). ``ProgressRegistry`` holds every export's state by id with the retention
rules below. Both take their time from an injected clock (``time.time`` by default; every method also
takes an explicit ``now``), so their logic is tested without waiting. ``ProgressActor`` is a thin
wrapper: a single named, detached Ray actor (``PROGRESS_ACTOR_NAME`` in namespace
``PROGRESS_NAMESPACE``) holding the registry of the cluster, so any process attached to the cluster
finds an export by its id, and many exports cost one process. :class:`ExportProgress` is a picklable
handle on one export's state in it, called like an actor handle (``progress.add_done.remote``).

Retention: a state that became terminal (or whose driver's heartbeat was lost, which snapshots report
as failed) is dropped ``keep_seconds`` later by a sweep inside the actor; at most
``MAX_RETAINED_EXPORTS`` ended exports are kept (the oldest go first).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import ray

__all__ = [
    "BAR_FORMAT",
    "DEFAULT_STALL_TIMEOUT_S",
    "ETA_FLOOR_S",
    "ETA_MAX_CHANGE_PER_S",
    "ETA_MIN_IMAGES",
    "ETA_MIN_SECONDS",
    "ETA_STALL_GAPS",
    "ETA_STALL_S",
    "ETA_WINDOW_GAPS",
    "ETA_WINDOW_S",
    "HEARTBEAT_LOST_MESSAGE",
    "HEARTBEAT_TIMEOUT_S",
    "KEEP_SECONDS",
    "MAX_RETAINED_EXPORTS",
    "PROGRESS_ACTOR_NAME",
    "PROGRESS_NAMESPACE",
    "STATES",
    "TERMINAL_STATES",
    "Clock",
    "EtaEstimator",
    "ExportProgress",
    "ProgressActor",
    "ProgressRegistry",
    "ProgressState",
    "StageRate",
    "create_progress_actor",
    "eta_text",
    "format_duration",
    "get_progress_actor",
    "list_progress_actors",
]

PROGRESS_NAMESPACE = "ray_export"
PROGRESS_ACTOR_NAME = "ray_export_progress"
#: ``queued``: waiting in an export service's queue (see ``queue_position``), before ``querying``
STATES = ("queued", "querying", "running", "finalizing", "succeeded", "failed", "cancelled")
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
HEARTBEAT_TIMEOUT_S = 30.0
HEARTBEAT_LOST_MESSAGE = "driver heartbeat lost"
KEEP_SECONDS = 600.0
MAX_RETAINED_EXPORTS = 1000
DEFAULT_STALL_TIMEOUT_S = 300.0
PROGRESS_ACTOR_MAX_CONCURRENCY = 8
SWEEP_PERIOD_S = 1.0

#: a source of wall-clock seconds (``time.time``); tests pass a fake one
Clock = Callable[[], float]


def _count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")
    return value


def _mark(bits: bytearray, indices: Any) -> int:
    """Set the bits of ``indices`` in ``bits`` (grown as needed); returns how many were not set before."""
    new = 0
    for value in indices:
        index = _count(value, "image index")
        byte, bit = divmod(index, 8)
        if byte >= len(bits):
            bits.extend(bytes(byte + 1 - len(bits)))
        if not bits[byte] >> bit & 1:
            bits[byte] |= 1 << bit
            new += 1
    return new


# --------------------------------------------------------------------------------------------------------------------
# ETA

#: a stage's rate is trusted once this many images finished after its first report ...
ETA_MIN_IMAGES = 10
#: ... and this many seconds passed between its first and its latest report
ETA_MIN_SECONDS = 10.0
#: the rate is measured over the last ETA_WINDOW_S seconds, or ETA_WINDOW_GAPS mean gaps between two
#: reports when longer (over everything since the first report while the stage is younger than that)
ETA_WINDOW_S = 30.0
ETA_WINDOW_GAPS = 8.0
#: a stage with images left, two reports or more, and no report for ETA_STALL_S seconds, or
#: ETA_STALL_GAPS mean gaps when longer, is stalled: no ETA is shown and ``eta_stalled`` is true
ETA_STALL_S = 30.0
ETA_STALL_GAPS = 5.0
#: between two snapshots the shown ETA counts down, and departs from that count-down towards the new
#: estimate by at most this fraction of itself per second (at least 1 s per second)
ETA_MAX_CHANGE_PER_S = 0.1
#: a running export with images left never shows less than this
ETA_FLOOR_S = 1.0
_ETA_MAX_POINTS = 4096


class StageRate:
    """When one stage's images finished: ``(time, images done so far)`` at each report that advanced it.

    The first report is the reference: its images took the pipeline's start-up time and are not part
    of the rate. The rate is the slope of the done count over a sliding window (the count taken as
    linear between reports); a report that is late (more than one mean gap after the latest) lowers
    the rate as if nothing had finished for the time beyond that gap.
    """

    def __init__(self) -> None:
        self.first_t: float | None = None
        self.first_done = 0
        self.last_t = 0.0
        self.done = 0
        self.reports = 0  # after the first
        self._points: deque[tuple[float, int]] = deque()

    def add(self, t: float, done: int) -> None:
        """The stage has ``done`` images finished at time ``t``."""
        if self.first_t is None:
            self.first_t = self.last_t = t
            self._points.append((t, done))
        elif t <= self.last_t:  # the same instant (or a clock step back) joins the latest report
            self._points[-1] = (self._points[-1][0], done)
        else:
            self.reports += 1
            self.last_t = t
            self._points.append((t, done))
        if self.reports == 0:
            self.first_done = done
        self.done = done
        horizon = self.last_t - 2 * self.window()
        while len(self._points) > 2 and (self._points[1][0] <= horizon or len(self._points) > _ETA_MAX_POINTS):
            self._points.popleft()

    def gap(self) -> float:
        """Mean seconds between two reports (0 before the second)."""
        if not self.reports or self.first_t is None:
            return 0.0
        return (self.last_t - self.first_t) / self.reports

    def window(self) -> float:
        """Seconds of reports the rate is measured over."""
        return max(ETA_WINDOW_S, ETA_WINDOW_GAPS * self.gap())

    def trusted(self) -> bool:
        """Enough images and time since the first report for a rate worth showing."""
        return (
            self.first_t is not None
            and self.done - self.first_done >= ETA_MIN_IMAGES
            and self.last_t - self.first_t >= ETA_MIN_SECONDS
        )

    def stalled(self, now: float) -> bool:
        """No report for ``ETA_STALL_S`` seconds or ``ETA_STALL_GAPS`` mean gaps, whichever is longer
        (only once two reports gave a gap)."""
        return self.reports > 0 and now - self.last_t > max(ETA_STALL_S, ETA_STALL_GAPS * self.gap())

    def _count_at(self, t: float) -> float:
        """The done count at time ``t``, linear between reports."""
        points = self._points
        if t <= points[0][0]:
            return float(points[0][1])
        previous = points[0]
        for point in points:
            if point[0] >= t:
                (t0, d0), (t1, d1) = previous, point
                return d0 + (d1 - d0) * (t - t0) / (t1 - t0)
            previous = point
        return float(points[-1][1])

    def rate(self, now: float) -> float:
        """Images per second at ``now`` (0.0 before the second report)."""
        if self.first_t is None:
            return 0.0
        end = self.last_t + max(0.0, now - self.last_t - self.gap())
        start = max(self.first_t, end - self.window())
        if end <= start:
            return 0.0
        return max(0.0, (self.done - self._count_at(start)) / (end - start))

    def seconds_left(self, total: int, now: float) -> float | None:
        """Seconds until ``total`` images are done at the current rate, counted down through one mean
        gap after the latest report; None when the rate is zero."""
        rate = self.rate(now)
        if rate <= 0:
            return None
        return (total - self.done) / rate - min(max(0.0, now - self.last_t), self.gap())


class EtaEstimator:
    """An export's ETA from its stages' :class:`StageRate`: the longest of the stages' times left.

    No ETA while a stage with images left has no trusted rate yet (``ETA_MIN_IMAGES`` images and
    ``ETA_MIN_SECONDS`` seconds since its first report); none either, but *stalled*, while a stage with
    images left has reported nothing for ``ETA_STALL_S`` seconds or ``ETA_STALL_GAPS`` mean gaps (a
    stage that reported once has no gap yet: the export's stall report covers it). The
    shown ETA is smoothed: between two estimates it counts down, and departs from that by at most
    ``ETA_MAX_CHANGE_PER_S`` of itself per second (at least 1 s per second); it restarts from the
    plain estimate after a stretch without one.
    """

    def __init__(self) -> None:
        self.stages: dict[str, StageRate] = {}
        self._shown: tuple[float, float] | None = None  # (seconds left, at time)

    def record(self, stage: str, t: float, done: int) -> None:
        """``stage`` has ``done`` images finished at time ``t``."""
        self.stages.setdefault(stage, StageRate()).add(t, done)

    def estimate(self, totals: dict[str, int], now: float) -> tuple[float | None, bool]:
        """``(seconds left, stalled)`` at ``now``: ``(None, False)`` while not yet meaningful,
        ``(None, True)`` while stalled."""
        longest, pending, stalled = 0.0, False, False
        for stage, total in totals.items():
            rate = self.stages.get(stage)
            if total <= (rate.done if rate is not None else 0):
                continue
            if rate is not None and rate.stalled(now):
                stalled = True
            elif rate is None or not rate.trusted():
                pending = True
            else:
                left = rate.seconds_left(total, now)
                if left is None:
                    stalled = True
                else:
                    longest = max(longest, left)
        if stalled or pending:
            self._shown = None
            return None, stalled
        return self._smooth(max(longest, ETA_FLOOR_S), now), False

    def _smooth(self, estimate: float, now: float) -> float:
        if self._shown is None or now < self._shown[1]:
            shown = estimate
        else:
            before, at = self._shown
            elapsed = now - at
            expected = max(0.0, before - elapsed)
            allowed = elapsed * max(ETA_MAX_CHANGE_PER_S * expected, 1.0)
            shown = min(max(estimate, expected - allowed), expected + allowed)
        shown = max(shown, ETA_FLOOR_S)
        self._shown = (shown, now)
        return shown


def format_duration(seconds: float) -> str:
    """``45s``, ``12m05s``, ``3h07m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def eta_text(snapshot: dict[str, Any]) -> str | None:
    """The ETA of a snapshot for display: ``12m05s``, ``stalled``, or None when there is none to show."""
    eta = snapshot.get("eta_s")
    if isinstance(eta, (int, float)) and not isinstance(eta, bool):
        return format_duration(eta)
    if snapshot.get("eta_stalled") or (snapshot.get("state") == "running" and snapshot.get("stalled")):
        return "stalled"
    return None


#: tqdm bar format for progress bars: tqdm's own time left is replaced by the snapshot's ETA (postfix)
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


class ProgressState:
    """State, per-stage counters and timing of one export; every time is wall-clock seconds, from
    ``clock`` (``time.time``) unless a method is given ``now``.

    Stage counters: ``add_images(stage, indices, failed_indices)`` marks images (by export index) as
    finished in ``stage``, some of them with a failure, so ``done`` includes ``failed``; an image
    reported again (a retried task) is counted once. ``add_done(stage, n, failed)`` adds plain counts
    (the writer's, which never repeats an image). Terminal states are final: later state changes are
    ignored (counters still update). Times are for status display only and never reach the ZIP.

    A running stage that has work waiting (fewer images done than the stage before it) and has not
    advanced for ``stall_timeout_s`` is reported as stalled, with the resources one of its tasks asks
    for (``set_stage_demands``). The ETA follows the rules of :class:`EtaEstimator`.
    """

    def __init__(
        self,
        export_id: str,
        output: str | None = None,
        now: float | None = None,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
        clock: Clock = time.time,
    ) -> None:
        if not isinstance(export_id, str) or not export_id:
            raise ValueError(f"export_id must be a non-empty string, got {export_id!r}")
        self._time = clock
        now = clock() if now is None else float(now)
        self._eta = EtaEstimator()
        self._seen: dict[str, bytearray] = {}
        self._seen_failed: dict[str, bytearray] = {}
        self.last_advance: dict[str, float] = {}
        self.stage_demands: dict[str, dict[str, float]] = {}
        self.stall_timeout_s = float(stall_timeout_s)
        self.export_id = export_id
        self.output = output
        self.state = "querying"
        self.message: str | None = None
        self.totals: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.bytes_written = 0
        self.problems = 0
        self.started_at = now
        self.updated_at = now
        self.last_heartbeat = now
        self.running_since: float | None = None
        self.finished_at: float | None = None
        self.heartbeat_timeout_s = float(heartbeat_timeout_s)
        self._cancel_requested = False
        #: with a previous export to reuse: images taken over and computed so far, and why not all
        self.reuse: dict[str, Any] | None = None
        #: the submission id of the Ray job whose driver runs the export (``ray job submit``), or None
        self.job_submission_id: str | None = None
        #: 1-based place in an export service's queue while ``queued`` (None otherwise)
        self.queue_position: int | None = None

    # ---------------------------------------------------------------------------------------------------------------
    def _clock(self, now: float | None) -> float:
        return self._time() if now is None else float(now)

    @property
    def is_terminal(self) -> bool:
        """True once succeeded, failed or cancelled."""
        return self.state in TERMINAL_STATES

    @property
    def cancel_requested(self) -> bool:
        """True once a cancel was requested (recorded apart from the state)."""
        return self._cancel_requested

    def set_state(self, state: str, message: str | None = None, now: float | None = None) -> bool:
        """Move to ``state`` (optionally with a message line); returns False when ignored (already terminal)."""
        if state not in STATES:
            raise ValueError(f"unknown progress state {state!r}; expected one of {', '.join(STATES)}")
        if self.is_terminal:
            return False
        now = self._clock(now)
        self.state = state
        if state != "queued":
            self.queue_position = None
        if message is not None:
            self.message = message
        if state in ("running", "finalizing") and self.running_since is None:
            self.running_since = now
        if state in TERMINAL_STATES:
            self.finished_at = now
        self.updated_at = now
        return True

    def set_queue_position(self, position: int | None, now: float | None = None) -> None:
        """Record the export's 1-based place in its service's queue (kept only while ``queued``)."""
        if self.state == "queued":
            self.queue_position = None if position is None else _count(position, "queue position")
        self.updated_at = self._clock(now)

    def set_output(self, output: str | None, now: float | None = None) -> None:
        """Record the output path (or URI)."""
        self.output = output
        self.updated_at = self._clock(now)

    def set_job(self, submission_id: str | None, now: float | None = None) -> None:
        """Record the Ray job (submission id) whose driver runs the export: a cancel stops that job."""
        self.job_submission_id = submission_id
        self.updated_at = self._clock(now)

    def set_totals(self, totals: dict[str, int], now: float | None = None) -> None:
        """Replace the per-stage totals (stage -> number of images the stage will process)."""
        self.totals = {str(stage): _count(total, f"total of stage {stage!r}") for stage, total in totals.items()}
        for stage in self.totals:
            self.done.setdefault(stage, 0)
            self.failed.setdefault(stage, 0)
        self.updated_at = self._clock(now)

    def add_done(self, stage: str, n: int, failed: int = 0, now: float | None = None) -> None:
        """``n`` more images finished ``stage``; ``failed`` of them failed there (``failed <= n``)."""
        _count(n, "n")
        _count(failed, "failed")
        if failed > n:
            raise ValueError(f"failed ({failed}) cannot exceed n ({n})")
        now = self._clock(now)
        self.done[stage] = self.done.get(stage, 0) + n
        self.failed[stage] = self.failed.get(stage, 0) + failed
        if n:
            self.last_advance[stage] = now
            self._eta.record(stage, now, self.done[stage])
        self.updated_at = now

    def add_images(
        self, stage: str, indices: list[int], failed_indices: list[int] = (), now: float | None = None
    ) -> None:
        """The images with these export indices finished ``stage`` (``failed_indices`` with a failure);
        an index already counted for the stage is not counted again."""
        now = self._clock(now)
        new = _mark(self._seen.setdefault(stage, bytearray()), indices)
        new_failed = _mark(self._seen_failed.setdefault(stage, bytearray()), failed_indices)
        self.done[stage] = self.done.get(stage, 0) + new
        self.failed[stage] = self.failed.get(stage, 0) + new_failed
        if new:
            self.last_advance[stage] = now
            self._eta.record(stage, now, self.done[stage])
        self.updated_at = now

    def set_stage_demands(self, demands: dict[str, dict[str, float]], stall_timeout_s: float | None = None) -> None:
        """Resources one task of each stage asks for (named when the stage stalls), and the stall time."""
        self.stage_demands = {str(stage): {str(k): float(v) for k, v in d.items()} for stage, d in demands.items()}
        if stall_timeout_s is not None:
            if not float(stall_timeout_s) > 0:
                raise ValueError(f"stall_timeout_s must be > 0, got {stall_timeout_s!r}")
            self.stall_timeout_s = float(stall_timeout_s)

    def set_bytes(self, n: int, now: float | None = None) -> None:
        """Bytes written to the output so far."""
        self.bytes_written = _count(n, "bytes")
        self.updated_at = self._clock(now)

    def set_reuse(self, counts: dict[str, int], note: str | None = None, now: float | None = None) -> None:
        """Record how many images were taken over from the previous export and how many computed
        (counts so far, see ``actors.zip_writer.new_reuse_counts``), and why it was not trusted."""
        reuse = {str(k): _count(v, f"reuse count {k!r}") for k, v in counts.items()}
        if note is not None:
            reuse["note"] = str(note)  # type: ignore[assignment]
        elif self.reuse and "note" in self.reuse:
            reuse["note"] = self.reuse["note"]
        self.reuse = reuse
        self.updated_at = self._clock(now)

    def add_problems(self, n: int, now: float | None = None) -> None:
        """``n`` more problems were recorded in the report."""
        self.problems += _count(n, "problems")
        self.updated_at = self._clock(now)

    def heartbeat(self, now: float | None = None) -> bool:
        """The driver is alive; returns whether a cancel was requested."""
        self.last_heartbeat = self._clock(now)
        return self._cancel_requested

    def request_cancel(self, now: float | None = None) -> None:
        """Record a cancel request; the driver sees it and sets the ``cancelled`` state itself."""
        self._cancel_requested = True
        self.updated_at = self._clock(now)

    # ---------------------------------------------------------------------------------------------------------------
    def heartbeat_lost(self, now: float | None = None) -> bool:
        """True when the state is not terminal and the last heartbeat is older than the timeout."""
        return not self.is_terminal and self._clock(now) - self.last_heartbeat > self.heartbeat_timeout_s

    def reported_terminal_since(self, now: float | None = None) -> float | None:
        """When the state became terminal as snapshots report it (heartbeat loss counts); None if not."""
        if self.finished_at is not None:
            return self.finished_at
        if self.heartbeat_lost(now):
            return self.last_heartbeat + self.heartbeat_timeout_s
        return None

    def _slowest_stage(self) -> str | None:
        """The stage with the smallest finished fraction of its total (ties: first in totals order)."""
        slowest, slowest_fraction = None, 2.0
        for stage, total in self.totals.items():
            fraction = min(1.0, self.done.get(stage, 0) / total) if total else 1.0
            if fraction < slowest_fraction:
                slowest, slowest_fraction = stage, fraction
        return slowest

    def stalled(self, now: float | None = None) -> dict[str, Any] | None:
        """A running stage that has work waiting (fewer images done than the stage before it) and made
        no progress for ``stall_timeout_s``: ``{"stage", "seconds", "resources"}``. Of several, the last
        one: the stages before it are held back by it. None when every stage moves or the export is not
        running."""
        now = self._clock(now)
        if self.state != "running" or self.running_since is None:
            return None
        found: dict[str, Any] | None = None
        upstream_done: int | None = None
        for stage, total in self.totals.items():
            done = min(self.done.get(stage, 0), total)
            waiting = total if upstream_done is None else min(upstream_done, total)
            upstream_done = done
            if done >= waiting:
                continue
            since = max(self.last_advance.get(stage, self.running_since), self.running_since)
            if now - since >= self.stall_timeout_s:
                found = {"stage": stage, "seconds": now - since, "resources": dict(self.stage_demands.get(stage, {}))}
        return found

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Plain-dict view for status displays (JSON-serialisable)."""
        now = self._clock(now)
        state, message = self.state, self.message
        if self.heartbeat_lost(now):
            state, message = "failed", HEARTBEAT_LOST_MESSAGE

        slowest = self._slowest_stage()
        images_total = self.totals[slowest] if slowest is not None else None
        images_done = min(self.done.get(slowest, 0), images_total) if slowest is not None else 0
        fraction = (images_done / images_total if images_total else 1.0) if slowest is not None else None

        throughput: float | None = None
        if self.running_since is not None:
            elapsed = (self.finished_at if self.finished_at is not None else now) - self.running_since
            if elapsed > 0:
                throughput = images_done / elapsed

        eta: float | None = None
        eta_stalled = False
        stalled = self.stalled(now) if state == "running" else None
        if state == "succeeded":
            eta = 0.0
        elif state == "running" and images_total is not None:
            if images_total == images_done:
                eta = 0.0
            else:
                eta, eta_stalled = self._eta.estimate(self.totals, now)
                if stalled is not None:
                    eta, eta_stalled = None, True

        return {
            "export_id": self.export_id,
            "state": state,
            "totals": dict(self.totals),
            "done": dict(self.done),
            "failed": dict(self.failed),
            "images_total": images_total,
            "images_done": images_done,
            "fraction": fraction,
            "bytes_written": self.bytes_written,
            "throughput_images_per_s": throughput,
            "eta_s": eta,
            "eta_stalled": eta_stalled,
            "problems": self.problems,
            "output": self.output,
            "message": message,
            "cancel_requested": self._cancel_requested,
            "stalled": stalled,
            "started_at": self.started_at,
            "running_since": self.running_since,
            "finished_at": self.finished_at,
            "updated_at": self.updated_at,
            "heartbeat_age_s": max(0.0, now - self.last_heartbeat),
            "reuse": dict(self.reuse) if self.reuse is not None else None,
            "job_submission_id": self.job_submission_id,
            "queue_position": self.queue_position if state == "queued" else None,
        }


# --------------------------------------------------------------------------------------------------------------------
# Ray actor


#: ProgressState methods an :class:`ExportProgress` may call through the actor
_STATE_CALLS = frozenset(
    {
        "set_state", "set_output", "set_totals", "add_done", "add_images", "set_bytes", "add_problems",
        "heartbeat", "request_cancel", "set_stage_demands", "snapshot", "set_reuse", "set_job", "set_queue_position",
    }
)  # fmt: skip


class UnknownExport(KeyError):
    """No export with this id is held (never started here, or dropped after its retention time)."""


class ProgressRegistry:
    """Every export's :class:`ProgressState` by id, each dropped ``keep_seconds`` after it (reportedly)
    ended, and at most ``max_retained`` ended ones; thread-safe. Times come from ``clock``."""

    def __init__(self, max_retained: int = MAX_RETAINED_EXPORTS, clock: Clock = time.time) -> None:
        self._states: dict[str, ProgressState] = {}
        self._keep: dict[str, float] = {}
        self._lock = threading.Lock()
        self._max_retained = int(max_retained)
        self._clock = clock

    def register(
        self,
        export_id: str,
        keep_seconds: float = KEEP_SECONDS,
        output: str | None = None,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
    ) -> bool:
        """Hold a new export's state (an id already held keeps its state); returns whether it is new."""
        with self._lock:
            if export_id in self._states:
                return False
            self._states[export_id] = ProgressState(
                export_id, output=output, heartbeat_timeout_s=heartbeat_timeout_s, clock=self._clock
            )
            self._keep[export_id] = float(keep_seconds)
            return True

    def call(self, export_id: str, method: str, *args: Any) -> Any:
        """Call a :class:`ProgressState` method of one export."""
        if method not in _STATE_CALLS:
            raise AttributeError(f"progress has no method {method!r}")
        with self._lock:
            return getattr(self._state(export_id), method)(*args)

    def _state(self, export_id: str) -> ProgressState:
        state = self._states.get(export_id)
        if state is None:
            raise UnknownExport(export_id)
        return state

    def cancel_requested(self, export_id: str) -> bool:
        """Whether a cancel of ``export_id`` was requested."""
        with self._lock:
            return self._state(export_id).cancel_requested

    def has(self, export_id: str) -> bool:
        """Whether ``export_id`` is held."""
        with self._lock:
            return export_id in self._states

    def export_ids(self) -> list[str]:
        """Ids of the exports held, sorted."""
        with self._lock:
            return sorted(self._states)

    def sweep(self, now: float | None = None) -> list[str]:
        """Drop the exports past their retention time, then the oldest ended ones beyond the cap;
        returns the ids dropped."""
        now = self._clock() if now is None else float(now)
        with self._lock:
            ended = {}
            for export_id, state in self._states.items():
                since = state.reported_terminal_since(now)
                if since is not None:
                    ended[export_id] = since
            dropped = [i for i, since in ended.items() if now >= since + self._keep[i]]
            kept_ended = sorted((since, i) for i, since in ended.items() if i not in dropped)
            dropped += [i for _, i in kept_ended[: max(0, len(kept_ended) - self._max_retained)]]
            for export_id in dropped:
                self._states.pop(export_id, None)
                self._keep.pop(export_id, None)
            return dropped


@ray.remote(num_cpus=0, max_concurrency=PROGRESS_ACTOR_MAX_CONCURRENCY)
class ProgressActor:
    """The one detached actor holding the cluster's :class:`ProgressRegistry`, swept every
    ``sweep_period_s`` (never when None). The actor's own clock is used for every time, so driver
    clock skew is harmless; ``clock`` (picklable) replaces it in tests."""

    def __init__(
        self,
        max_retained: int = MAX_RETAINED_EXPORTS,
        sweep_period_s: float | None = SWEEP_PERIOD_S,
        clock: Clock | None = None,
    ) -> None:
        self._registry = ProgressRegistry(max_retained, clock or time.time)
        if sweep_period_s is not None:
            threading.Thread(
                target=self._sweep_forever, args=(float(sweep_period_s),), name="progress-retention", daemon=True
            ).start()

    def register(
        self,
        export_id: str,
        keep_seconds: float = KEEP_SECONDS,
        output: str | None = None,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
    ) -> bool:
        """See :meth:`ProgressRegistry.register`."""
        return self._registry.register(export_id, keep_seconds, output, heartbeat_timeout_s)

    def call(self, export_id: str, method: str, *args: Any) -> Any:
        """See :meth:`ProgressRegistry.call`."""
        return self._registry.call(export_id, method, *args)

    def cancel_requested(self, export_id: str) -> bool:
        """See :meth:`ProgressRegistry.cancel_requested`."""
        return self._registry.cancel_requested(export_id)

    def has(self, export_id: str) -> bool:
        """See :meth:`ProgressRegistry.has`."""
        return self._registry.has(export_id)

    def export_ids(self) -> list[str]:
        """See :meth:`ProgressRegistry.export_ids`."""
        return self._registry.export_ids()

    def sweep(self, now: float | None = None) -> list[str]:
        """See :meth:`ProgressRegistry.sweep`."""
        return self._registry.sweep(now)

    def _sweep_forever(self, period_s: float) -> None:
        while True:
            time.sleep(period_s)
            self._registry.sweep()


class _StateCall:
    """``progress.<method>.remote(*args)`` on one export's state in the progress actor."""

    def __init__(self, actor: ray.actor.ActorHandle, export_id: str, method: str) -> None:
        self._actor, self._export_id, self._method = actor, export_id, method

    def remote(self, *args: Any) -> ray.ObjectRef:
        if self._method == "cancel_requested":
            return self._actor.cancel_requested.remote(self._export_id)
        return self._actor.call.remote(self._export_id, self._method, *args)


class ExportProgress:
    """A picklable handle on one export's progress, used like an actor handle:
    ``ray.get(progress.snapshot.remote())``, ``progress.add_images.remote("copy", [0, 1])``."""

    def __init__(self, actor: ray.actor.ActorHandle, export_id: str) -> None:
        self.actor = actor
        self.export_id = export_id

    def __getattr__(self, method: str) -> _StateCall:
        if method not in _STATE_CALLS and method != "cancel_requested":
            raise AttributeError(method)
        return _StateCall(self.actor, self.export_id, method)

    def __reduce__(self):
        return ExportProgress, (self.actor, self.export_id)


def _progress_actor(create: bool) -> ray.actor.ActorHandle | None:
    if create:
        return ProgressActor.options(
            name=PROGRESS_ACTOR_NAME,
            namespace=PROGRESS_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_concurrency=PROGRESS_ACTOR_MAX_CONCURRENCY,
        ).remote()
    try:
        return ray.get_actor(PROGRESS_ACTOR_NAME, namespace=PROGRESS_NAMESPACE)
    except ValueError:
        return None


def create_progress_actor(
    export_id: str,
    keep_seconds: float = KEEP_SECONDS,
    output: str | None = None,
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
) -> ExportProgress:
    """Register ``export_id`` in the cluster's progress actor (started on first use; an id already held
    keeps its state) and return its handle; needs a connected Ray."""
    if not isinstance(export_id, str) or not export_id:
        raise ValueError(f"export_id must be a non-empty string, got {export_id!r}")
    actor = _progress_actor(create=True)
    ray.get(actor.register.remote(export_id, keep_seconds, output, heartbeat_timeout_s))
    return ExportProgress(actor, export_id)


def start_progress_actor(
    export_id: str, keep_seconds: float = KEEP_SECONDS, heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S
) -> tuple[ExportProgress, ray.ObjectRef]:
    """As :func:`create_progress_actor`, without waiting: the handle, and the reference that is ready once
    ``export_id`` is registered (getting it raises what the actor's start or the registration raised)."""
    if not isinstance(export_id, str) or not export_id:
        raise ValueError(f"export_id must be a non-empty string, got {export_id!r}")
    actor = _progress_actor(create=True)
    return ExportProgress(actor, export_id), actor.register.remote(export_id, keep_seconds, None, heartbeat_timeout_s)


def get_progress_actor(export_id: str) -> ExportProgress | None:
    """Handle on the progress of ``export_id``, or None when the cluster holds none."""
    actor = _progress_actor(create=False)
    if actor is None:
        return None
    try:
        held = ray.get(actor.has.remote(export_id), timeout=30)
    except ray.exceptions.RayActorError:
        return None
    return ExportProgress(actor, export_id) if held else None


def list_progress_actors() -> list[str]:
    """Export ids whose progress the cluster holds, sorted."""
    actor = _progress_actor(create=False)
    if actor is None:
        return []
    try:
        return ray.get(actor.export_ids.remote(), timeout=30)
    except ray.exceptions.RayActorError:
        return []
