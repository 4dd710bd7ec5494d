"""Progress state machine, ETA and registry (pure, injected clock) and the detached named progress actor
on a small Ray. No test races the wall clock: the logic is driven by explicit or fake times, and the
tests on Ray only wait for things to happen (liveness deadlines)."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator

import pytest
import ray

from actors.progress import (
    ETA_MAX_CHANGE_PER_S,
    ETA_MIN_IMAGES,
    ETA_MIN_SECONDS,
    ETA_STALL_S,
    HEARTBEAT_LOST_MESSAGE,
    PROGRESS_ACTOR_NAME,
    PROGRESS_NAMESPACE,
    ProgressActor,
    ProgressRegistry,
    ProgressState,
    create_progress_actor,
    eta_text,
    format_duration,
    get_progress_actor,
    list_progress_actors,
)

T0 = 1_700_000_000.0
MEMORY_MONITOR_ENV = "RAY_memory_monitor_refresh_ms"  # Ray's own (lower-case) config variable


class FakeClock:
    """A clock that moves only when told to (picklable, so an actor can be given a copy)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
    assert snap["eta_stalled"] is False
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
    assert snap["eta_s"] is None  # one report per stage: no rate yet
    assert snap["done"] == {"read": 80, "visualize": 30, "write": 30}
    assert snap["failed"] == {"read": 0, "visualize": 2, "write": 0}

    state.add_done("write", 60, now=T0 + 13)  # write 0.9, visualize 0.6 is now the slowest
    state.heartbeat(now=T0 + 20)
    snap = state.snapshot(now=T0 + 22)
    assert snap["images_done"] == 30 and snap["images_total"] == 50
    assert snap["throughput_images_per_s"] == pytest.approx(30 / 20)


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


def test_state_times_come_from_the_injected_clock() -> None:
    clock = FakeClock()
    state = ProgressState("exp1", clock=clock)
    clock.advance(3)
    state.set_state("running")
    clock.advance(2)
    snap = state.snapshot()
    assert (snap["started_at"], snap["running_since"], snap["updated_at"]) == (T0, T0 + 3, T0 + 3)
    assert snap["heartbeat_age_s"] == 5.0


# --------------------------------------------------------------------------------------------------------------------
# ETA: fed (time, done) reports with explicit times


def _feed(state: ProgressState, reports: list[tuple[float, str, int]], until: float, step: float = 1.0) -> list[dict]:
    """Apply ``(time, stage, n)`` reports in time order and take a snapshot every ``step`` seconds up to
    ``until``; returns the snapshots (each with its time under ``"t"``)."""
    pending = sorted(reports, key=lambda report: report[0])
    snaps, t = [], 0.0
    while t <= until + 1e-9:
        while pending and pending[0][0] <= t:
            at, stage, n = pending.pop(0)
            state.add_done(stage, n, now=T0 + at)
        snap = state.snapshot(now=T0 + t)
        snap["t"] = t
        snaps.append(snap)
        t = round(t + step, 6)
    return snaps


def _steady(stage: str, start: float, end: float, every: float, n: int) -> list[tuple[float, str, int]]:
    count = round((end - start) / every)
    return [(start + k * every, stage, n) for k in range(count)]


def _one_stage(total: int) -> ProgressState:
    state = ProgressState("exp1", now=T0, heartbeat_timeout_s=1e9)
    state.set_totals({"write": total}, now=T0)
    state.set_state("running", now=T0)
    return state


def test_no_eta_until_enough_images_and_time_since_the_first_report() -> None:
    # 20 s of start-up, then 5 images every 2 s: the old estimate (done / time since start) was 5x too high
    state = _one_stage(1000)
    snaps = {snap["t"]: snap for snap in _feed(state, _steady("write", 20, 60, 2, 5), until=40)}
    first_shown = min(t for t, snap in snaps.items() if snap["eta_s"] is not None)
    assert first_shown == 20 + ETA_MIN_SECONDS  # 25 images after the first report by then
    assert all(not snap["eta_stalled"] for snap in snaps.values())
    assert snaps[first_shown]["eta_s"] == pytest.approx((1000 - 30) / 2.5, rel=0.02)

    # a big first batch and a second one: enough images, not enough time
    state = _one_stage(1000)
    snaps = _feed(state, [(5, "write", 100), (6, "write", 100), (14, "write", 1)], until=15)
    assert [snap["eta_s"] for snap in snaps] == [None] * len(snaps)
    state.add_done("write", 1, now=T0 + 15)
    assert state.snapshot(now=T0 + 15)["eta_s"] is not None

    # a trickle: enough time, not enough images
    state = _one_stage(1000)
    snaps = _feed(state, _steady("write", 5, 40, 2, 1), until=5 + 2 * ETA_MIN_IMAGES - 1)
    assert [snap["eta_s"] for snap in snaps] == [None] * len(snaps)
    assert _feed(state, [], until=0)[0]["eta_s"] is None
    state.add_done("write", 1, now=T0 + 5 + 2 * ETA_MIN_IMAGES)
    assert state.snapshot(now=T0 + 5 + 2 * ETA_MIN_IMAGES)["eta_s"] is not None


def test_eta_counts_down_and_converges_on_a_steady_rate() -> None:
    state = _one_stage(1200)
    snaps = _feed(state, _steady("write", 10, 300, 3, 6), until=250, step=0.5)  # 2 images/s, reports every 3 s
    shown = [snap for snap in snaps if snap["eta_s"] is not None]
    assert shown[0]["t"] == pytest.approx(10 + 12)
    for snap in shown:
        true_left = (1200 - snap["done"]["write"]) / 2 - (snap["t"] - 10) % 3  # images left, mid-batch
        assert snap["eta_s"] == pytest.approx(true_left, rel=0.05, abs=2)
    for before, after in itertools.pairwise(shown):
        assert after["eta_s"] <= before["eta_s"]  # never up on a steady rate


def test_eta_follows_an_autoscaling_burst_smoothly() -> None:
    """Workers join mid-run: reports come in bursts (several at the same instant, uneven sizes); the ETA
    moves towards the new rate in bounded steps and settles near the true time left."""
    total = 3000
    reports = _steady("write", 25, 90, 4, 8)  # 2 images/s on the first node
    t, k = 90.0, 0
    while sum(n for _, _, n in reports) < total:
        reports += [(t, "write", 32)] + ([(t, "write", 16)] if k % 3 == 0 else [])  # new nodes: ~37 images/s
        reports += [(t + 0.5, "write", 2)] if k % 4 == 0 else []
        t, k = t + 1.0, k + 1
    state = _one_stage(total)
    snaps = _feed(state, reports, until=t + 5)
    shown = [snap for snap in snaps if snap["eta_s"] is not None and snap["done"]["write"] < total]
    assert shown[0]["t"] == 25 + 12  # no ETA before the rate is trusted
    for before, after in itertools.pairwise(shown):
        dt = after["t"] - before["t"]
        countdown = max(0.0, before["eta_s"] - dt)
        bound = dt * max(ETA_MAX_CHANGE_PER_S * countdown, 1.0)
        assert abs(after["eta_s"] - countdown) <= bound + 1e-6, (before["t"], before["eta_s"], after["eta_s"])
    by_time = {snap["t"]: snap for snap in shown}
    slow = by_time[80.0]
    assert slow["eta_s"] == pytest.approx((total - slow["done"]["write"]) / 2, rel=0.1)
    rate = (32 + 16 / 3 + 2 / 4) / 1.0
    settled = [snap for snap in shown if snap["t"] >= 90 + 40]
    assert settled, "the export ended before the ETA settled"
    for snap in settled:
        assert snap["eta_s"] == pytest.approx((total - snap["done"]["write"]) / rate, rel=0.15, abs=3)
    assert all(not snap["eta_stalled"] for snap in snaps)
    assert snaps[-1]["eta_s"] == 0.0


def test_eta_shows_stalled_when_progress_stops_and_returns_when_it_resumes() -> None:
    state = ProgressState("exp1", now=T0, heartbeat_timeout_s=1e9)
    state.set_totals({"copy": 1000, "write": 1000}, now=T0)
    state.set_state("running", now=T0)
    reports = _steady("copy", 10, 100, 3, 6) + _steady("write", 11, 100, 3, 6)
    snaps = {snap["t"]: snap for snap in _feed(state, reports, until=97 + ETA_STALL_S + 10)}
    last_report = 97.0  # copy's; write's is at 98
    moving = [snap for t, snap in snaps.items() if 30 <= t <= last_report + ETA_STALL_S]
    assert all(isinstance(snap["eta_s"], float) and snap["eta_s"] > 1 and not snap["eta_stalled"] for snap in moving)
    late = [snap for t, snap in snaps.items() if t > last_report + ETA_STALL_S]
    assert late and all(snap["eta_s"] is None and snap["eta_stalled"] for snap in late)
    assert all(snap["stalled"] is None for snap in late)  # not yet the resource stall (300 s)
    assert eta_text(late[0]) == "stalled"
    assert json.loads(json.dumps(late[0]))["eta_stalled"] is True

    from ray_export.cli import _status_line

    assert " eta=stalled" in _status_line(late[0])
    assert " eta=" in _status_line(moving[-1]) and "eta=stalled" not in _status_line(moving[-1])

    resumed = 140.0
    state.add_done("copy", 6, now=T0 + resumed)
    state.add_done("write", 6, now=T0 + resumed)
    snap = state.snapshot(now=T0 + resumed)
    assert snap["eta_stalled"] is False and snap["eta_s"] > 0


def test_a_stage_that_never_starts_shows_no_eta_and_then_stalled_never_zero() -> None:
    state = ProgressState("exp1", now=T0, heartbeat_timeout_s=1e9, stall_timeout_s=120)
    state.set_totals({"copy": 100, "visualize": 100, "write": 100}, now=T0)
    state.set_state("running", now=T0)
    state.add_images("copy", list(range(50)), now=T0 + 5)
    state.add_images("copy", list(range(50, 100)), now=T0 + 20)  # copy is done; visualize waits for CPUs
    for t in (21, 60, 119):
        snap = state.snapshot(now=T0 + t)
        assert snap["eta_s"] is None and snap["eta_stalled"] is False and eta_text(snap) is None
    snap = state.snapshot(now=T0 + 121)
    assert snap["stalled"]["stage"] == "visualize"
    assert snap["eta_s"] is None and snap["eta_stalled"] is True and eta_text(snap) == "stalled"


def test_a_stage_with_one_report_is_not_yet_judged_stalled() -> None:
    state = _one_stage(100)
    state.add_done("write", 20, now=T0 + 5)
    snap = state.snapshot(now=T0 + 5 + 3 * ETA_STALL_S)  # big batches: the second may be far off
    assert snap["eta_s"] is None and snap["eta_stalled"] is False


def test_eta_is_the_longest_stage_once_every_stage_with_images_left_has_a_rate() -> None:
    state = ProgressState("exp1", now=T0, heartbeat_timeout_s=1e9)
    state.set_totals({"copy": 600, "visualize": 600, "write": 600}, now=T0)
    state.set_state("running", now=T0)
    reports = _steady("copy", 5, 45, 2, 30) + _steady("visualize", 6, 400, 2, 6) + _steady("write", 40, 400, 2, 4)
    snaps = _feed(state, reports, until=80)  # copy 15/s (done at 43 s), visualize 3/s, write 2/s from 40 s
    assert [snap["eta_s"] for snap in snaps if snap["t"] < 40 + ETA_MIN_SECONDS] == [None] * 50  # write: no rate yet
    snap = snaps[-1]
    assert snap["done"]["copy"] == 600  # a finished stage is left out
    visualize_left = (600 - snap["done"]["visualize"]) / 3
    write_left = (600 - snap["done"]["write"]) / 2
    assert write_left > visualize_left
    assert snap["eta_s"] == pytest.approx(write_left, rel=0.05)


def test_eta_formatting() -> None:
    assert [format_duration(s) for s in (0, 0.4, 45.6, 60, 725, 3599, 3600, 11220)] == [
        "0s", "0s", "46s", "1m00s", "12m05s", "59m59s", "1h00m", "3h07m",
    ]  # fmt: skip
    assert eta_text({"state": "running", "eta_s": 725.2, "eta_stalled": False}) == "12m05s"
    assert eta_text({"state": "running", "eta_s": None, "eta_stalled": True}) == "stalled"
    assert eta_text({"state": "running", "eta_s": None, "eta_stalled": False}) is None
    assert eta_text({"state": "running", "eta_s": None}) is None  # an older snapshot
    assert eta_text({"state": "running", "eta_s": None, "stalled": {"stage": "copy"}}) == "stalled"
    assert eta_text({"state": "succeeded", "eta_s": 0.0}) == "0s"


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

    # retention far beyond the test and no heartbeat loss: nothing here depends on how fast Ray answers
    handle = create_progress_actor(export_id, keep_seconds=600, output="/tmp/out.zip", heartbeat_timeout_s=1e9)
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

    same = create_progress_actor(export_id, keep_seconds=1)  # an id already held keeps its state (and retention)
    assert ray.get(same.snapshot.remote())["done"] == {"read": 6, "write": 4}

    ray.get(attached.request_cancel.remote())
    assert ray.get(handle.cancel_requested.remote()) is True
    assert ray.get(handle.heartbeat.remote()) is True

    assert ray.get(handle.set_state.remote("succeeded")) is True
    assert ray.get(handle.set_state.remote("running")) is False
    assert ray.get(handle.snapshot.remote())["state"] == "succeeded"


def test_the_actor_drops_an_ended_export_by_itself(ray_cluster: None) -> None:
    """Its sweep thread runs: an ended export with no retention goes within the liveness deadline."""
    export_id = f"test-ended-{os.getpid()}-{time.time_ns()}"
    handle = create_progress_actor(export_id, keep_seconds=0, heartbeat_timeout_s=1e9)
    assert ray.get(handle.set_state.remote("succeeded")) is True
    assert _wait_until_gone(export_id), "progress still held long after its retention time"
    with pytest.raises(ray.exceptions.RayTaskError):
        ray.get(handle.snapshot.remote(), timeout=30)


def test_progress_without_heartbeat_expires(ray_cluster: None) -> None:
    export_id = f"test-stale-{os.getpid()}-{time.time_ns()}"
    create_progress_actor(export_id, keep_seconds=1, heartbeat_timeout_s=0.5)  # no heartbeat ever comes
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


def _fill_for_retention(call, register) -> None:
    """Five long-kept exports (four of them end at T0 + n) and one quick one (ended at T0, kept 0.5 s)."""
    for n in range(5):
        register(f"e{n}", 600.0)
    register("quick", 0.5)
    call("quick", "set_state", "succeeded", None, T0)
    for n in range(4):
        call(f"e{n}", "set_state", "failed", "x", T0 + n)


def test_retention_drops_ended_exports_and_caps_their_number() -> None:
    """Expired and surplus ended exports go, running ones stay; every time from a fake clock."""
    clock = FakeClock(T0)
    registry = ProgressRegistry(max_retained=2, clock=clock)
    for n in range(4):
        assert registry.register(f"e{n}", 600.0)
    assert registry.register("quick", 0.5)
    assert not registry.register("quick", 600.0)  # an id already held keeps its state and retention
    registry.call("quick", "set_state", "succeeded")
    clock.advance(0.4)
    assert registry.sweep() == []
    clock.advance(0.1)
    assert registry.sweep() == ["quick"]  # expired
    for n in range(3):
        clock.now = T0 + 1.5 + n
        registry.call(f"e{n}", "set_state", "failed", "x")
    assert registry.sweep() == ["e0"]  # at most 2 ended exports are kept: the oldest goes
    assert registry.export_ids() == ["e1", "e2", "e3"]

    clock.now = T0 + 20
    assert registry.call("e3", "heartbeat") is False
    assert registry.sweep(T0 + 50) == []  # e3 runs: its heartbeat is 30 s old, not more
    clock.now = T0 + 50.5
    assert registry.call("e3", "snapshot")["state"] == "failed"  # heartbeat lost: reported ended since T0 + 50
    assert registry.sweep() == ["e1"]
    assert registry.sweep(T0 + 603.4) == []  # e2 ended at T0 + 3.5
    assert registry.sweep(T0 + 603.5) == ["e2"]
    assert registry.sweep(T0 + 650) == ["e3"]
    assert registry.export_ids() == [] and not registry.has("e3")
    with pytest.raises(KeyError):
        registry.call("e3", "snapshot")
    with pytest.raises(AttributeError):
        registry.call("e3", "sweep")


def test_retention_through_the_actor(ray_cluster: None) -> None:
    """The actor is a thin wrapper: the same sweep on a private (unnamed) actor with a fixed clock."""
    actor = ProgressActor.remote(max_retained=2, sweep_period_s=None, clock=FakeClock(T0))
    try:
        _fill_for_retention(
            lambda *args: ray.get(actor.call.remote(*args)), lambda *args: ray.get(actor.register.remote(*args))
        )
        assert sorted(ray.get(actor.sweep.remote(T0 + 5))) == ["e0", "e1", "quick"]
        assert ray.get(actor.export_ids.remote()) == ["e2", "e3", "e4"]
        assert ray.get(actor.call.remote("e4", "snapshot"))["started_at"] == T0
    finally:
        ray.kill(actor)
