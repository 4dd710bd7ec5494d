"""A driver killed outright: on a real cluster its writer discards the (unnamed) partial and spool files
and removes the lock once the heartbeat stops, ``status`` reports the export failed, and answers at once
when the cluster is gone; on a local Ray of its own, nothing named is left but the free lock."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from tests.open_files import named_files_in, unnamed_files_in
from tests.test_cluster import sandbox, start_head

pytestmark = pytest.mark.cluster


def _wait_until_writing(driver, box, out_dir) -> None:
    """Wait until the export writes its (unnamed) partial ZIP and spool files in ``out_dir``."""
    deadline = time.monotonic() + 180
    while not unnamed_files_in(out_dir) and time.monotonic() < deadline:
        assert driver.poll() is None, box.log("driver.log")[-3000:]
        time.sleep(0.05)
    assert unnamed_files_in(out_dir), box.log("driver.log")[-3000:]


def test_killed_driver_leaves_no_files_and_status_answers(tmp_path):
    from ray_export.demo import build_demo_project

    demo = build_demo_project(tmp_path / "demo", n_images=48, seed=0)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "orphan.zip"
    with sandbox() as box:
        head = start_head(box, dashboard=False)
        driver = box.popen(
            [sys.executable, "-m", "ray_export", "export", "--db", str(demo.db_path), "--project", demo.project_id,
             "--out", str(out), "--address", head.address, "--quiet", "--batch-size", "copy=2"],
            "driver.log",
        )  # fmt: skip
        _wait_until_writing(driver, box, out_dir)
        assert named_files_in(out_dir) == ["orphan.zip.lock"]
        export_id = (out_dir / "orphan.zip.lock").read_text()
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        killed = time.monotonic()
        while sorted(p.name for p in out_dir.iterdir()) and time.monotonic() - killed < 120:
            time.sleep(0.5)
        cleaned_s = time.monotonic() - killed
        print(f"files of the killed driver removed {cleaned_s:.1f} s after the kill")
        assert sorted(p.name for p in out_dir.iterdir()) == [], "no lock file left"
        assert unnamed_files_in(out_dir) == [], "no process holds a partial or spool file"
        status = box.run([sys.executable, "-m", "ray_export", "status", export_id, "--address", head.address],
                         timeout=120)
        assert status.returncode == 0, status.stderr[-3000:]
        assert status.stdout.splitlines()[0].startswith(f"[{export_id}] failed ")
        assert "driver heartbeat lost" in status.stdout
    started = time.monotonic()
    gone = box.run([sys.executable, "-m", "ray_export", "status", "--address", head.address], timeout=120)
    print(f"status against the stopped cluster answered in {time.monotonic() - started:.1f} s")
    assert gone.returncode == 1
    assert gone.stdout == ""
    assert gone.stderr.splitlines() == [
        f"error: no Ray cluster to read status from: no Ray cluster at {head.address} (connection refused)"
    ]


def test_driver_killed_on_its_own_local_ray_leaves_no_partial_or_spool(tmp_path):
    """``ray-export export`` without an address starts a local Ray, whose processes (the writer among
    them) die with the driver: the partial ZIP and spool files have no names, so nothing is left beside
    the output but the free lock file, without any later export."""
    from ray_export.demo import build_demo_project

    demo = build_demo_project(tmp_path / "demo", n_images=48, seed=0)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "k.zip"
    with sandbox() as box:
        driver = box.popen(
            [sys.executable, "-m", "ray_export", "export", "--db", str(demo.db_path), "--project", demo.project_id,
             "--out", str(out), "--quiet", "--batch-size", "copy=2"],
            "driver.log",
        )  # fmt: skip
        _wait_until_writing(driver, box, out_dir)
        assert named_files_in(out_dir) == ["k.zip.lock"]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        killed = time.monotonic()
        while unnamed_files_in(out_dir) and time.monotonic() - killed < 60:
            time.sleep(0.5)
        print(f"unnamed files of the killed driver gone {time.monotonic() - killed:.1f} s after the kill")
        assert unnamed_files_in(out_dir) == [], "no process holds a partial or spool file 60 s after the kill"
        assert named_files_in(out_dir) == ["k.zip.lock"], "no partial or spool file has a name"
    # the lock is free: the next export to the same output takes it over and succeeds
    from ray_export.output_files import OutputFiles

    with OutputFiles(out, "0123456789ab") as files:
        assert files.held
    assert named_files_in(out_dir) == []
