"""Object storage against a real S3 endpoint: moto's S3 server on 127.0.0.1.

The server is moto's WSGI application behind a werkzeug server on a free port, wrapped in a small
middleware that can refuse multipart parts (an upload failing midway). The bucket is versioned, so a
partial object that was written and then deleted still shows as a version. Credentials reach pyarrow
and boto3 through the standard ``AWS_*`` environment variables (URIs carry only the endpoint), except in
the one test of ``KEY:SECRET@`` in a URI; every output is searched for the key id and the secret.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, quote

import pytest

pytest.importorskip("moto.moto_server.werkzeug_app", reason="moto[s3] with flask (the test extra) is not installed")
import boto3
from werkzeug.serving import make_server

REPO = Path(__file__).resolve().parents[1]
ACCESS_KEY = "AKIARXEXPORTTEST0001"
SECRET_KEY = "rx-Secret/Key+Only4Tests-9c1e7b2a5d"
REGION = "us-east-1"
BUCKET = "rx-export-test"
#: what a leak of either credential would look like in any output (the secret also URL-quoted)
SECRETS = (ACCESS_KEY, SECRET_KEY, SECRET_KEY.replace("/", "%2F").replace("+", "%2B"))


class FaultyS3:
    """WSGI middleware: refuses ``UploadPart`` from part ``fail_from_part`` on with 403 AccessDenied."""

    def __init__(self, app) -> None:
        self.app = app
        self.fail_from_part: int | None = None
        self.parts_accepted = 0
        self.parts_refused = 0

    def __call__(self, environ, start_response):
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if environ["REQUEST_METHOD"] == "PUT" and "uploadId" in query and "partNumber" in query:
            if self.fail_from_part is not None and int(query["partNumber"][0]) >= self.fail_from_part:
                self.parts_refused += 1
                stream = environ["wsgi.input"]
                length = int(environ.get("CONTENT_LENGTH") or 0)
                stream.read() if environ.get("wsgi.input_terminated") else stream.read(length)
                body = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>" \
                       b"<Message>Access Denied</Message></Error>"
                start_response("403 Forbidden", [("Content-Type", "application/xml"),
                                                 ("Content-Length", str(len(body)))])
                return [body]
            self.parts_accepted += 1
        return self.app(environ, start_response)


class S3Server:
    """A running moto S3 server and a boto3 client for it."""

    def __init__(self, endpoint: str, faults: FaultyS3) -> None:
        self.endpoint = endpoint
        self.faults = faults
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                                   aws_secret_access_key=SECRET_KEY)

    def uri(self, key: str) -> str:
        """``s3://`` URI of ``key`` in the test bucket: the endpoint in the query, no credentials."""
        host = self.endpoint.split("://", 1)[1]
        return f"s3://{BUCKET}/{key}?endpoint_override={host}&scheme=http&region={REGION}"

    def keys(self, prefix: str = "") -> list[str]:
        listing = self.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def versions(self, key: str) -> list[str]:
        """Every stored version and delete marker of ``key`` (the bucket is versioned)."""
        listing = self.client.list_object_versions(Bucket=BUCKET, Prefix=key)
        found = listing.get("Versions", []) + listing.get("DeleteMarkers", [])
        return [item["VersionId"] for item in found if item["Key"] == key]

    def open_uploads(self) -> list[str]:
        """Keys of multipart uploads neither completed nor aborted."""
        return [upload["Key"] for upload in self.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on 127.0.0.1 with one versioned bucket."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

    faults = FaultyS3(DomainDispatcherApplication(create_backend_app))
    port = _free_port()
    server = make_server("127.0.0.1", port, faults, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="moto-s3", daemon=True)
    thread.start()
    s3 = S3Server(f"http://127.0.0.1:{port}", faults)
    s3.client.create_bucket(Bucket=BUCKET)
    s3.client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    yield s3
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def aws_env(monkeypatch):
    """The test credentials in the standard environment variables, nothing read from ~/.aws."""
    for name, value in _aws_environment().items():
        monkeypatch.setenv(name, value)


def _aws_environment() -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def _assert_no_secret(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for secret in SECRETS:
        assert secret.encode() not in data, f"a credential appears in {where}"


# ------------------------------------------------------------------------------------- the upload itself


def test_upload_is_one_multipart_upload_with_the_exact_bytes(s3_server, aws_env, tmp_path):
    from actors.zip_writer import upload_file

    data = os.urandom(6 << 20) + b"tail"
    local = tmp_path / "x.zip"
    local.write_bytes(data)
    before = s3_server.faults.parts_accepted
    upload_file(local, s3_server.uri("exports/multi.zip"), chunk=5 << 20)
    assert s3_server.get("exports/multi.zip") == data
    assert s3_server.faults.parts_accepted - before == 2
    assert s3_server.open_uploads() == []


def test_endpoint_and_credentials_from_the_environment_alone(s3_server, aws_env, tmp_path, monkeypatch):
    import pyarrow.fs as pafs

    from actors.zip_writer import upload_file

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    data = b"PK\x05\x06" + bytes(18)
    local = tmp_path / "empty.zip"
    local.write_bytes(data)
    uri = f"s3://{BUCKET}/exports/env.zip"
    upload_file(local, uri)
    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_input_stream(path) as stream:
        assert stream.read() == data
    assert s3_server.get("exports/env.zip") == data


def test_empty_file_is_uploaded_as_an_empty_object(s3_server, aws_env, tmp_path):
    from actors.zip_writer import upload_file

    local = tmp_path / "empty"
    local.write_bytes(b"")
    upload_file(local, s3_server.uri("exports/empty"))
    assert s3_server.get("exports/empty") == b""
    assert s3_server.open_uploads() == []


def test_upload_without_boto3_goes_through_pyarrow(s3_server, aws_env, tmp_path, monkeypatch):
    from actors import zip_writer

    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 now raises ImportError
    data = os.urandom(11 << 20)
    local = tmp_path / "x.zip"
    local.write_bytes(data)
    zip_writer.upload_file(local, s3_server.uri("exports/pyarrow.zip"))
    assert s3_server.get("exports/pyarrow.zip") == data
    assert s3_server.open_uploads() == []


def test_upload_refused_midway_leaves_no_object_and_no_open_upload(s3_server, aws_env, tmp_path):
    from actors.zip_writer import upload_file

    local = tmp_path / "x.zip"
    local.write_bytes(os.urandom(11 << 20))
    accepted = s3_server.faults.parts_accepted
    s3_server.faults.fail_from_part = 2
    try:
        with pytest.raises(Exception, match=r"(?i)access.?denied") as info:
            upload_file(local, s3_server.uri("exports/refused.zip"), chunk=5 << 20)
    finally:
        s3_server.faults.fail_from_part = None
    assert s3_server.faults.parts_accepted - accepted == 1, "the first part reached the server"
    assert s3_server.keys("exports/refused") == []
    assert s3_server.versions("exports/refused.zip") == [], "no object was ever completed"
    assert s3_server.open_uploads() == [], "the multipart upload was aborted"
    _assert_no_secret(str(info.value), "the error")


def test_upload_whose_source_fails_midway_is_aborted_not_completed(s3_server, aws_env, tmp_path, monkeypatch):
    from actors import zip_writer

    local = tmp_path / "x.zip"
    local.write_bytes(os.urandom(11 << 20))
    real_open = open

    class FailingSecondRead(io.FileIO):
        reads = 0

        def read(self, size: int = -1) -> bytes:
            FailingSecondRead.reads += 1
            if FailingSecondRead.reads > 1:
                raise OSError("disk went away")
            return super().read(size)

    def failing_open(path, mode="r", *args, **kwargs):
        return FailingSecondRead(path, "rb") if Path(path) == local else real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(zip_writer, "open", failing_open, raising=False)
    accepted = s3_server.faults.parts_accepted
    with pytest.raises(OSError, match="disk went away"):
        zip_writer.upload_file(local, s3_server.uri("exports/source-failed.zip"), chunk=5 << 20)
    assert s3_server.faults.parts_accepted - accepted == 1
    # closing the stream would have completed the upload: a version (and a delete marker) would remain
    assert s3_server.versions("exports/source-failed.zip") == []
    assert s3_server.open_uploads() == []


# ------------------------------------------------------------------------------------- the whole export


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    from ray_export.demo import build_demo_project

    return build_demo_project(tmp_path_factory.mktemp("s3demo"), n_images=3, seed=2)


@pytest.fixture(scope="module")
def local_zip(small_demo, ray_session, tmp_path_factory):
    """The reference: the same project exported from its local folder to a local file."""
    from ray_export.api import export

    out = tmp_path_factory.mktemp("s3ref") / "demo.zip"
    export(db=str(small_demo.db_path), project=small_demo.project_id, images_root=str(small_demo.images_root),
           output=str(out))
    return out.read_bytes()


@pytest.fixture(scope="module")
def images_in_bucket(small_demo, s3_server):
    """The images root in the bucket: ``images/`` holds the project's files as its folder does on disk."""
    root = Path(small_demo.images_root)
    for path in sorted((root / "uploads").rglob("*")):
        if path.is_file():
            key = f"images/{path.relative_to(root).as_posix()}"
            s3_server.client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    return s3_server.uri("images")


def _cli_export(*args: str) -> subprocess.CompletedProcess:
    """``ray-export export`` in a subprocess with its own local Ray and the credentials in its environment."""
    env = {**os.environ, **_aws_environment(), "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "ray_export", "export", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_export_from_a_bucket_to_a_bucket_is_byte_identical(small_demo, local_zip, images_in_bucket, s3_server):
    done = _cli_export("--db", str(small_demo.db_path), "--project", small_demo.project_id,
                       "--images-root", images_in_bucket, "--out", s3_server.uri("exports/demo.zip"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == s3_server.uri("exports/demo.zip")
    uploaded = s3_server.get("exports/demo.zip")
    with zipfile.ZipFile(io.BytesIO(local_zip)) as zf:
        originals = [name for name in zf.namelist() if name.startswith("images/")]
    assert originals, "the reference export holds the original files"
    # equal bytes: every original was read from the bucket exactly as from the local folder
    assert uploaded == local_zip
    assert s3_server.open_uploads() == []
    # the credentials are in no output, no progress (status) line and no member of the ZIP
    assert "done: " in done.stderr
    _assert_no_secret(done.stdout, "stdout")
    _assert_no_secret(done.stderr, "stderr")
    _assert_no_secret(uploaded, "the ZIP")
    with zipfile.ZipFile(io.BytesIO(uploaded)) as zf:
        assert zf.testzip() is None
        for name in zf.namelist():
            _assert_no_secret(zf.read(name), name)


@pytest.mark.slow
def test_export_whose_upload_is_refused_fails_cleanly(small_demo, images_in_bucket, s3_server):
    # the small demo's ZIP is one part: the multipart upload is created, then its part is refused
    s3_server.faults.fail_from_part = 1
    try:
        done = _cli_export("--db", str(small_demo.db_path), "--project", small_demo.project_id,
                           "--images-root", images_in_bucket, "--out", s3_server.uri("exports/refused-demo.zip"))
    finally:
        s3_server.faults.fail_from_part = None
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "AccessDenied" in errors[0], done.stderr
    assert s3_server.versions("exports/refused-demo.zip") == []
    assert s3_server.open_uploads() == []
    _assert_no_secret(done.stderr, "stderr")


def test_images_root_with_credentials_in_the_uri(small_demo, local_zip, images_in_bucket, s3_server, ray_session,
                                                 tmp_path):
    """pyarrow also takes ``KEY:SECRET@`` in the URI; those never reach the ZIP, the result or the status."""
    from actors.progress import get_progress_actor
    from ray_export.api import start

    root = images_in_bucket.replace("s3://", f"s3://{ACCESS_KEY}:{quote(SECRET_KEY, safe='')}@", 1)
    out = tmp_path / "demo.zip"
    handle = start(db=str(small_demo.db_path), project=small_demo.project_id, images_root=root, output=str(out))
    result = handle.wait(timeout=600)
    assert out.read_bytes() == local_zip
    snapshot = ray_session.get(get_progress_actor(handle.export_id).snapshot.remote())
    _assert_no_secret(repr(snapshot), "the status")
    _assert_no_secret(repr(result), "the result")


def test_output_uri_with_credentials_is_shown_without_them(small_demo, local_zip, s3_server, ray_session):
    """An output given as ``s3://KEY:SECRET@bucket/…`` is written there; the result and the status show it
    with ``***`` in place of the credentials."""
    from actors.progress import get_progress_actor
    from ray_export.api import start

    uri = s3_server.uri("exports/with-credentials.zip")
    output = uri.replace("s3://", f"s3://{ACCESS_KEY}:{quote(SECRET_KEY, safe='')}@", 1)
    handle = start(db=str(small_demo.db_path), project=small_demo.project_id, output=output)
    result = handle.wait(timeout=600)
    assert s3_server.get("exports/with-credentials.zip") == local_zip
    assert result.output.startswith(f"s3://***@{BUCKET}/exports/with-credentials.zip")
    snapshot = ray_session.get(get_progress_actor(handle.export_id).snapshot.remote())
    _assert_no_secret(repr(snapshot), "the status")
    _assert_no_secret(repr(result), "the result")
    assert ACCESS_KEY not in repr(snapshot) and ACCESS_KEY not in result.output


@pytest.mark.slow
def test_reuse_of_a_previous_export_in_a_bucket(small_demo, local_zip, images_in_bucket, s3_server):
    base = ["--db", str(small_demo.db_path), "--project", small_demo.project_id, "--images-root", images_in_bucket]
    first = _cli_export(*base, "--out", s3_server.uri("exports/reuse-first.zip"))
    assert first.returncode == 0, first.stderr
    again = _cli_export(*base, "--out", s3_server.uri("exports/reuse-again.zip"),
                        "--reuse", s3_server.uri("exports/reuse-first.zip"))
    assert again.returncode == 0, again.stderr
    assert "reuse: 3 images taken over, 0 computed" in again.stderr
    # the copy stage read the stored members back from the bucket: the bytes are those of a full export
    assert s3_server.get("exports/reuse-again.zip") == local_zip
    _assert_no_secret(again.stderr, "stderr")
