"""Errors an export ends with: one clear line and an exit code."""

from __future__ import annotations

import re


class ExportError(Exception):
    """A fatal export problem: one clear line and an exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ExportCancelled(ExportError):
    """The export was cancelled (cancel, Ctrl-C, SIGTERM or ``handle.cancel()``)."""

    def __init__(self, message: str = "export cancelled") -> None:
        super().__init__(message, exit_code=130)


def error_line(exc: BaseException) -> str:
    """The line that names the error (the last one of a remote traceback), at most 500 characters."""
    text = str(exc).strip().splitlines()
    return text[-1][:500] if text else ""


def _ray_node_ip(text: str) -> str | None:
    match = re.search(r"\bip: (\S+)", text)
    return match.group(1) if match else None


def _raised_line(text: str) -> str:
    """The ``Type: message`` line a traceback in ``text`` ends with (the text's last line otherwise)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        name = line.split(":", 1)[0]
        if ":" in line and name.replace(".", "").isidentifier() and name.split(".")[-1][:1].isupper():
            return line[:300]
    return (lines[-1] if lines else text)[:300]


def ray_error_line(exc: BaseException, actors: dict[str, str] | None = None, node: str | None = None) -> str | None:
    """One line saying what failed and what to do, for an error of Ray itself (a dead actor or worker, a
    lost object, memory, the cluster); None for any other error.

    ``actors`` names the export's actors by actor id (hex) ("the ZIP writer"); ``node`` is the driver's
    node address, where the writer runs.
    """
    from ray import exceptions as rx

    cause = exc.cause if isinstance(exc, rx.RayTaskError) and isinstance(exc.cause, rx.RayError) else exc
    text = str(cause)
    where = _ray_node_ip(text) or node
    on_node = f" on node {where}" if where else ""
    lost = "no output was written"
    if isinstance(cause, rx.OutOfMemoryError):
        return (
            f"a task of the export ran out of memory{on_node} and Ray's memory monitor killed it; {lost}; "
            "lower the batch sizes or give the stages a memory hint (stages.<stage>.memory)"
        )
    if isinstance(cause, rx.RayActorError):
        actor_id = getattr(cause, "actor_id", None)
        what = (actors or {}).get(actor_id or "", "an actor of the export")
        if isinstance(cause, rx.ActorUnavailableError):
            return f"{what}{on_node} is unreachable (its node is failing?); {lost}"
        if cause.actor_init_failed:  # its constructor raised: say what it raised
            return f"{what}{on_node} could not start: {_raised_line(text)}; {lost}"
        return f"{what}{on_node} died (killed, or out of memory?); {lost}"
    if isinstance(cause, rx.WorkerCrashedError):
        return f"a worker process of the export crashed{on_node} (killed, or out of memory?); {lost}"
    if isinstance(cause, rx.NodeDiedError):
        return f"a node of the cluster died{on_node}; {lost}; run the export again"
    if isinstance(cause, rx.ObjectLostError):
        return f"a block of results was lost (its node or worker died?); {lost}; run the export again"
    if isinstance(cause, rx.ObjectStoreFullError):
        return f"Ray's object store is full{on_node}; {lost}; give the cluster more object store memory"
    if isinstance(cause, rx.OutOfDiskError):
        return f"the disk of node{' ' + where if where else ''} is full (Ray spills objects there); {lost}"
    if isinstance(cause, (rx.LocalRayletDiedError, rx.RaySystemError, rx.RpcError)):
        return f"Ray itself failed ({type(cause).__name__}: {error_line(cause)[:200]}); {lost}; is the cluster up?"
    if isinstance(cause, (rx.TaskUnschedulableError, rx.ActorUnschedulableError)):
        return f"a task of the export cannot be scheduled on this cluster; {lost}; check the stage hints"
    return None
