"""The export service for real: ``ray-export serve`` in a subprocess attached to a ``ray start`` head (its
own temp dir and ports, stopped by PID), driven over HTTP and through the CLI (marker ``cluster``)."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.open_files import unnamed_files_in, wait_until
from tests.test_cluster import (
    Head,
    Sandbox,
    _assert_same_zip,
    _free_ports,
    export_status,
    local_export,
    sandbox,
    start_head,
)

pytestmark = pytest.mark.cluster

TOKEN = "test-token-0123456789"
SERVICE_START_S = 120
EXPORT_WAIT_S = 240


class Service:
    """One ``ray-export serve`` process."""

    def __init__(self, box: Sandbox, head: Head, root: Path, db: Path, name: str, *extra: str) -> None:
        self.box, self.root, self.name = box, root, name
        self.port = _free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        token_file = box.root / "token"
        token_file.write_text(TOKEN + "\n")
        self.proc = box.popen(
            [sys.executable, "-m", "ray_export", "serve", "--address", head.address, "--exports-root", str(root),
             "--db", str(db), "--port", str(self.port), "--token-file", str(token_file), *extra],
            f"{name}.log",
        )  # fmt: skip
        deadline = time.monotonic() + SERVICE_START_S
        while self.url not in self.log():
            if self.proc.poll() is not None:
                pytest.fail(f"the service exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the service did not start in {SERVICE_START_S} s:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.box.log(f"{self.name}.log")

    def call(self, method: str, path: str, body=None, token: str | None = TOKEN, headers=None):
        """``(status, headers, body bytes)`` of one request."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, method: str, path: str, body=None, expect: int = 200, **kwargs):
        status, _, data = self.call(method, path, body, **kwargs)
        assert status == expect, (status, data[:2000], self.log()[-3000:])
        return json.loads(data)

    def submit(self, project: str, output: str, **options) -> dict:
        return self.json("POST", "/exports", {"project": project, "output": output, **options}, expect=202)

    def wait(self, export_id: str, timeout: float = EXPORT_WAIT_S) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.json("GET", f"/exports/{export_id}")
            if status["state"] in ("succeeded", "failed", "cancelled"):
                return status
            time.sleep(0.3)
        pytest.fail(f"export {export_id} did not end in {timeout} s:\n{self.log()[-3000:]}")

    def succeeded(self, export_id: str) -> dict:
        """Wait for the export and check that it succeeded (its error and the service's log otherwise)."""
        status = self.wait(export_id)
        assert status["state"] == "succeeded", (status.get("error"), self.log()[-3000:])
        return status

    def wait_for_first_image(self, export_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.json("GET", f"/exports/{export_id}")
            assert status["state"] not in ("succeeded", "failed", "cancelled"), (status, self.log()[-3000:])
            if (status.get("done") or {}).get("write", 0) >= 1:
                return status
            time.sleep(0.1)
        pytest.fail(f"export {export_id} wrote nothing in {timeout} s")


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    from ray_export.demo import build_demo_project

    return build_demo_project(tmp_path_factory.mktemp("service-demo"), n_images=12, seed=0)


@pytest.fixture(scope="module")
def cli_reference(small_demo, tmp_path_factory) -> Path:
    """The small demo exported by the CLI on a local Ray of its own (default options)."""
    out = tmp_path_factory.mktemp("service-reference") / "reference.zip"
    with sandbox() as box:
        done = local_export(box, small_demo.db_path, small_demo.project_id, out)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def big_demo(tmp_path_factory):
    from ray_export.demo import build_demo_project

    return build_demo_project(tmp_path_factory.mktemp("service-big-demo"), n_images=40, seed=1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with sandbox() as box:
        yield box, start_head(box, dashboard=False)


@pytest.fixture(scope="module")
def service(cluster, small_demo, big_demo, tmp_path_factory) -> Service:
    box, head = cluster
    root = tmp_path_factory.mktemp("service-exports")
    return Service(box, head, root, small_demo.db_path, "service", "--db", str(big_demo.db_path))


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------------- tests


def test_exports_in_a_row_are_byte_identical_to_the_cli_export(service, small_demo, cli_reference, cluster):
    box, head = cluster
    project = small_demo.project_id
    first = service.submit(project, "first.zip")
    assert first["state"] in ("queued", "querying", "running") and first["id"] == first["export_id"]
    service.succeeded(first["id"])
    second = service.submit(project, "second.zip")
    done = service.succeeded(second["id"])
    assert done["result"]["counts"]["images"] == 12
    assert done["result"]["output"] == str(service.root / "second.zip") == done["output"]
    assert done["download"] == f"/exports/{second['id']}/download"
    _assert_same_zip(service.root / "first.zip", cli_reference)
    _assert_same_zip(service.root / "second.zip", cli_reference)

    data = (service.root / "second.zip").read_bytes()
    status, headers, body = service.call("GET", f"/exports/{second['id']}/download")
    assert status == 200 and body == data and int(headers["content-length"]) == len(data)
    status, headers, body = service.call(
        "GET", f"/exports/{second['id']}/download", headers={"Range": "bytes=1000-65535"}
    )
    assert status == 206 and body == data[1000:65536] and headers["content-range"] == f"bytes 1000-65535/{len(data)}"

    # ray-export status on the cluster sees the service's exports too
    snapshot = export_status(box, head, second["id"])
    assert snapshot["state"] == "succeeded" and snapshot["done"]["write"] == 12

    # the CLI submits to the service and prints what a local export prints
    cli = box.run(
        [sys.executable, "-m", "ray_export", "export", "--service", service.url, "--token-file",
         str(box.root / "token"), "--project", project, "--out", "cli.zip"],
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert cli.stdout.strip() == str(service.root / "cli.zip")
    assert re.search(r"^export id: [0-9a-f]{12}$", cli.stderr, re.M) and "done: 12 images, " in cli.stderr
    _assert_same_zip(service.root / "cli.zip", cli_reference)

    # so does the Python API, returning the same result object
    from ray_export.api import export
    from ray_export.run import ExportResult

    result = export(project=project, output="api.zip", service=service.url, token=TOKEN)
    assert isinstance(result, ExportResult) and result.output == str(service.root / "api.zip")
    assert result.counts["images"] == 12 and result.seconds > 0
    _assert_same_zip(service.root / "api.zip", cli_reference)

    # once removed (DELETE of a succeeded export), the download is gone
    removed = service.json("DELETE", f"/exports/{second['id']}")
    assert removed["state"] == "succeeded" and removed["output_removed"] and removed["download"] is None
    assert not (service.root / "second.zip").exists()
    assert service.call("GET", f"/exports/{second['id']}/download")[0] == 410


def test_a_second_export_waits_in_the_queue(service, small_demo, big_demo, cluster):
    box, head = cluster
    running = service.submit(big_demo.project_id, "queue-1.zip", db=str(big_demo.db_path))
    waiting = service.submit(small_demo.project_id, "queue-2.zip")
    withdrawn = service.submit(small_demo.project_id, "queue-3.zip")
    assert waiting["state"] == "queued" and waiting["queue_position"] == 1
    assert withdrawn["state"] == "queued" and withdrawn["queue_position"] == 2
    listed = {e["export_id"]: e for e in service.json("GET", "/exports")["exports"]}
    assert listed[waiting["id"]]["queue_position"] == 1

    # ray-export cancel (through the cluster) takes a waiting export out of the queue
    cancel = box.run([sys.executable, "-m", "ray_export", "cancel", withdrawn["id"], "--address", head.address])
    assert cancel.returncode == 0, cancel.stderr[-2000:]
    cancelled = service.wait(withdrawn["id"], timeout=30)
    assert cancelled["state"] == "cancelled" and cancelled["running_since"] is None

    first, second = service.succeeded(running["id"]), service.succeeded(waiting["id"])
    assert second["running_since"] >= first["finished_at"], "the second export started after the first ended"
    assert not (service.root / "queue-3.zip").exists()


def test_cancel_over_http_leaves_nothing(service, big_demo):
    before = _files(service.root)
    started = service.submit(big_demo.project_id, "cancelled.zip", db=str(big_demo.db_path))
    service.wait_for_first_image(started["id"])
    answer = service.json("DELETE", f"/exports/{started['id']}")
    assert answer["state"] == "cancelled" and answer["exit_code"] == 130
    assert service.wait(started["id"], timeout=30)["state"] == "cancelled"
    assert _files(service.root) == before
    wait_until(lambda: unnamed_files_in(service.root) == [], 30, "no process to hold a partial or spool file")
    assert service.call("GET", f"/exports/{started['id']}/download")[0] == 409


def test_a_wrong_token_is_401_and_a_path_outside_the_root_is_422(service, small_demo, tmp_path):
    count = len(service.json("GET", "/exports")["exports"])
    for token in (None, "wrong", TOKEN + "x"):
        status, headers, _ = service.call("GET", "/exports", token=token)
        assert status == 401 and headers.get("www-authenticate") == "Bearer"
        status, _, _ = service.call("POST", "/exports", {"project": small_demo.project_id}, token=token)
        assert status == 401
    for output in (str(tmp_path / "outside.zip"), "../outside.zip"):
        answer = service.json("POST", "/exports", {"project": small_demo.project_id, "output": output}, expect=422)
        assert answer["option"] == "output" and "--exports-root" in answer["detail"]
    answer = service.json("POST", "/exports", {"project": small_demo.project_id, "stroke_width": 3}, expect=422)
    assert answer["option"] == "stroke_width"
    assert len(service.json("GET", "/exports")["exports"]) == count, "nothing was started"
    assert not (tmp_path / "outside.zip").exists()
    assert service.json("GET", "/healthz")["status"] == "ok"
    assert "/exports/{export_id}/events" in service.json("GET", "/openapi.json")["paths"]


def test_server_sent_events_deliver_monotonic_progress(service, big_demo):
    started = service.submit(big_demo.project_id, "events.zip", db=str(big_demo.db_path))
    request = urllib.request.Request(f"{service.url}/exports/{started['id']}/events")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    events: list[tuple[str, dict]] = []
    with urllib.request.urlopen(request, timeout=EXPORT_WAIT_S) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: ") :])))
    assert [name for name, _ in events[:-1]] == ["progress"] * (len(events) - 1) and events[-1][0] == "end"
    assert events[-1][1]["state"] == "succeeded" and events[-1][1]["done"]["write"] == 40
    written = [data.get("done", {}).get("write", 0) for _, data in events]
    fractions = [data["fraction"] or 0.0 for _, data in events]
    assert written == sorted(written) and fractions == sorted(fractions)
    assert len(set(written)) >= 2, "progress was seen before the end"


def test_a_killed_service_leaves_no_partial_and_the_next_start_cleans_up(cluster, big_demo, tmp_path):
    box, head = cluster
    root = tmp_path / "exports"
    root.mkdir()
    killed = Service(box, head, root, big_demo.db_path, "killed")
    started = killed.submit(big_demo.project_id, "k.zip")
    killed.wait_for_first_image(started["id"])
    killed.proc.kill()
    killed.proc.wait(30)
    at = time.monotonic()
    assert not (root / "k.zip").exists()

    restarted = Service(box, head, root, big_demo.db_path, "restarted")
    assert not (root / "k.zip.lock").exists(), "the new service removed the dead export's lock"
    if time.monotonic() - at < 25:  # before the writer gives the dead export up, the lock was still there
        assert f"{root / 'k.zip.lock'}" in restarted.log()
    wait_until(lambda: unnamed_files_in(root) == [], max(1.0, 60 - (time.monotonic() - at)), "the partial to go")
    assert _files(root) == []
    again = restarted.submit(big_demo.project_id, "k.zip")
    restarted.succeeded(again["id"])
    assert _files(root) == ["k.zip"]

    # SIGTERM stops the service and cancels its running export cleanly
    last = restarted.submit(big_demo.project_id, "term.zip")
    restarted.wait_for_first_image(last["id"])
    restarted.proc.send_signal(signal.SIGTERM)
    assert restarted.proc.wait(60) == 0, restarted.log()[-3000:]
    assert f"cancelled {last['id']}" in restarted.log()
    assert _files(root) == ["k.zip"]
    wait_until(lambda: unnamed_files_in(root) == [], 30, "no process to hold a partial or spool file")
    snapshot = export_status(box, head, last["id"])
    assert snapshot is None or snapshot["state"] == "cancelled"
