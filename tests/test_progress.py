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
    PROGRESS_ACTOR_NAME,
    PROGRESS_NAMESPACE,
    ProgressActor,
    ProgressState,
    create_progress_actor,
    get_progress_actor,
    list_progress_actors,
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


def test_reuse_counts_and_note_are_shown() -> None:
    from ray_export.cli import _status_line, reuse_line

    state = _running_state()
    assert state.snapshot(now=T0 + 3)["reuse"] is None
    state.set_reuse({}, "old.zip was made with other content options (visualization)", now=T0 + 3)
    state.set_reuse({"reused": 7, "reused_members": 1, "computed": 2, "computed_changed": 1, "computed_new": 1},
                    now=T0 + 4)  # fmt: skip
    snap = state.snapshot(now=T0 + 5)
    assert snap["reuse"]["reused"] == 7 and snap["reuse"]["note"].startswith("old.zip was made")
    assert json.loads(json.dumps(snap))["reuse"] == snap["reuse"]
    assert _status_line(snap).endswith("reused=8 computed=2")
    assert reuse_line(snap["reuse"]) == (
        "reuse: 8 images taken over, 2 computed (1 changed, 1 new); 1 with recomputed annotations (index or "
        "name changed); previous export not used: old.zip was made with other content options (visualization)"
    )
    with pytest.raises(ValueError):
        state.set_reuse({"reused": -1})


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


def test_a_retried_batch_counts_its_images_once() -> None:
    state = ProgressState("exp1", now=T0)
    state.set_totals({"copy": 200, "write": 200}, now=T0)
    state.set_state("running", now=T0)
    state.add_images("copy", list(range(0, 25)), [3], now=T0 + 1)
    state.add_images("copy", list(range(0, 25)), [3], now=T0 + 2)  # the same batch again, from a retried task
    state.add_images("copy", list(range(25, 200)), [3, 150], now=T0 + 3)
    snap = state.snapshot(now=T0 + 4)
    assert snap["done"]["copy"] == 200
    assert snap["failed"]["copy"] == 2
    assert state.last_advance["copy"] == T0 + 3
    with pytest.raises(ValueError):
        state.add_images("copy", [-1])


def test_eta_comes_from_stage_rates_before_anything_is_written() -> None:
    state = ProgressState("exp1", now=T0)
    state.set_totals({"copy": 100, "visualize": 100, "write": 100}, now=T0)
    state.set_state("running", now=T0)
    state.add_images("copy", list(range(20)), now=T0 + 2)  # 10 images/s
    state.add_images("visualize", list(range(10)), now=T0 + 2)  # 5 images/s: 18 s left
    snap = state.snapshot(now=T0 + 2)
    assert snap["done"]["write"] == 0 and snap["images_done"] == 0
    assert snap["eta_s"] == pytest.approx(90 / 5)
    state.add_done("write", 100, now=T0 + 30)
    state.add_images("copy", list(range(100)), now=T0 + 30)
    state.add_images("visualize", list(range(100)), now=T0 + 30)
    assert state.snapshot(now=T0 + 30)["eta_s"] == 0.0


def test_a_stage_with_work_waiting_and_no_progress_is_reported_stalled() -> None:
    state = ProgressState("exp1", now=T0, heartbeat_timeout_s=1e9, stall_timeout_s=60)
    state.set_totals({"copy": 40, "visualize": 40, "write": 40}, now=T0)
    state.set_stage_demands({"copy": {"CPU": 1.0}, "visualize": {"CPU": 4.0}}, stall_timeout_s=120)
    state.set_state("running", now=T0)
    state.add_images("copy", list(range(16)), now=T0 + 5)
    assert state.snapshot(now=T0 + 100)["stalled"] is None  # visualize waits only 95 s so far
    snap = state.snapshot(now=T0 + 125)
    # copy also stopped (backpressure), but visualize is where the work waits: 16 done before it, 0 in it
    assert snap["stalled"] == {"stage": "visualize", "seconds": 125.0, "resources": {"CPU": 4.0}}
    assert snap["state"] == "running"
    state.add_images("copy", [16], now=T0 + 126)
    state.add_images("visualize", [0], now=T0 + 126)
    state.add_done("write", 1, now=T0 + 126)
    assert state.snapshot(now=T0 + 127)["stalled"] is None
    assert state.snapshot(now=T0 + 300)["stalled"]["stage"] == "visualize"
    state.set_state("cancelled", now=T0 + 301)
    assert state.snapshot(now=T0 + 400)["stalled"] is None
    with pytest.raises(ValueError):
        state.set_stage_demands({}, stall_timeout_s=0)


def test_nothing_started_names_the_first_stage() -> None:
    state = ProgressState("exp1", now=T0, heartbeat_timeout_s=1e9, stall_timeout_s=10)
    state.set_totals({"copy": 4, "write": 4}, now=T0)
    state.set_state("running", now=T0 + 1)
    assert state.snapshot(now=T0 + 10)["stalled"] is None
    assert state.snapshot(now=T0 + 11)["stalled"]["stage"] == "copy"


def test_snapshot_has_start_and_end_times() -> None:
    state = _running_state()
    snap = state.snapshot(now=T0 + 3)
    assert (snap["started_at"], snap["running_since"], snap["finished_at"]) == (T0, T0 + 2, None)
    state.set_state("failed", "boom", now=T0 + 9)
    assert state.snapshot(now=T0 + 10)["finished_at"] == T0 + 9


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


def _progress_actors() -> list[dict]:
    return [
        entry
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["namespace"] == PROGRESS_NAMESPACE and "progress" in entry["name"]
    ]


def test_progress_actor_lifecycle(ray_cluster: None) -> None:
    export_id = f"test-{os.getpid()}-{time.time_ns()}"
    assert get_progress_actor(export_id) is None

    handle = create_progress_actor(export_id, keep_seconds=2, output="/tmp/out.zip")
    ray.get(handle.set_totals.remote({"read": 10, "write": 10}))
    assert ray.get(handle.set_state.remote("running")) is True
    ray.get([handle.add_images.remote("read", [0, 1, 2, 3, 4, 5]), handle.add_done.remote("write", 4, 1)])
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
    assert {"name": PROGRESS_ACTOR_NAME, "namespace": PROGRESS_NAMESPACE} in ray.util.list_named_actors(
        all_namespaces=True
    )

    same = create_progress_actor(export_id, keep_seconds=2)  # an id already held keeps its state
    assert ray.get(same.snapshot.remote())["done"] == {"read": 6, "write": 4}

    ray.get(attached.request_cancel.remote())
    assert ray.get(handle.cancel_requested.remote()) is True
    assert ray.get(handle.heartbeat.remote()) is True

    assert ray.get(handle.set_state.remote("succeeded")) is True
    assert ray.get(handle.set_state.remote("running")) is False
    assert ray.get(handle.snapshot.remote())["state"] == "succeeded"
    assert _wait_until_gone(export_id), "progress still held long after its retention time"
    with pytest.raises(ray.exceptions.RayTaskError):
        ray.get(handle.snapshot.remote(), timeout=30)


def test_progress_without_heartbeat_expires(ray_cluster: None) -> None:
    export_id = f"test-stale-{os.getpid()}-{time.time_ns()}"
    handle = create_progress_actor(export_id, keep_seconds=1, heartbeat_timeout_s=0.5)
    ray.get(handle.set_state.remote("running"))
    assert _wait_until_gone(export_id), "the progress of an export whose driver stopped heart-beating was kept"


def test_many_exports_share_one_progress_actor(ray_cluster: None) -> None:
    ids = [f"test-many-{os.getpid()}-{time.time_ns()}-{n}" for n in range(5)]
    handles = [create_progress_actor(export_id, keep_seconds=600) for export_id in ids]
    for n, handle in enumerate(handles):
        ray.get(handle.set_totals.remote({"write": 10}))
        ray.get(handle.add_done.remote("write", n))
    assert [ray.get(get_progress_actor(i).snapshot.remote())["done"]["write"] for i in ids] == [0, 1, 2, 3, 4]
    assert set(ids) <= set(list_progress_actors())
    assert len(_progress_actors()) == 1


def test_retention_drops_ended_exports_and_caps_their_number(ray_cluster: None) -> None:
    """The sweep on a private actor (unnamed): expired and surplus ended exports go, running ones stay."""
    actor = ProgressActor.remote(max_retained=2, sweep_period_s=None)
    now = time.time()
    for n in range(5):
        ray.get(actor.register.remote(f"e{n}", 600.0))
    ray.get(actor.register.remote("quick", 0.5))
    ray.get(actor.call.remote("quick", "set_state", "succeeded"))
    for n in range(4):
        ray.get(actor.call.remote(f"e{n}", "set_state", "failed", "x", now + n))
    dropped = ray.get(actor.sweep.remote(now + 5))
    assert sorted(dropped) == ["e0", "e1", "quick"]  # quick expired; e0, e1 are the oldest ended beyond 2
    assert ray.get(actor.export_ids.remote()) == ["e2", "e3", "e4"]
    ray.kill(actor)
