"""Faults a long export meets: a second export to the same output, a killed driver or writer, a folder
whose final rename fails, a database outage, unreachable addresses and bad option files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from ray_export.api import export, start

pytestmark = pytest.mark.usefixtures("ray_session")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def big_demo(tmp_path_factory):
    from ray_export.demo import build_demo_project

    return build_demo_project(tmp_path_factory.mktemp("faultdemo"), n_images=48, seed=1)


@pytest.fixture(scope="module")
def undisturbed_zip(big_demo, tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("undisturbed") / "ref.zip"
    export(db=str(big_demo.db_path), project=big_demo.project_id, output=str(out))
    return out.read_bytes()


def _address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def _cli(*args: str, cwd: Path = REPO) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "ray_export", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate, deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def _error_lines(stderr: str) -> list[str]:
    """The lines of a CLI's stderr other than the export id it announces first."""
    return [line for line in stderr.splitlines() if not line.startswith("export id: ")]


@pytest.mark.parametrize("force", [False, True])
def test_second_export_to_the_same_output_is_refused_and_the_first_is_intact(
    big_demo, undisturbed_zip, tmp_path, force
):
    out = tmp_path / "shared.zip"
    first = start(db=str(big_demo.db_path), project=big_demo.project_id, output=str(out))
    _wait_for(lambda: list(tmp_path.glob("shared.zip.*.partial")), 120, "the first export's partial file")
    assert [p.name for p in tmp_path.glob("*.partial")] == [f"shared.zip.{first.export_id}.partial"]
    second = _cli("export", "--db", str(big_demo.db_path), "--project", big_demo.project_id, "--out", str(out),
                  "--address", _address(), "--quiet", *(["--force"] if force else []))
    stdout, stderr = second.communicate(timeout=120)
    assert second.returncode == 2, stderr
    assert stdout == ""
    assert _error_lines(stderr) == [f"error: output {out} is being written by export {first.export_id}"]
    result = first.wait(timeout=300)
    assert result.output == str(out)
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
    assert out.read_bytes() == undisturbed_zip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.zip"]


def test_leftovers_of_a_killed_driver_are_removed_by_the_next_export(big_demo, undisturbed_zip, tmp_path):
    out = tmp_path / "again.zip"
    proc = _cli("export", "--db", str(big_demo.db_path), "--project", big_demo.project_id, "--out", str(out),
                "--address", _address(), "--quiet")
    _wait_for(lambda: list(tmp_path.glob("again.zip.*.partial")), 120, "the driver's partial file")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    # What a driver killed at this point leaves (however much its writer managed to remove itself)
    (tmp_path / "again.zip.0123456789ab.partial").write_bytes(b"PK\x03\x04" + b"x" * 1000)
    (tmp_path / ".again.zip.spool-dead").mkdir()
    (tmp_path / ".again.zip.spool-dead" / "coco.spool").write_text("{}")
    other = tmp_path / "other.zip.0123456789ab.partial"
    other.write_bytes(b"not ours")
    result = export(db=str(big_demo.db_path), project=big_demo.project_id, output=str(out))
    assert result.output == str(out)
    assert out.read_bytes() == undisturbed_zip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.zip", other.name]
