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
from tests.open_files import named_files_in, unnamed_files_in

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
    _wait_for(lambda: unnamed_files_in(tmp_path), 120, "the first export's (unnamed) partial file")
    assert named_files_in(tmp_path) == ["shared.zip.lock"]
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
    _wait_for(lambda: unnamed_files_in(tmp_path), 120, "the driver's (unnamed) partial file")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    # What a driver killed at this point leaves where the file system has no unnamed files, or what
    # earlier versions left (a spool folder)
    (tmp_path / "again.zip.0123456789ab.partial").write_bytes(b"PK\x03\x04" + b"x" * 1000)
    (tmp_path / ".again.zip.spool-dead_123").mkdir()
    (tmp_path / ".again.zip.spool-dead_123" / "coco.spool").write_text("{}")
    other = tmp_path / "other.zip.0123456789ab.partial"
    other.write_bytes(b"not ours")
    result = export(db=str(big_demo.db_path), project=big_demo.project_id, output=str(out))
    assert result.output == str(out)
    assert out.read_bytes() == undisturbed_zip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.zip", other.name]


def test_killed_writer_ends_with_one_line_and_no_files(big_demo, tmp_path):
    import ray

    from actors.progress import PROGRESS_NAMESPACE
    from actors.zip_writer import writer_actor_name

    out = tmp_path / "killed.zip"
    proc = _cli("export", "--db", str(big_demo.db_path), "--project", big_demo.project_id, "--out", str(out),
                "--address", _address(), "--quiet")
    first = proc.stderr.readline()
    export_id = first.split(":", 1)[1].strip()
    from actors.progress import get_progress_actor

    def written() -> int:
        actor = get_progress_actor(export_id)
        return ray.get(actor.snapshot.remote()).get("done", {}).get("write", 0) if actor else 0

    _wait_for(lambda: written() > 0, 180, "the writer's first image")  # it runs: its files are open
    assert unnamed_files_in(tmp_path)
    ray.kill(ray.get_actor(writer_actor_name(export_id), namespace=PROGRESS_NAMESPACE))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert stdout == ""
    lines = _error_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: the ZIP writer on node ")
    assert "died (killed, or out of memory?); no output was written" in lines[0]
    assert len(lines[0]) < 160
    assert list(tmp_path.iterdir()) == []
    assert unnamed_files_in(tmp_path) == []


@pytest.mark.parametrize("command", ["export", "status", "cancel"])
def test_unreachable_address_fails_at_once_with_one_line(demo_project, tmp_path, command):
    args = {
        "export": ["export", "--db", str(demo_project.db_path), "--project", demo_project.project_id,
                   "--out", str(tmp_path / "never.zip")],
        "status": ["status"],
        "cancel": ["cancel", "0123456789ab"],
    }[command]
    started = time.monotonic()
    proc = _cli(*args, "--address", "127.0.0.1:1")
    stdout, stderr = proc.communicate(timeout=120)
    print(f"{command} with an unreachable address ended after {time.monotonic() - started:.1f} s")
    assert proc.returncode == 1
    assert stdout == ""
    lines = _error_lines(stderr)
    assert len(lines) == 1, stderr
    assert "no Ray cluster at 127.0.0.1:1 (connection refused)" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_read_hint_no_node_can_hold_is_a_usage_error(demo_project, tmp_path):
    proc = _cli("export", "--db", str(demo_project.db_path), "--project", demo_project.project_id,
                "--out", str(tmp_path / "never.zip"), "--num-cpus", "read=3", "--address", _address(), "--quiet")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    assert stdout == ""
    assert _error_lines(stderr) == [
        "error: invalid option --num-cpus read=3: asks for 3 CPU, but reads of a SQLite database run on the "
        "driver's node, which has 2; lower it"
    ]
    assert list(tmp_path.iterdir()) == []


def test_yaml_syntax_error_is_one_line(tmp_path):
    options = tmp_path / "options.yaml"
    options.write_text("db: x.db\nproject: [a, b\nannotations: coco\n")
    proc = _cli("export", "--options", str(options))
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert stdout == ""
    assert stderr.splitlines() == [
        f"error: invalid option --options: {options} is not valid YAML: expected ',' or ']', but got ':' "
        "at line 3, column 12"
    ]


def test_stdout_carries_only_the_output_path(demo_project, tmp_path):
    out = tmp_path / "only.zip"
    proc = _cli("export", "--db", str(demo_project.db_path), "--project", demo_project.project_id,
                "--out", str(out), "--address", _address())
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stdout == f"{out}\n"
    assert stderr.splitlines()[-1].startswith("done: 12 images")


@pytest.fixture(scope="module")
def outage_pg(demo_project, tmp_path_factory):
    """A PostgreSQL server of its own holding the demo project, and its (take down, bring up) controls."""
    from ray_export.demo import copy_project_to_postgres
    from tests.pg_server import outage_controls, start_postgres

    dsn, stop = start_postgres(tmp_path_factory.mktemp("outage-pg"), own_server=True)
    copy_project_to_postgres(demo_project.db_path, dsn)
    yield dsn, *outage_controls(dsn)
    stop()


def _outage_after_planning(monkeypatch, take_down, bring_up, outage_s: float | None) -> list[float]:
    """Take the server down as soon as the driver's light query is done (before any read task runs);
    bring it back after ``outage_s`` seconds (never with None)."""
    import threading

    import ray_export.run as run_module

    plan_export = run_module.plan_export
    taken_down: list[float] = []

    def plan_then_outage(options, **kwargs):
        plan = plan_export(options, **kwargs)
        take_down()
        taken_down.append(time.monotonic())
        if outage_s is not None:
            threading.Timer(outage_s, bring_up).start()
        return plan

    monkeypatch.setattr(run_module, "plan_export", plan_then_outage)
    return taken_down


@pytest.mark.postgres
def test_short_database_outage_is_survived(outage_pg, demo_project, tmp_path, monkeypatch):
    dsn, take_down, bring_up = outage_pg
    common = {"db": dsn, "project": demo_project.project_id, "images_root": str(demo_project.images_root)}
    reference = tmp_path / "reference.zip"
    export(**common, output=str(reference))
    taken_down = _outage_after_planning(monkeypatch, take_down, bring_up, outage_s=8.0)
    out = tmp_path / "outage.zip"
    result = export(**common, output=str(out))
    print(f"export with an 8 s outage took {time.monotonic() - taken_down[0]:.1f} s after the outage began")
    assert taken_down and result.output == str(out)
    assert out.read_bytes() == reference.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outage.zip", "reference.zip"]


@pytest.mark.postgres
def test_permanent_database_outage_fails_with_one_line(outage_pg, demo_project, tmp_path, monkeypatch):
    from ray_export.errors import ExportError
    from tests.pg_server import TEST_PASSWORD

    dsn, take_down, bring_up = outage_pg
    _outage_after_planning(monkeypatch, take_down, bring_up, outage_s=None)
    out = tmp_path / "never.zip"
    try:
        with pytest.raises(ExportError) as failed:
            export(db=dsn, project=demo_project.project_id, images_root=str(demo_project.images_root),
                   output=str(out), db_retry_s=3)
    finally:
        bring_up()
    message = str(failed.value)
    assert failed.value.exit_code == 1
    assert "\n" not in message and "Traceback" not in message
    port = dsn.rsplit(":", 1)[1].split("/")[0]
    assert message.startswith(f"database postgresql://ray_export:***@127.0.0.1:{port}/ray_export_test unreachable "
                              "while reading images (")
    assert TEST_PASSWORD not in message
    assert list(tmp_path.iterdir()) == []


_READS_FROM_A_DEAD_SERVER = """
import os
import sys
import ray_export.run as run_module
from ray_export.sources import parse_db_target

plan_export = run_module.plan_export

def plan_then_server_gone(options, **kwargs):
    plan = plan_export(options, **kwargs)
    plan.target = parse_db_target(os.environ["DEAD_DSN"])  # same password, a port where nothing listens
    return plan

run_module.plan_export = plan_then_server_gone
from ray_export.cli import main
sys.argv[0] = "ray-export"
sys.exit(main())
"""


@pytest.mark.postgres
def test_permanent_outage_is_one_line_on_stderr(outage_pg, demo_project, tmp_path):
    from tests.pg_server import TEST_PASSWORD

    dsn = outage_pg[0]
    dead = dsn.rsplit(":", 1)[0] + ":1/ray_export_test"
    out = tmp_path / "never.zip"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO), "DEAD_DSN": dead}
    proc = subprocess.run(
        [sys.executable, "-c", _READS_FROM_A_DEAD_SERVER, "export", "--db", dsn, "--project", demo_project.project_id,
         "--images-root", str(demo_project.images_root), "--out", str(out), "--address", _address(), "--quiet",
         "--db-retry", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: database postgresql://ray_export:***@127.0.0.1:1/ray_export_test unreachable "
                               "while reading images (")
    assert TEST_PASSWORD not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def _chattr(flag: str, path: Path) -> bool:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_folder_made_immutable_mid_run_fails_cleanly(big_demo, tmp_path):
    """The folder turns immutable while the ZIP is written: the commit cannot name the file, the export
    fails with one line, and its unnamed files go with the writer (only the lock file, which the
    immutable folder keeps from being removed, can stay)."""
    import shutil

    if shutil.which("chattr") is None:
        pytest.skip("no chattr")
    folder = tmp_path / "out"
    folder.mkdir()
    if not _chattr("+i", folder):
        pytest.skip("this file system or user cannot make a folder immutable")
    _chattr("-i", folder)
    out = folder / "frozen.zip"
    handle = start(db=str(big_demo.db_path), project=big_demo.project_id, output=str(out))
    try:
        # once the writer has written an image, its partial and spool files exist (they have no names)
        _wait_for(lambda: handle.progress().get("done", {}).get("write", 0) > 0, 120, "the first image written")
        assert unnamed_files_in(folder)
        assert _chattr("+i", folder)
        from ray_export.errors import ExportError

        with pytest.raises(ExportError) as failed:
            handle.wait(timeout=300)
    finally:
        _chattr("-i", folder)
    message = str(failed.value)
    assert failed.value.exit_code == 1 and "\n" not in message
    assert message.startswith("I/O error: PermissionError: [Errno 1] Operation not permitted")
    assert "could not remove" not in message
    assert named_files_in(folder) in ([], ["frozen.zip.lock"])
    _wait_for(lambda: not unnamed_files_in(folder), 30, "the writer's files to go")
