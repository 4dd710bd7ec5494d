"""Progress of one export: a pure state object and a thin detached Ray actor around it.

``ProgressState`` holds the state machine and the counters and computes snapshots from an injected clock.
``ProgressActor`` wraps it in a named, detached Ray actor (namespace ``PROGRESS_NAMESPACE``) that any
process attached to the cluster can find by export id.

Retention: when the state becomes terminal (or the driver's heartbeat has been lost, which snapshots
report as failed), a daemon thread inside the actor waits ``keep_seconds`` and then calls the actor's own
``expire_if_due`` method through its handle; that method re-checks the deadline and calls
``ray.actor.exit_actor()``. ``exit_actor`` only takes effect when called from inside an actor method, which
is why the thread goes through the handle instead of exiting directly. The exit frees the actor's name.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ray

__all__ = [
    "HEARTBEAT_LOST_MESSAGE",
    "HEARTBEAT_TIMEOUT_S",
    "KEEP_SECONDS",
    "PROGRESS_ACTOR_PREFIX",
    "PROGRESS_NAMESPACE",
    "STATES",
    "TERMINAL_STATES",
    "ProgressActor",
    "ProgressState",
    "create_progress_actor",
    "get_progress_actor",
    "list_progress_actors",
    "progress_actor_name",
]

PROGRESS_NAMESPACE = "ray_export"
PROGRESS_ACTOR_PREFIX = "ray_export_progress_"
STATES = ("querying", "running", "finalizing", "succeeded", "failed", "cancelled")
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
HEARTBEAT_TIMEOUT_S = 30.0
HEARTBEAT_LOST_MESSAGE = "driver heartbeat lost"
KEEP_SECONDS = 600.0
PROGRESS_ACTOR_MAX_CONCURRENCY = 4


def _count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")
    return value


class ProgressState:
    """State, per-stage counters and timing of one export; every time is wall-clock seconds (``time.time()``).

    Stage counters: ``add_done(stage, n, failed)`` means ``n`` images finished ``stage``, ``failed`` of
    them with a problem, so ``done`` includes ``failed``. Terminal states are final: later state changes
    are ignored (counters still update). Times are for status display only and never reach the ZIP.
    """

    def __init__(
        self,
        export_id: str,
        output: str | None = None,
        now: float | None = None,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
    ) -> None:
        if not isinstance(export_id, str) or not export_id:
            raise ValueError(f"export_id must be a non-empty string, got {export_id!r}")
        now = time.time() if now is None else float(now)
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
        self.done[stage] = self.done.get(stage, 0) + n
        self.failed[stage] = self.failed.get(stage, 0) + failed
        self.updated_at = self._clock(now)

    def set_bytes(self, n: int, now: float | None = None) -> None:
        """Bytes written to the output so far."""
        self.bytes_written = _count(n, "bytes")
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
            remaining = images_total - images_done
            if remaining == 0:
                eta = 0.0
            elif throughput:
                eta = remaining / throughput

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
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "heartbeat_age_s": max(0.0, now - self.last_heartbeat),
        }


# --------------------------------------------------------------------------------------------------------------------
# Ray actor


@ray.remote(num_cpus=0, max_concurrency=PROGRESS_ACTOR_MAX_CONCURRENCY)
class ProgressActor:
    """Detached Ray actor around ``ProgressState``; exits ``keep_seconds`` after a (reported) terminal state."""

    def __init__(
        self,
        export_id: str,
        keep_seconds: float = KEEP_SECONDS,
        output: str | None = None,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
    ) -> None:
        self._state = ProgressState(export_id, output=output, heartbeat_timeout_s=heartbeat_timeout_s)
        self._lock = threading.Lock()
        self._keep_seconds = float(keep_seconds)
        self._poll_s = min(1.0, max(0.1, self._keep_seconds / 10.0))
        threading.Thread(target=self._watch_retention, name="progress-retention", daemon=True).start()

    # Mirrors of ProgressState (the actor's own clock is used for every time, so driver clock skew is harmless).
    def set_state(self, state: str, message: str | None = None) -> bool:
        with self._lock:
            return self._state.set_state(state, message)

    def set_output(self, output: str | None) -> None:
        with self._lock:
            self._state.set_output(output)

    def set_totals(self, totals: dict[str, int]) -> None:
        with self._lock:
            self._state.set_totals(totals)

    def add_done(self, stage: str, n: int, failed: int = 0) -> None:
        with self._lock:
            self._state.add_done(stage, n, failed)

    def set_bytes(self, n: int) -> None:
        with self._lock:
            self._state.set_bytes(n)

    def add_problems(self, n: int) -> None:
        with self._lock:
            self._state.add_problems(n)

    def heartbeat(self) -> bool:
        with self._lock:
            return self._state.heartbeat()

    def request_cancel(self) -> None:
        with self._lock:
            self._state.request_cancel()

    def cancel_requested(self) -> bool:
        with self._lock:
            return self._state.cancel_requested

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._state.snapshot()

    # Retention -------------------------------------------------------------------------------------------------
    def _expiry_due(self) -> bool:
        with self._lock:
            now = time.time()
            since = self._state.reported_terminal_since(now)
        return since is not None and now >= since + self._keep_seconds

    def expire_if_due(self) -> bool:
        """Exit the actor when its retention time has passed; returns False (and stays) otherwise."""
        if not self._expiry_due():
            return False
        ray.actor.exit_actor()
        return True  # not reached: exit_actor raises

    def _watch_retention(self) -> None:
        retry_at = 0.0
        while True:
            time.sleep(self._poll_s)
            if time.time() < retry_at or not self._expiry_due():
                continue
            try:
                ray.get_runtime_context().current_actor.expire_if_due.remote()
            except Exception:  # the runtime is shutting down; nothing left to clean up
                return
            retry_at = time.time() + 5.0


def progress_actor_name(export_id: str) -> str:
    """Name of the progress actor of ``export_id`` (in ``PROGRESS_NAMESPACE``)."""
    return PROGRESS_ACTOR_PREFIX + export_id


def create_progress_actor(
    export_id: str,
    keep_seconds: float = KEEP_SECONDS,
    output: str | None = None,
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
) -> ray.actor.ActorHandle:
    """Create (or attach to) the detached, named progress actor of ``export_id``; needs a connected Ray."""
    if not isinstance(export_id, str) or not export_id:
        raise ValueError(f"export_id must be a non-empty string, got {export_id!r}")
    return ProgressActor.options(
        name=progress_actor_name(export_id),
        namespace=PROGRESS_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        max_concurrency=PROGRESS_ACTOR_MAX_CONCURRENCY,
    ).remote(export_id, keep_seconds, output, heartbeat_timeout_s)


def get_progress_actor(export_id: str) -> ray.actor.ActorHandle | None:
    """Handle of the live progress actor of ``export_id``, or None when there is none."""
    try:
        return ray.get_actor(progress_actor_name(export_id), namespace=PROGRESS_NAMESPACE)
    except ValueError:
        return None


def list_progress_actors() -> list[str]:
    """Export ids of the live progress actors in the cluster, sorted."""
    return sorted(
        entry["name"][len(PROGRESS_ACTOR_PREFIX) :]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["namespace"] == PROGRESS_NAMESPACE and entry["name"].startswith(PROGRESS_ACTOR_PREFIX)
    )
