"""The fixed cost an export records: milestones in seconds from its start, each kept once."""

from __future__ import annotations

import threading

import pytest

from ray_export.run import MILESTONES, ExportResult, ExportTimings


def test_milestones_are_seconds_from_the_start():
    timings = ExportTimings(started=1000.0)
    timings.mark("ray_ready", at=1002.5)
    timings.mark("plan_ready", at=1000.25)
    out = timings.as_dict()
    assert out == {"ray_ready": 2.5, "plan_ready": 0.25}
    assert list(out) == [m for m in MILESTONES if m in out]  # reported in milestone order


def test_first_mark_is_kept_and_times_before_the_start_count_as_zero():
    timings = ExportTimings(started=1000.0)
    timings.mark("first_batch_written", at=1005.0)
    timings.mark("first_batch_written", at=1009.0)
    timings.mark("ray_ready", at=999.0)
    assert timings.as_dict() == {"ray_ready": 0.0, "first_batch_written": 5.0}
    assert "ray_ready" in timings and "committed" not in timings


def test_actors_ready_is_the_later_of_both_actors():
    timings = ExportTimings(started=0.0)
    timings.mark("writer_ready", at=4.0)
    assert "actors_ready" not in timings
    timings.mark("progress_ready", at=3.0)
    assert timings.as_dict()["actors_ready"] == 4.0


def test_finishing_is_last_image_to_commit():
    timings = ExportTimings(started=10.0)
    timings.mark("last_image_written", at=18.0)
    assert "finishing" not in timings.as_dict()
    timings.mark("committed", at=19.5)
    assert timings.as_dict()["finishing"] == 1.5


def test_unknown_milestone_is_refused():
    with pytest.raises(ValueError, match="unknown milestone"):
        ExportTimings(started=0.0).mark("lunch")


def test_marks_from_many_threads_keep_one_value_each():
    timings = ExportTimings(started=0.0)
    threads = [
        threading.Thread(target=timings.mark, args=("plan_ready",), kwargs={"at": float(i + 1)}) for i in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(timings.as_dict()) == {"plan_ready"}
    assert 1.0 <= timings.as_dict()["plan_ready"] <= 20.0


def test_result_without_timings_keeps_its_summary_line():
    result = ExportResult("abc", "/tmp/x.zip", {"images": 3, "objects": 5, "problems": 0}, 1.25)
    assert result.timings == {}
    assert result.summary_line() == "3 images, 5 objects, 0 warnings, 1.2 s"
