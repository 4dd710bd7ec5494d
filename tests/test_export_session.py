"""Exports in one Ray session as a notebook runs them: a cancel stops the dataset's work, and many
exports share one progress actor."""

from __future__ import annotations

import time

import pytest

from ray_export.api import export, start
from ray_export.errors import ExportCancelled

pytestmark = pytest.mark.usefixtures("ray_session")

QUIET_WINDOW_S = 3.0


@pytest.fixture(scope="module")
def demo60(tmp_path_factory):
    from ray_export.demo import build_demo_project

    return build_demo_project(tmp_path_factory.mktemp("demo60"), n_images=60, seed=2)


def _wait_until(predicate, deadline_s: float, what: str):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {deadline_s} s")


def _stage_done(snapshot: dict) -> dict[str, int]:
    return {stage: n for stage, n in snapshot["done"].items() if stage != "write"}


def test_handle_cancel_stops_every_stage(demo60, tmp_path):
    """After ``handle.cancel()`` no stage counter moves and every CPU is free again."""
    import ray

    handle = start(
        db=str(demo60.db_path), project=demo60.project_id, output=str(tmp_path / "cancelled.zip"),
        stages={"copy": {"batch_size": 2}, "visualize": {"batch_size": 2}, "annotate": {"batch_size": 2},
                "metrics": {"batch_size": 2}, "read": {"batch_size": 2}},
    )  # fmt: skip
    _wait_until(lambda: handle.progress().get("done", {}).get("copy", 0) > 0, 120, "the first copied image")
    handle.cancel()
    with pytest.raises(ExportCancelled):
        handle.wait(timeout=60)
    total_cpus = ray.cluster_resources()["CPU"]
    _wait_until(lambda: ray.available_resources().get("CPU", 0) == total_cpus, 60, "every stage task ending")
    after_cancel = handle.progress()
    assert after_cancel["state"] == "cancelled"
    assert min(_stage_done(after_cancel).values()) < 60, "the export was cancelled before its end"
    time.sleep(QUIET_WINDOW_S)
    later = handle.progress()
    assert _stage_done(later) == _stage_done(after_cancel), "a stage advanced after the cancel"
    assert ray.available_resources().get("CPU", 0) == total_cpus
    assert list(tmp_path.iterdir()) == []


def _alive_progress_actors() -> int:
    from ray._private.state import actors

    return sum(
        1
        for info in actors().values()
        if info.get("State") == "ALIVE" and info.get("ActorClassName", "").endswith("ProgressActor")
    )


def test_five_exports_share_one_progress_actor(demo_project, tmp_path):
    """Five exports in one session: one progress actor in all, holding all five exports' states."""
    import ray

    from actors.progress import get_progress_actor, list_progress_actors

    ids = []
    for n in range(5):
        result = export(db=str(demo_project.db_path), project=demo_project.project_id,
                        output=str(tmp_path / f"export-{n}.zip"))  # fmt: skip
        ids.append(result.export_id)
    assert set(ids) <= set(list_progress_actors())
    for export_id in ids:
        snapshot = ray.get(get_progress_actor(export_id).snapshot.remote())
        assert snapshot["state"] == "succeeded"
        assert snapshot["done"]["write"] == snapshot["totals"]["write"] == 12
        assert snapshot["finished_at"] >= snapshot["started_at"]
    assert _alive_progress_actors() == 1


def test_a_stage_waiting_for_cpus_is_reported_stalled_then_resumes(demo_project, tmp_path, caplog):
    """Every CPU held by another task: the export's first stage cannot start; after the stall time the
    progress and the log name it and what its tasks ask for; once the CPUs are free the export ends."""
    import logging

    import ray

    release = tmp_path / "release"

    @ray.remote(num_cpus=ray.cluster_resources()["CPU"])
    def hold_every_cpu(flag: str) -> None:
        import os
        import time

        while not os.path.exists(flag):
            time.sleep(0.05)

    held = hold_every_cpu.remote(str(release))
    _wait_until(lambda: ray.available_resources().get("CPU", 0) == 0, 60, "the CPUs being taken")
    caplog.set_level(logging.WARNING, logger="ray_export.dataset")
    try:
        handle = start(db=str(demo_project.db_path), project=demo_project.project_id,
                       output=str(tmp_path / "stalled.zip"), stall_timeout_s=1.5)  # fmt: skip
        stalled = _wait_until(lambda: handle.progress().get("stalled"), 60, "a stall report")
        assert stalled["stage"] == "copy"
        assert stalled["resources"] == {"CPU": 1.0}
        assert stalled["seconds"] >= 1.5
        _wait_until(lambda: "stage copy stalled" in caplog.text, 30, "the stall warning")
        assert "waiting for CPU=1" in caplog.text
    finally:
        release.touch()
        ray.get(held)
    result = handle.wait(timeout=120)
    assert result.counts["images"] == 12
    assert handle.progress()["stalled"] is None
