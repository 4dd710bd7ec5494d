"""Cancellation (progress actor, SIGTERM) and the command line, on the shared Ray session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_export.api import start
from ray_export.errors import ExportCancelled
from tests.open_files import unnamed_files_in, wait_until

pytestmark = pytest.mark.usefixtures("ray_session")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def big_demo(tmp_path_factory):
    from ray_export.demo import build_demo_project

    return build_demo_project(tmp_path_factory.mktemp("bigdemo"), n_images=48, seed=1)


def _address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def _wait_state(get_snapshot, states: set[str], deadline_s: float) -> dict:
    deadline = time.monotonic() + deadline_s
    snap: dict = {}
    while time.monotonic() < deadline:
        snap = get_snapshot()
        if snap.get("state") in states:
            return snap
        time.sleep(0.1)
    raise AssertionError(f"state never reached {states}: {snap}")


def test_cancel_through_progress_actor(big_demo, tmp_path):
    import ray

    from actors.progress import get_progress_actor

    out = tmp_path / "cancelled.zip"
    handle = start(db=str(big_demo.db_path), project=big_demo.project_id, output=str(out))
    _wait_state(handle.progress, {"running"}, 60)
    ray.get(get_progress_actor(handle.export_id).request_cancel.remote())
    t0 = time.monotonic()
    with pytest.raises(ExportCancelled):
        handle.wait(timeout=30)
    assert time.monotonic() - t0 < 15
    assert handle.progress()["state"] == "cancelled"
    assert list(tmp_path.iterdir()) == []


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ray_export", *args],
        cwd=kwargs.get("cwd", REPO),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_cancels_cli_export(big_demo, tmp_path):
    import ray

    from actors.progress import get_progress_actor

    out = tmp_path / "term.zip"
    proc = _cli("export", "--db", str(big_demo.db_path), "--project", big_demo.project_id, "--out", str(out),
                "--address", _address())
    first = proc.stderr.readline()
    assert first.startswith("export id: ")
    export_id = first.split(":", 1)[1].strip()

    def snapshot():
        actor = get_progress_actor(export_id)
        return ray.get(actor.snapshot.remote()) if actor else {}

    _wait_state(snapshot, {"running"}, 180)
    wait_until(lambda: unnamed_files_in(tmp_path), 180, "the (unnamed) partial file")
    assert [p.name for p in tmp_path.iterdir()] == ["term.zip.lock"]
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    # `ray job stop` sends SIGKILL 3 s after SIGTERM by default: the partial output must be gone by then
    while list(tmp_path.iterdir()) and time.monotonic() - t0 < 15:
        time.sleep(0.05)
    cleaned_s = time.monotonic() - t0
    rc = proc.wait(timeout=30)
    print(f"SIGTERM: output cleaned after {cleaned_s:.2f} s, exited after {time.monotonic() - t0:.2f} s")
    assert cleaned_s < 15 and time.monotonic() - t0 < 15
    assert rc == 130, proc.stderr.read()
    assert snapshot()["state"] == "cancelled"
    assert list(tmp_path.iterdir()) == []
    wait_until(lambda: not unnamed_files_in(tmp_path), 15, "the writer's unnamed files to go")


def test_cli_export_status_json_and_default_name(demo_project, tmp_path):
    proc = _cli("export", "--db", str(demo_project.db_path), "--project", demo_project.title,
                "--address", _address(), "--metrics", "csv", "--annotations", "coco", cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    lines = stderr.splitlines()
    assert lines[0].startswith("export id: ")
    export_id = lines[0].split(":", 1)[1].strip()
    output = Path(stdout.strip().splitlines()[-1])
    assert output.parent == tmp_path and output.name.endswith(".zip") and output.exists()
    assert "images" in lines[-1] and "objects" in lines[-1]
    status = _cli("status", export_id, "--json", "--address", _address())
    sout, serr = status.communicate(timeout=60)
    assert status.returncode == 0, serr
    snap = json.loads(sout)
    for key in ("export_id", "state", "totals", "done", "failed", "bytes_written", "throughput_images_per_s",
                "eta_s", "problems", "output"):
        assert key in snap, key
    assert snap["state"] == "succeeded" and snap["export_id"] == export_id
    assert snap["output"] == str(output)
    assert snap["bytes_written"] == output.stat().st_size


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--scale", "0"], "--scale"),
        (["--viz-format", "gif"], "--viz-format"),
        (["--annotations", "coco,voc"], "--annotations"),
        (["--stroke-width", "11"], "--stroke-width"),
    ],
)
def test_cli_invalid_options_exit_2_naming_the_option(demo_project, args, needle):
    proc = _cli("export", "--db", str(demo_project.db_path), "--project", "x", "--out", "/tmp/never.zip", *args)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert stderr.splitlines() == [stderr.strip()] and stderr.startswith(f"error: invalid option {needle}: ")
