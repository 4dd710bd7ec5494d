"""The export service's pure parts, without Ray: its settings, what a request may ask for (options,
paths confined to the exports root, databases and images roots), the bearer token, the queue's order,
the clean-up at start, and the HTTP layer over a stand-in for the runner."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ray_export.output_files import OutputFiles
from ray_export.service.cleanup import sweep_exports_root
from ray_export.service.config import (
    RequestError,
    ServiceConfig,
    ServiceConfigError,
    check_bind,
    choose_database,
    confine_images_root,
    confine_to_exports_root,
    is_loopback,
    make_config,
    read_token,
    request_options,
    token_matches,
)
from ray_export.service.queue import ExportQueue

# --------------------------------------------------------------------------------------------- settings


@pytest.fixture
def service_dirs(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "exports"
    data = tmp_path / "data"
    images = tmp_path / "images"
    for folder in (root, data, images, images / "project-a"):
        folder.mkdir()
    db = data / "app.db"
    db.write_bytes(b"")
    return {"root": root, "db": db, "images": images, "tmp": tmp_path}


@pytest.fixture
def config(service_dirs) -> ServiceConfig:
    return make_config(
        str(service_dirs["root"]),
        [str(service_dirs["db"]), "postgresql://app:s3cret@db.example/seg"],
        [str(service_dirs["images"])],
    )


def test_loopback_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("127.1.2.3") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("example.org")


def test_a_bind_beyond_loopback_needs_a_token():
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "token")
    with pytest.raises(
        ServiceConfigError, match=r"invalid option --host: 0\.0\.0\.0 .*--token-file FILE or RAY_EXPORT_TOKEN"
    ):
        check_bind("0.0.0.0", None)


def test_the_token_comes_from_the_file_else_the_environment(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("  abc123 \nignored\n")
    assert read_token(str(token_file), {"RAY_EXPORT_TOKEN": "env"}) == "abc123"
    assert read_token(None, {"RAY_EXPORT_TOKEN": " env "}) == "env"
    assert read_token(None, {}) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ServiceConfigError, match=r"--token-file: .* holds no token"):
        read_token(str(tmp_path / "empty"))
    with pytest.raises(ServiceConfigError, match="--token-file: cannot read"):
        read_token(str(tmp_path / "missing"))


def test_the_token_check():
    assert token_matches("Bearer s3cret", "s3cret")
    assert token_matches("bearer s3cret", "s3cret")
    assert not token_matches("Bearer s3cre", "s3cret")
    assert not token_matches("Bearer s3cret2", "s3cret")
    assert not token_matches("Basic s3cret", "s3cret")
    assert not token_matches("s3cret", "s3cret")
    assert not token_matches(None, "s3cret") and not token_matches("", "s3cret")
    assert token_matches(None, None)  # no token configured: loopback only


def test_settings_are_checked_naming_the_flag(service_dirs):
    root, db = str(service_dirs["root"]), str(service_dirs["db"])
    with pytest.raises(ServiceConfigError, match=r"--exports-root: .* is not a folder"):
        make_config(str(service_dirs["tmp"] / "nope"), [db])
    with pytest.raises(ServiceConfigError, match="--db: the service needs at least one database"):
        make_config(root, [])
    with pytest.raises(ServiceConfigError, match=r"--images-root: .* is not a folder"):
        make_config(root, [db], [str(service_dirs["tmp"] / "nope")])
    with pytest.raises(ServiceConfigError, match=r"--max-concurrent: 0 is not an integer in 1\.\.64"):
        make_config(root, [db], max_concurrent=0)
    with pytest.raises(ServiceConfigError, match="--host"):
        make_config(root, [db], host="0.0.0.0")
    with pytest.raises(ServiceConfigError, match="--db: ") as caught:
        make_config(root, ["mysql://u:pw1@h/db"])
    assert "pw1" not in str(caught.value)


# ---------------------------------------------------------------------------------------- confinement


def test_outputs_are_confined_to_the_exports_root(service_dirs):
    root = service_dirs["root"].resolve()
    (root / "team").mkdir()
    assert confine_to_exports_root("a.zip", root, "output") == str(root / "a.zip")
    assert confine_to_exports_root("team/b.zip", root, "output") == str(root / "team" / "b.zip")
    assert confine_to_exports_root(str(root / "c.zip"), root, "output") == str(root / "c.zip")
    for escape in ("../a.zip", "/etc/a.zip", "team/../../a.zip", str(root), "s3://bucket/a.zip", ""):
        with pytest.raises(RequestError) as caught:
            confine_to_exports_root(escape, root, "output")
        assert caught.value.status == 422 and caught.value.option == "output"
        assert str(caught.value).startswith("invalid option output: ")
    with pytest.raises(RequestError, match=r"outside the service's exports root \(--exports-root\)"):
        confine_to_exports_root("/tmp/x.zip", root, "output")


def test_a_link_out_of_the_exports_root_is_refused(service_dirs):
    root = service_dirs["root"].resolve()
    (root / "out").symlink_to(service_dirs["tmp"])
    (root / "file.zip").symlink_to(service_dirs["tmp"] / "victim.zip")
    for name in ("out/a.zip", "file.zip"):
        with pytest.raises(RequestError, match="outside the service's exports root"):
            confine_to_exports_root(name, root, "reuse")


def test_images_roots_come_from_the_service(config, service_dirs):
    images = os.path.realpath(service_dirs["images"])
    assert confine_images_root(str(service_dirs["images"]), config) == images
    assert confine_images_root(str(service_dirs["images"] / "project-a"), config) == images + "/project-a"
    assert confine_images_root(str(service_dirs["db"].parent), config) == os.path.realpath(service_dirs["db"].parent)
    (service_dirs["images"] / "escape").symlink_to(service_dirs["tmp"])
    for refused in (str(service_dirs["tmp"]), str(service_dirs["images"] / "escape"), "project-a", "s3://other"):
        with pytest.raises(RequestError) as caught:
            confine_images_root(refused, config)
        assert caught.value.option == "images_root" and "--images-root" in str(caught.value)


def test_uri_images_roots_match_by_prefix(service_dirs):
    config = make_config(str(service_dirs["root"]), [str(service_dirs["db"])], ["s3://bucket/uploads/"])
    assert confine_images_root("s3://bucket/uploads", config) == "s3://bucket/uploads"
    assert confine_images_root("s3://bucket/uploads/p1/", config) == "s3://bucket/uploads/p1"
    for refused in ("s3://bucket/uploads2", "s3://bucket/uploads/../x", "s3://bucket"):
        with pytest.raises(RequestError):
            confine_images_root(refused, config)


def test_the_database_is_one_of_the_services(config, service_dirs):
    assert choose_database(None, config) == str(service_dirs["db"])
    other_spelling = str(service_dirs["db"].parent / ".." / "data" / "app.db")
    assert choose_database(other_spelling, config) == str(service_dirs["db"])
    assert choose_database("postgresql://app:s3cret@db.example/seg", config).startswith("postgresql://")
    for refused in ("postgresql://app:guess@db.example/seg", str(service_dirs["tmp"] / "x.db"), 5, ""):
        with pytest.raises(RequestError) as caught:
            choose_database(refused, config)
        assert caught.value.option == "db" and "guess" not in str(caught.value)


def test_a_request_is_the_options_object(config, service_dirs):
    options = request_options(
        {"project": "Demo", "output": "x.zip", "annotations": "coco", "visualization": {"stroke_width": 4}}, config
    )
    assert options.db == str(service_dirs["db"])
    assert options.output == str(service_dirs["root"].resolve() / "x.zip")
    assert options.images_root == os.path.realpath(service_dirs["images"])
    assert options.annotations == ("coco",)
    assert options.visualization.stroke_width == 4
    assert options.address is None


@pytest.mark.parametrize(
    ("body", "option"),
    [
        ({"project": "Demo", "address": "10.0.0.1:6379"}, "address"),
        ({"project": "Demo", "stroke_width": 3}, "stroke_width"),
        ({"project": "Demo", "visualization": {"stroke_width": 30}}, "stroke_width"),
        ({"project": "Demo", "output": "/etc/passwd"}, "output"),
        ({"project": "Demo", "reuse": "../old.zip"}, "reuse"),
        ({"project": "Demo", "metrics": "csv,nope"}, "metrics"),
        ({"project": ""}, "project"),
        ({}, "project"),
        (["project"], "options"),
    ],
)
def test_a_refused_request_names_the_option(config, body, option):
    with pytest.raises(RequestError) as caught:
        request_options(body, config)
    assert caught.value.option == option and caught.value.status == 422
    assert str(caught.value).startswith(f"invalid option {option}: ")


# ---------------------------------------------------------------------------------------------- the queue


def test_the_queue_starts_exports_in_order_up_to_the_limit():
    queue = ExportQueue(max_running=2)
    assert [queue.submit(i) for i in ("a", "b", "c", "d")] == [1, 2, 3, 4]
    assert queue.start_next() == "a" and queue.start_next() == "b" and queue.start_next() is None
    assert queue.positions() == {"c": 1, "d": 2} and queue.position("a") is None
    assert queue.withdraw("c") and not queue.withdraw("c") and not queue.withdraw("a")
    assert queue.position("d") == 1
    queue.finished("a")
    assert queue.start_next() == "d" and queue.start_next() is None
    assert queue.running() == {"b", "d"} and queue.waiting() == []
    with pytest.raises(ValueError):
        queue.submit("b")
    with pytest.raises(ValueError):
        ExportQueue(0)


def test_one_at_a_time_keeps_submission_order():
    queue = ExportQueue()
    for export_id in ("x", "y", "z"):
        queue.submit(export_id)
    order = []
    while (export_id := queue.start_next()) is not None:
        order.append(export_id)
        assert queue.start_next() is None
        queue.finished(export_id)
    assert order == ["x", "y", "z"]


# ------------------------------------------------------------------------------------- clean-up at start


def test_the_start_removes_what_dead_exports_left(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.zip.lock").write_text("0123456789ab")  # a dead export's lock (nobody holds it)
    (tmp_path / "sub" / "b.zip.0123456789ab.partial").write_bytes(b"PK")  # a named partial
    (tmp_path / "keep.zip").write_bytes(b"PK")
    (tmp_path / "notes.lock.txt").write_text("x")
    (tmp_path / "c.zip.lock").symlink_to(tmp_path / "keep.zip")  # not an export's lock: left alone
    live = OutputFiles(tmp_path / "d.zip", "aaaaaaaaaaaa")  # a live export's lock: left alone
    live.start()
    try:
        removed = sweep_exports_root(tmp_path)
        assert sorted(p.name for p in removed) == ["a.zip.lock", "b.zip.0123456789ab.partial"]
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == ["c.zip.lock", "d.zip.lock", "keep.zip", "notes.lock.txt", "sub"]
        assert list((tmp_path / "sub").iterdir()) == []
    finally:
        live.release()


# ------------------------------------------------------------------------------------------- HTTP layer


class _Record:
    def __init__(self, export_id: str) -> None:
        self.export_id = export_id


class FakeService:
    """What the HTTP layer calls on the runner: one succeeded export with a ZIP, one queued."""

    def __init__(self, config: ServiceConfig, zip_path: Path) -> None:
        self.config = config
        self.zip_path = zip_path
        self.submitted: list[dict] = []

    def health(self) -> dict:
        return {"status": "ok", "running": 0, "queued": 1, "max_concurrent": 1}

    def submit(self, body):
        request_options(body, self.config)
        self.submitted.append(body)
        return _Record("bbbbbbbbbbbb")

    def status(self, export_id):
        from ray_export.service.runner import UnknownServiceExport

        if export_id == "aaaaaaaaaaaa":
            return {"export_id": export_id, "state": "succeeded", "done": {"write": 3}, "fraction": 1.0}
        if export_id == "bbbbbbbbbbbb":
            return {"export_id": export_id, "state": "queued", "queue_position": 1}
        raise UnknownServiceExport(export_id)

    def statuses(self):
        return [self.status("aaaaaaaaaaaa"), self.status("bbbbbbbbbbbb")]

    def cancel(self, export_id):
        return {**self.status(export_id), "state": "cancelled"}

    def download_path(self, export_id):
        from ray_export.service.runner import ExportGone, ExportNotReady

        self.status(export_id)
        if export_id == "bbbbbbbbbbbb":
            raise ExportNotReady("export bbbbbbbbbbbb is queued")
        if not self.zip_path.exists():
            raise ExportGone("the ZIP is gone")
        return self.zip_path


@pytest.fixture
def http_service(service_dirs):
    import uvicorn

    from ray_export.service.app import create_app

    config = make_config(str(service_dirs["root"]), [str(service_dirs["db"])], token="s3cret-token")
    zip_path = service_dirs["root"] / "done.zip"
    zip_path.write_bytes(bytes(range(256)) * 40)
    service = FakeService(config, zip_path)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", service
    server.should_exit = True
    thread.join(10)
    sock.close()


def _call(url: str, method: str = "GET", body=None, token: str | None = "s3cret-token", headers=None):
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_every_request_needs_the_token(http_service):
    url, service = http_service
    for path in ("/healthz", "/exports", "/exports/aaaaaaaaaaaa", "/exports/aaaaaaaaaaaa/download", "/openapi.json"):
        for token in (None, "wrong", "s3cret-token2", "s3cret-toke"):
            status, headers, _ = _call(url + path, token=token)
            assert status == 401, (path, token)
            assert headers.get("www-authenticate") == "Bearer"
    status, _, _ = _call(url + "/exports", "POST", {"project": "Demo"}, token="wrong")
    assert status == 401 and service.submitted == []
    status, _, body = _call(url + "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_submit_refusals_are_422_naming_the_option(http_service):
    url, service = http_service
    status, _, body = _call(url + "/exports", "POST", {"project": "Demo", "output": "/etc/x.zip"})
    assert status == 422
    answer = json.loads(body)
    assert answer["option"] == "output" and "--exports-root" in answer["detail"]
    assert service.submitted == []
    status, headers, body = _call(url + "/exports", "POST", {"project": "Demo", "output": "x.zip"})
    assert status == 202 and json.loads(body)["id"] == "bbbbbbbbbbbb" and headers["location"] == "/exports/bbbbbbbbbbbb"
    assert json.loads(body)["queue_position"] == 1


def test_download_range_gone_and_not_ready(http_service):
    url, service = http_service
    data = service.zip_path.read_bytes()
    status, headers, body = _call(url + "/exports/aaaaaaaaaaaa/download")
    assert status == 200 and body == data and int(headers["content-length"]) == len(data)
    assert headers["content-type"] == "application/zip"
    status, headers, body = _call(url + "/exports/aaaaaaaaaaaa/download", headers={"Range": "bytes=1000-1999"})
    assert status == 206 and body == data[1000:2000] and headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    assert _call(url + "/exports/bbbbbbbbbbbb/download")[0] == 409
    assert _call(url + "/exports/cccccccccccc/download")[0] == 404
    assert _call(url + "/exports/cccccccccccc")[0] == 404
    service.zip_path.unlink()
    assert _call(url + "/exports/aaaaaaaaaaaa/download")[0] == 410


def test_the_schema_lists_the_api(http_service):
    url, _ = http_service
    status, _, body = _call(url + "/openapi.json")
    schema = json.loads(body)
    assert status == 200
    assert {"/healthz", "/exports", "/exports/{export_id}", "/exports/{export_id}/download",
            "/exports/{export_id}/events"} <= set(schema["paths"])  # fmt: skip
    assert set(schema["paths"]["/exports/{export_id}"]) == {"get", "delete"}
    assert schema["security"] == [{"bearer": []}]


def test_events_end_with_the_final_state(http_service):
    url, _ = http_service
    status, headers, body = _call(url + "/exports/aaaaaaaaaaaa/events")
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    text = body.decode()
    assert text.startswith("event: end\n")
    data = json.loads(text.split("data: ", 1)[1].split("\n", 1)[0])
    assert data["state"] == "succeeded"


def test_a_queued_export_shows_its_place_until_it_starts():
    from actors.progress import ProgressState

    state = ProgressState("aaaaaaaaaaaa", now=0.0)
    state.set_state("queued", now=0.0)
    state.set_queue_position(2, now=1.0)
    snap = state.snapshot(now=1.0)
    assert snap["state"] == "queued" and snap["queue_position"] == 2
    state.set_state("querying", now=2.0)
    state.set_queue_position(1, now=2.0)  # a late update once started is ignored
    assert state.snapshot(now=2.0)["queue_position"] is None
    assert state.snapshot(now=2.0)["state"] == "querying"


def test_an_options_object_is_sent_as_its_options_file_values(service_dirs):
    from ray_export.options import build_options
    from ray_export.service.client import options_values

    options = build_options(
        {"db": str(service_dirs["db"]), "project": "Demo", "annotations": "coco", "scale": 0.5,
         "visualization": {"stroke_width": 4, "format": "jpeg"}, "stages": {"copy": {"num_cpus": 0.5}}},
    )  # fmt: skip
    values = options_values(options, {})
    assert json.loads(json.dumps(values)) == values
    assert build_options(values) == options
    assert options_values({"project": "Demo"}, {"output": "x.zip"}) == {"project": "Demo", "output": "x.zip"}


def test_the_benchmark_reports_the_service_next_to_the_pipeline():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("benchmark_for_service_test", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.modules.pop(spec.name, None)
    assert bench.parse_args(["--service"]).service == "start"
    assert bench.parse_args(["--service", "http://h:8000"]).service == "http://h:8000"
    assert bench.parse_args([]).service is None
    lines = bench.format_service(
        {"url": "http://127.0.0.1:8000", "first_seconds": 12.0, "second_seconds": 8.0, "warm_pipeline_seconds": 8.3,
         "one_process_seconds": 14.0, "target_seconds": 14.0 / 1.8 + 0.5, "reuse_seconds": 0.5, "reuse_ratio": 16.0,
         "reuse": {}, "zip_identical": True, "reuse_zip_identical": True}
    )  # fmt: skip
    text = "\n".join(lines)
    assert "second export 8.00 s (first 12.00 s); warm pipeline 8.30 s; one process 14.00 s" in text
    assert "= 8.28 s: met" in text and "0.50 s, 16.0x faster" in text
