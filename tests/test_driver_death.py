"""A driver killed outright on a real cluster: its writer removes the partial file and spool folder once
the heartbeat stops, ``status`` reports the export failed, and answers at once when the cluster is gone."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from tests.test_cluster import sandbox, start_head

pytestmark = pytest.mark.cluster


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
        deadline = time.monotonic() + 180
        while not list(out_dir.glob("orphan.zip.*.partial")) and time.monotonic() < deadline:
            assert driver.poll() is None, box.log("driver.log")[-3000:]
            time.sleep(0.05)
        partials = list(out_dir.glob("orphan.zip.*.partial"))
        assert partials, box.log("driver.log")[-3000:]
        export_id = partials[0].name.split(".")[-2]
        assert list(out_dir.glob(".orphan.zip.spool-*"))
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        killed = time.monotonic()
        while sorted(p.name for p in out_dir.iterdir()) and time.monotonic() - killed < 120:
            time.sleep(0.5)
        cleaned_s = time.monotonic() - killed
        print(f"files of the killed driver removed {cleaned_s:.1f} s after the kill")
        assert sorted(p.name for p in out_dir.iterdir()) == [], "no partial, spool or lock file left"
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
