"""Pure pieces of fault handling: Ray errors as one line, when a writer gives up, what cleanup leaves."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray import exceptions as rx

from actors.zip_writer import driver_gone
from ray_export.errors import ray_error_line
from ray_export.output_files import remove_export_files


def test_dead_writer_is_named_with_its_node():
    error = rx.ActorDiedError()
    error.actor_id = "ab" * 8
    line = ray_error_line(error, {"ab" * 8: "the ZIP writer"}, node="10.0.0.7")
    assert line == "the ZIP writer on node 10.0.0.7 died (killed, or out of memory?); no output was written"


@pytest.mark.parametrize(
    ("error", "start"),
    [
        (rx.WorkerCrashedError(), "a worker process of the export crashed on node 10.0.0.7"),
        (rx.ObjectLostError("ff" * 28, "owner", ""), "a block of results was lost"),
        (rx.NodeDiedError("node gone"), "a node of the cluster died on node 10.0.0.7"),
        (rx.RaySystemError("gcs went away"), "Ray itself failed (RaySystemError: "),
    ],
)
def test_ray_errors_become_one_short_line(error, start):
    line = ray_error_line(error, {}, node="10.0.0.7")
    assert line is not None and line.startswith(start)
    assert "\n" not in line and len(line) < 200


def test_other_errors_are_not_ray_errors():
    assert ray_error_line(ValueError("bad"), {}, node="10.0.0.7") is None


@pytest.mark.parametrize(
    ("snapshot", "unreachable_s", "gone"),
    [
        ({"state": "running"}, 0.0, False),
        ({"state": "finalizing"}, 0.0, False),
        ({"state": "failed"}, 0.0, True),  # also what a lost heartbeat reads as
        ({"state": "cancelled"}, 0.0, True),
        ({"state": "succeeded"}, 0.0, True),
        (None, 5.0, False),
        (None, 31.0, True),
    ],
)
def test_writer_gives_up_when_the_export_ended_or_its_progress_actor_is_gone(snapshot, unreachable_s, gone):
    assert driver_gone(snapshot, unreachable_s, timeout_s=30.0) is gone


def test_cleanup_removes_only_this_exports_files_and_reports_what_stays(tmp_path, monkeypatch):
    out = tmp_path / "x.zip"
    mine = tmp_path / "x.zip.aaaa.partial"
    other = tmp_path / "x.zip.bbbb.partial"
    for path in (mine, other):
        path.write_bytes(b"PK")
    assert remove_export_files(out, None, "aaaa") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zip.bbbb.partial"]

    mine.write_bytes(b"PK")
    original_unlink = Path.unlink

    def refuse(self, missing_ok=False):
        if self == mine:
            raise PermissionError(1, "Operation not permitted", str(self))
        original_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    assert remove_export_files(out, None, "aaaa") == [mine]


def test_a_writer_that_could_not_start_is_named_with_what_it_raised():
    from ray import exceptions as rx

    from ray_export.errors import ray_error_line

    creation = rx.RayTaskError(
        "ZipWriterActor.__init__",
        "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
        "PermissionError: [Errno 1] Operation not permitted: '/data/out'",
        PermissionError(1, "Operation not permitted"),
    )
    died = rx.ActorDiedError(creation)
    line = ray_error_line(died, {died.actor_id: "the ZIP writer"} if died.actor_id else None, "10.0.0.1")
    assert line.endswith("could not start: PermissionError: [Errno 1] Operation not permitted: '/data/out'; "
                         "no output was written")  # fmt: skip
    assert "died (killed" in ray_error_line(rx.ActorDiedError(), None, None)
