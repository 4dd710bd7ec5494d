"""Progress of exports: a pure state object per export and one detached Ray actor holding them all.

``ProgressState`` holds one export's state machine and counters and computes snapshots from an injected
clock. ``ProgressActor`` is a single named, detached Ray actor (``PROGRESS_ACTOR_NAME`` in namespace
``PROGRESS_NAMESPACE``) holding the states of every export of the cluster, so any process attached to
the cluster finds an export by its id, and many exports cost one process. :class:`ExportProgress` is a
picklable handle on one export's state in it, called like an actor handle (``progress.add_done.remote``).

Retention: a state that became terminal (or whose driver's heartbeat was lost, which snapshots report
as failed) is dropped ``keep_seconds`` later by a sweep inside the actor; at most
``MAX_RETAINED_EXPORTS`` ended exports are kept (the oldest go first).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ray

__all__ = [
    "DEFAULT_STALL_TIMEOUT_S",
    "HEARTBEAT_LOST_MESSAGE",
    "HEARTBEAT_TIMEOUT_S",
    "KEEP_SECONDS",
    "MAX_RETAINED_EXPORTS",
    "PROGRESS_ACTOR_NAME",
    "PROGRESS_NAMESPACE",
    "STATES",
    "TERMINAL_STATES",
    "ExportProgress",
    "ProgressActor",
    "ProgressState",
    "create_progress_actor",
    "get_progress_actor",
    "list_progress_actors",
]

PROGRESS_NAMESPACE = "ray_export"
PROGRESS_ACTOR_NAME = "ray_export_progress"
STATES = ("querying", "running", "finalizing", "succeeded", "failed", "cancelled")
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
HEARTBEAT_TIMEOUT_S = 30.0
HEARTBEAT_LOST_MESSAGE = "driver heartbeat lost"
KEEP_SECONDS = 600.0
MAX_RETAINED_EXPORTS = 1000
DEFAULT_STALL_TIMEOUT_S = 300.0
PROGRESS_ACTOR_MAX_CONCURRENCY = 8
SWEEP_PERIOD_S = 1.0


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


class ProgressState:
    """State, per-stage counters and timing of one export; every time is wall-clock seconds (``time.time()``).

    Stage counters: ``add_images(stage, indices, failed_indices)`` marks images (by export index) as
    finished in ``stage``, some of them with a failure, so ``done`` includes ``failed``; an image
    reported again (a retried task) is counted once. ``add_done(stage, n, failed)`` adds plain counts
    (the writer's, which never repeats an image). Terminal states are final: later state changes are
    ignored (counters still update). Times are for status display only and never reach the ZIP.

    A running stage that has work waiting (fewer images done than the stage before it) and has not
    advanced for ``stall_timeout_s`` is reported as stalled, with the resources one of its tasks asks
    for (``set_stage_demands``).
    """

    def __init__(
        self,
        export_id: str,
        output: str | None = None,
        now: float | None = None,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
    ) -> None:
        if not isinstance(export_id, str) or not export_id:
            raise ValueError(f"export_id must be a non-empty string, got {export_id!r}")
        now = time.time() if now is None else float(now)
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

    # ---------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _clock(now: float | None) -> float:
        return time.time() if now is None else float(now)

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
        if message is not None:
            self.message = message
        if state in ("running", "finalizing") and self.running_since is None:
            self.running_since = now
        if state in TERMINAL_STATES:
            self.finished_at = now
        self.updated_at = now
        return True

    def set_output(self, output: str | None, now: float | None = None) -> None:
        """Record the output path (or URI)."""
        self.output = output
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

    def _eta(self, now: float) -> float | None:
        """Seconds left: the longest of each stage's remaining images over its own rate so far (stages
        that have not started are left out), so an estimate exists from the first finished batch."""
        if self.running_since is None:
            return None
        elapsed = now - self.running_since
        longest: float | None = None
        for stage, total in self.totals.items():
            done = min(self.done.get(stage, 0), total)
            if done == 0 or elapsed <= 0:
                continue
            left = (total - done) / (done / elapsed)
            longest = left if longest is None else max(longest, left)
        return longest

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
        if state == "succeeded":
            eta = 0.0
        elif state == "running" and images_total is not None:
            eta = 0.0 if images_total == images_done else self._eta(now)
        stalled = self.stalled(now) if state == "running" else None

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
        }


# --------------------------------------------------------------------------------------------------------------------
# Ray actor


#: ProgressState methods an :class:`ExportProgress` may call through the actor
_STATE_CALLS = frozenset(
    {
        "set_state", "set_output", "set_totals", "add_done", "add_images", "set_bytes", "add_problems",
        "heartbeat", "request_cancel", "set_stage_demands", "snapshot", "set_reuse",
    }
)  # fmt: skip


class UnknownExport(KeyError):
    """No export with this id is held (never started here, or dropped after its retention time)."""


@ray.remote(num_cpus=0, max_concurrency=PROGRESS_ACTOR_MAX_CONCURRENCY)
class ProgressActor:
    """The one detached actor holding every export's :class:`ProgressState`, each dropped
    ``keep_seconds`` after it (reportedly) ended. The actor's own clock is used for every time, so
    driver clock skew is harmless."""

    def __init__(self, max_retained: int = MAX_RETAINED_EXPORTS, sweep_period_s: float | None = SWEEP_PERIOD_S) -> None:
        self._states: dict[str, ProgressState] = {}
        self._keep: dict[str, float] = {}
        self._lock = threading.Lock()
        self._max_retained = int(max_retained)
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
        """Hold a new export's state (an id already held keeps its state); returns whether it is new."""
        with self._lock:
            if export_id in self._states:
                return False
            self._states[export_id] = ProgressState(export_id, output=output, heartbeat_timeout_s=heartbeat_timeout_s)
            self._keep[export_id] = float(keep_seconds)
            return True

    def call(self, export_id: str, method: str, *args: Any) -> Any:
        """Call a :class:`ProgressState` method of one export."""
        if method not in _STATE_CALLS:
            raise AttributeError(f"progress has no method {method!r}")
        with self._lock:
            state = self._states.get(export_id)
            if state is None:
                raise UnknownExport(export_id)
            return getattr(state, method)(*args)

    def cancel_requested(self, export_id: str) -> bool:
        with self._lock:
            state = self._states.get(export_id)
            if state is None:
                raise UnknownExport(export_id)
            return state.cancel_requested

    def has(self, export_id: str) -> bool:
        with self._lock:
            return export_id in self._states

    def export_ids(self) -> list[str]:
        """Ids of the exports held, sorted."""
        with self._lock:
            return sorted(self._states)

    def sweep(self, now: float | None = None) -> list[str]:
        """Drop the exports past their retention time, then the oldest ended ones beyond the cap;
        returns the ids dropped."""
        now = time.time() if now is None else float(now)
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

    def _sweep_forever(self, period_s: float) -> None:
        while True:
            time.sleep(period_s)
            self.sweep()


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
