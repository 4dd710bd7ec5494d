"""Progress state machine (pure, injected clock) and the detached named progress actor on a small Ray."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest
import ray

from actors.progress import (
    HEARTBEAT_LOST_MESSAGE,
    PROGRESS_NAMESPACE,
    ProgressState,
    create_progress_actor,
    get_progress_actor,
    list_progress_actors,
    progress_actor_name,
)

T0 = 1_700_000_000.0
MEMORY_MONITOR_ENV = "RAY_memory_monitor_refresh_ms"  # Ray's own (lower-case) config variable


def _running_state() -> ProgressState:
    state = ProgressState("exp1", output="/data/out.zip", now=T0)
    state.set_totals({"read": 100, "visualize": 50, "write": 100}, now=T0 + 1)
    state.set_state("running", now=T0 + 2)
    return state


# --------------------------------------------------------------------------------------------------------------------
# ProgressState


def test_initial_snapshot() -> None:
    state = ProgressState("exp1", now=T0)
    snap = state.snapshot(now=T0 + 1)
    assert snap["export_id"] == "exp1"
    assert snap["state"] == "querying"
    assert snap["totals"] == {} and snap["done"] == {} and snap["failed"] == {}
    assert snap["throughput_images_per_s"] is None
    assert snap["eta_s"] is None
    assert snap["fraction"] is None
    assert snap["cancel_requested"] is False
    assert snap["started_at"] == T0
    assert snap["heartbeat_age_s"] == pytest.approx(1.0)
    json.dumps(snap)


def test_transitions_and_terminal_finality() -> None:
    state = _running_state()
    assert state.set_state("finalizing", now=T0 + 50)
    assert state.set_state("succeeded", now=T0 + 60)
    assert state.finished_at == T0 + 60
    assert not state.set_state("running", now=T0 + 61)
    assert not state.set_state("failed", "late error", now=T0 + 62)
    snap = state.snapshot(now=T0 + 63)
    assert snap["state"] == "succeeded"
    assert snap["message"] is None
    assert snap["updated_at"] == T0 + 60
    with pytest.raises(ValueError, match="unknown progress state"):
        state.set_state("paused")


def test_failed_message_is_kept() -> None:
    state = _running_state()
    assert state.set_state("failed", "disk full writing /data/out.zip.partial", now=T0 + 5)
    assert state.snapshot(now=T0 + 6)["message"] == "disk full writing /data/out.zip.partial"


def test_cancel_request_is_recorded_apart_from_state() -> None:
    state = _running_state()
    assert state.heartbeat(now=T0 + 3) is False
    state.request_cancel(now=T0 + 4)
    assert state.cancel_requested
    assert state.heartbeat(now=T0 + 5) is True
    assert state.snapshot(now=T0 + 5)["state"] == "running"
    assert state.set_state("cancelled", now=T0 + 6)
    snap = state.snapshot(now=T0 + 7)
    assert snap["state"] == "cancelled"
    assert snap["cancel_requested"] is True
    assert snap["eta_s"] is None


def test_heartbeat_staleness_reports_failed_without_changing_state() -> None:
    state = _running_state()  # last heartbeat at creation, T0
    assert state.snapshot(now=T0 + 30)["state"] == "running"
    stale = state.snapshot(now=T0 + 30.5)
    assert stale["state"] == "failed"
    assert stale["message"] == HEARTBEAT_LOST_MESSAGE
    assert stale["eta_s"] is None
    assert stale["heartbeat_age_s"] == pytest.approx(30.5)
    assert state.reported_terminal_since(now=T0 + 30.5) == pytest.approx(T0 + 30)
    state.heartbeat(now=T0 + 31)
    assert state.snapshot(now=T0 + 32)["state"] == "running"
    assert state.reported_terminal_since(now=T0 + 32) is None


def test_terminal_state_is_not_overridden_by_stale_heartbeat() -> None:
    state = _running_state()
    state.set_state("succeeded", now=T0 + 10)
    snap = state.snapshot(now=T0 + 1000)
    assert snap["state"] == "succeeded"
    assert snap["message"] is None
    assert state.reported_terminal_since(now=T0 + 1000) == T0 + 10


def test_throughput_and_eta_follow_the_slowest_stage() -> None:
    state = _running_state()  # running since T0 + 2
    state.add_done("read", 80, now=T0 + 12)
    state.add_done("visualize", 30, failed=2, now=T0 + 12)  # 0.6 of 50
    state.add_done("write", 30, now=T0 + 12)  # 0.3 of 100: slowest
    snap = state.snapshot(now=T0 + 12)
    assert snap["images_done"] == 30
    assert snap["images_total"] == 100
    assert snap["fraction"] == pytest.approx(0.3)
    assert snap["throughput_images_per_s"] == pytest.approx(3.0)
    assert snap["eta_s"] == pytest.approx(70 / 3.0)
    assert snap["done"] == {"read": 80, "visualize": 30, "write": 30}
    assert snap["failed"] == {"read": 0, "visualize": 2, "write": 0}

    state.add_done("write", 60, now=T0 + 13)  # write 0.9, visualize 0.6 is now the slowest
    state.heartbeat(now=T0 + 20)
    snap = state.snapshot(now=T0 + 22)
    assert snap["images_done"] == 30 and snap["images_total"] == 50
    assert snap["throughput_images_per_s"] == pytest.approx(30 / 20)
    assert snap["eta_s"] == pytest.approx(20 / 1.5)


def test_throughput_freezes_at_the_terminal_time() -> None:
    state = _running_state()
    for stage, total in state.totals.items():
        state.add_done(stage, total, now=T0 + 40)
    state.heartbeat(now=T0 + 40)
    assert state.snapshot(now=T0 + 42)["eta_s"] == 0.0
    state.set_state("finalizing", now=T0 + 42)
    assert state.snapshot(now=T0 + 43)["eta_s"] is None  # aggregated members: time unknown
    state.set_state("succeeded", now=T0 + 52)
    snap = state.snapshot(now=T0 + 500)
    assert snap["throughput_images_per_s"] == pytest.approx(100 / 50)
    assert snap["eta_s"] == 0.0
    assert snap["fraction"] == 1.0


def test_no_progress_yet_gives_unknown_eta() -> None:
    state = _running_state()
    snap = state.snapshot(now=T0 + 5)
    assert snap["throughput_images_per_s"] == 0.0
    assert snap["eta_s"] is None
    before_running = ProgressState("exp2", now=T0)
    before_running.set_totals({"read": 10}, now=T0)
    assert before_running.snapshot(now=T0 + 5)["throughput_images_per_s"] is None


def test_counters_bytes_problems_output() -> None:
    state = _running_state()
    state.set_bytes(1234, now=T0 + 3)
    state.add_problems(2, now=T0 + 3)
    state.add_problems(3, now=T0 + 4)
    state.set_output("s3://bucket/out.zip", now=T0 + 4)
    snap = state.snapshot(now=T0 + 5)
    assert snap["bytes_written"] == 1234
    assert snap["problems"] == 5
    assert snap["output"] == "s3://bucket/out.zip"
    assert snap["updated_at"] == T0 + 4


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.add_done("read", -1),
        lambda s: s.add_done("read", 2, failed=3),
        lambda s: s.add_done("read", 1.5),
        lambda s: s.set_totals({"read": -4}),
        lambda s: s.set_bytes(-1),
        lambda s: s.add_problems(True),
    ],
)
def test_invalid_counts_raise_value_error(call) -> None:
    with pytest.raises(ValueError):
        call(_running_state())


def test_export_id_must_be_a_non_empty_string() -> None:
    with pytest.raises(ValueError):
        ProgressState("")


# --------------------------------------------------------------------------------------------------------------------
# ProgressActor on a small local Ray


@pytest.fixture(scope="module")
def ray_cluster(ray_session) -> Iterator[None]:
    """The shared test session's Ray (see conftest.py)."""
    yield


def _wait_until_gone(export_id: str, deadline_s: float = 30.0) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if get_progress_actor(export_id) is None and export_id not in list_progress_actors():
            return True
        time.sleep(0.2)
    return False


def test_progress_actor_lifecycle(ray_cluster: None) -> None:
    export_id = f"test-{os.getpid()}-{time.time_ns()}"
    assert progress_actor_name(export_id) == f"ray_export_progress_{export_id}"
    assert get_progress_actor(export_id) is None

    handle = create_progress_actor(export_id, keep_seconds=2, output="/tmp/out.zip")
    ray.get(handle.set_totals.remote({"read": 10, "write": 10}))
    assert ray.get(handle.set_state.remote("running")) is True
    ray.get([handle.add_done.remote("read", 6), handle.add_done.remote("write", 4, 1)])
    ray.get([handle.set_bytes.remote(4096), handle.add_problems.remote(3)])
    assert ray.get(handle.heartbeat.remote()) is False

    attached = get_progress_actor(export_id)
    assert attached is not None
    snap = ray.get(attached.snapshot.remote())
    assert snap["export_id"] == export_id
    assert snap["state"] == "running"
    assert snap["done"] == {"read": 6, "write": 4}
    assert snap["failed"] == {"read": 0, "write": 1}
    assert snap["bytes_written"] == 4096
    assert snap["problems"] == 3
    assert snap["output"] == "/tmp/out.zip"
    assert export_id in list_progress_actors()
    assert {"name": progress_actor_name(export_id), "namespace": PROGRESS_NAMESPACE} in ray.util.list_named_actors(
        all_namespaces=True
    )

    same = create_progress_actor(export_id, keep_seconds=2)  # get_if_exists: attaches, keeps the state
    assert ray.get(same.snapshot.remote())["done"] == {"read": 6, "write": 4}

    ray.get(attached.request_cancel.remote())
    assert ray.get(handle.cancel_requested.remote()) is True
    assert ray.get(handle.heartbeat.remote()) is True

    assert ray.get(handle.set_state.remote("succeeded")) is True
    assert ray.get(handle.set_state.remote("running")) is False
    assert ray.get(handle.snapshot.remote())["state"] == "succeeded"
    assert _wait_until_gone(export_id), "progress actor still alive long after its retention time"
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(handle.snapshot.remote(), timeout=30)


def test_progress_actor_without_heartbeat_expires(ray_cluster: None) -> None:
    export_id = f"test-stale-{os.getpid()}-{time.time_ns()}"
    handle = create_progress_actor(export_id, keep_seconds=1, heartbeat_timeout_s=0.5)
    ray.get(handle.set_state.remote("running"))
    assert _wait_until_gone(export_id), "a progress actor whose driver stopped heart-beating was never removed"
