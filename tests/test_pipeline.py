"""End-to-end exports through Ray on the shared test session (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
import zipfile
from pathlib import Path

import pytest

from ray_export.api import export
from ray_export.options import build_options

pytestmark = pytest.mark.usefixtures("ray_session")


def _db_counts(db_path: Path, project_id: str) -> dict:
    con = sqlite3.connect(db_path)
    images = con.execute(
        'SELECT id, name, "originalPath" FROM images WHERE "projectId" = ? AND NOT COALESCE("isVideoContainer", 0)',
        (project_id,),
    ).fetchall()
    con.close()
    return {"images": images}


@pytest.fixture(scope="module")
def demo_zip(demo_project, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "demo.zip"
    result = export(db=str(demo_project.db_path), project=demo_project.project_id, output=str(out))
    return out, result


def test_zip_has_every_member_and_originals_are_verbatim(demo_zip, demo_project):
    out, result = demo_zip
    assert result.output == str(out)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no partial, spool or lock file left
    db = _db_counts(demo_project.db_path, demo_project.project_id)
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert zf.testzip() is None
        for member in [
            "annotations/instances_default.json",
            "annotations/json/segmentation_data.json",
            "data.yaml",
            "metrics/metrics.csv",
            "metrics/metrics.xlsx",
            "metrics/metrics.json",
            "metrics/metrics.parquet",
            "documentation/README.md",
            "documentation/metrics_guide.md",
            "documentation/metadata.json",
            "documentation/export_report.json",
        ]:
            assert member in names, member
        images = [n for n in names if n.startswith("images/")]
        labels = [n for n in names if n.startswith("labels/")]
        assert len(labels) == len(db["images"])
        # every original that exists on disk is in the ZIP byte for byte
        root = Path(demo_project.images_root)
        on_disk = {}
        for _id, _name, rel in db["images"]:
            path = root / rel
            if path.exists():
                on_disk[hashlib.sha256(path.read_bytes()).hexdigest()] = rel
        in_zip = {hashlib.sha256(zf.read(n)).hexdigest() for n in images}
        assert in_zip == set(on_disk)
        coco = json.loads(zf.read("annotations/instances_default.json"))
        assert [img["id"] for img in coco["images"]] == list(range(1, len(db["images"]) + 1))
        # ordering: per-image members first in index order, aggregated members after
        first_aggregate = names.index("annotations/instances_default.json")
        assert all(n.startswith(("images/", "visualizations/", "labels/")) for n in names[:first_aggregate])
        # compression policy
        for info in zf.infolist():
            if info.filename.endswith((".png", ".jpg", ".jpeg", ".webp")):
                assert info.compress_type == zipfile.ZIP_STORED, info.filename
            if info.filename.endswith((".json", ".csv", ".md", ".txt", ".yaml")):
                assert info.compress_type == zipfile.ZIP_DEFLATED, info.filename


def test_result_reports_the_fixed_cost_in_order(demo_zip):
    from ray_export.run import MILESTONES

    _, result = demo_zip
    timings = result.timings
    assert set(timings) == {*MILESTONES, "finishing"}
    assert all(value >= 0 for value in timings.values())
    order = ["ray_ready", "progress_ready", "first_batch_written", "last_image_written", "committed"]
    assert [timings[name] for name in order] == sorted(timings[name] for name in order)
    assert timings["plan_ready"] <= timings["first_batch_written"]
    assert timings["writer_ready"] <= timings["first_batch_written"]
    assert timings["actors_ready"] == max(timings["progress_ready"], timings["writer_ready"])
    assert timings["finishing"] == pytest.approx(timings["committed"] - timings["last_image_written"], abs=1e-3)
    assert timings["committed"] <= result.seconds


def test_object_numbers_agree_across_formats(demo_zip):
    out, result = demo_zip
    with zipfile.ZipFile(out) as zf:
        coco = json.loads(zf.read("annotations/instances_default.json"))
        seg = json.loads(zf.read("annotations/json/segmentation_data.json"))
        rows = list(csv.DictReader(io.StringIO(zf.read("metrics/metrics.csv").decode("utf-8"))))
        by_index = {img["index"]: img for img in seg["images"]}
        coco_numbers: dict[int, list[int]] = {}
        for ann in coco["annotations"]:
            if ann["category_id"] == 1:
                coco_numbers.setdefault(ann["image_id"], []).append(ann["attributes"]["number"])
        total_objects = 0
        for img in coco["images"]:
            entry = by_index[img["id"]]
            numbers = [o["number"] for o in entry["objects"]]
            total_objects += len(numbers)
            assert numbers == list(range(1, len(numbers) + 1))
            assert coco_numbers.get(img["id"], []) == numbers
            stem = img["file_name"].rsplit(".", 1)[0]
            label = zf.read(f"labels/{stem}.txt").decode()
            assert len(label.splitlines()) == (len(numbers) if img["width"] else 0)
            complete = [o["number"] for o in entry["objects"] if o["complete"]]
            metric_numbers = [int(r["number"]) for r in rows if r["image_name"] == img["file_name"]]
            assert metric_numbers == complete
        assert result.counts["objects"] == total_objects
        assert total_objects > 10
        report = json.loads(zf.read("documentation/export_report.json"))
        assert report["counts"]["images"] == len(coco["images"])
        assert report["counts"]["objects"] == total_objects


def test_different_batch_sizes_give_identical_bytes(demo_zip, demo_project, tmp_path):
    out, _ = demo_zip
    other = tmp_path / "other.zip"
    options = build_options(
        None,
        {
            "db": str(demo_project.db_path),
            "project": demo_project.project_id,
            "output": str(other),
            "stages": {
                "read": {"batch_size": 5},
                "copy": {"batch_size": 3},
                "visualize": {"batch_size": 2},
                "annotate": {"batch_size": 7},
                "metrics": {"batch_size": 1},
            },
        },
    )
    export(options)
    assert other.read_bytes() == out.read_bytes()


def test_postgres_export_matches_sqlite_bytes(demo_zip, demo_project, postgres_dsn, tmp_path):
    from ray_export.demo import copy_project_to_postgres

    copy_project_to_postgres(demo_project.db_path, postgres_dsn)
    out, _ = demo_zip
    pg_out = tmp_path / "pg.zip"
    export(db=postgres_dsn, project=demo_project.project_id, images_root=str(demo_project.images_root),
           output=str(pg_out))
    with zipfile.ZipFile(pg_out) as a, zipfile.ZipFile(out) as b:
        assert a.namelist() == b.namelist()
        for name in a.namelist():
            assert a.read(name) == b.read(name), name
    assert pg_out.read_bytes() == out.read_bytes()


def test_uri_output_is_uploaded_only_when_complete(demo_zip, demo_project, tmp_path):
    out, _ = demo_zip
    target = tmp_path / "uploaded.zip"
    uri = target.as_uri()
    result = export(db=str(demo_project.db_path), project=demo_project.project_id, output=uri)
    assert result.output == uri
    assert target.read_bytes() == out.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["uploaded.zip"]
    from ray_export.errors import ExportError

    with pytest.raises(ExportError) as info:
        export(db=str(demo_project.db_path), project=demo_project.project_id, output=uri)
    assert info.value.exit_code == 2 and "--force" in str(info.value)


def test_failed_upload_removes_the_partial_object(tmp_path, monkeypatch):
    from actors import zip_writer

    local = tmp_path / "local.zip"
    local.write_bytes(b"x" * 1000)
    target = tmp_path / "remote.zip"
    real_open = open

    class Exploding:
        def __init__(self, *a, **k):
            self.f = real_open(*a, **k)
            self.calls = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n):
            self.calls += 1
            if self.calls > 1:
                raise OSError("disk went away")
            return self.f.read(100)

    monkeypatch.setattr(zip_writer, "open", Exploding, raising=False)
    with pytest.raises(OSError):
        zip_writer.upload_file(local, target.as_uri())
    assert not target.exists()


@pytest.mark.postgres
def test_password_never_leaves_the_dsn(demo_project, postgres_dsn, tmp_path):
    """Neither the ZIP, the command's output, the progress status nor an error line shows the password."""
    import os
    import subprocess
    import sys
    from urllib.parse import urlsplit

    import ray

    from ray_export.demo import copy_project_to_postgres

    password = urlsplit(postgres_dsn).password
    assert password, "the test server's DSN carries a password"
    copy_project_to_postgres(demo_project.db_path, postgres_dsn)
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    out = tmp_path / "pg.zip"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ray_export", *args, "--address", address],
                              capture_output=True, text=True, env=env, timeout=300)

    done = cli("export", "--db", postgres_dsn, "--project", demo_project.project_id,
               "--images-root", str(demo_project.images_root), "--out", str(out))
    assert done.returncode == 0, done.stderr
    export_id = done.stderr.splitlines()[0].split(":", 1)[1].strip()
    status = cli("status", export_id, "--json")
    wrong = cli("export", "--db", postgres_dsn, "--project", "no such project",
                "--images-root", str(demo_project.images_root), "--out", str(tmp_path / "x.zip"))
    assert wrong.returncode == 2 and "no such project" in wrong.stderr
    bad_port = postgres_dsn.rsplit(":", 1)[0] + ":1/nodb"
    unreachable = cli("export", "--db", bad_port, "--project", "p",
                      "--images-root", str(demo_project.images_root), "--out", str(tmp_path / "y.zip"))
    assert unreachable.returncode == 1
    for text in (done.stdout, done.stderr, status.stdout, status.stderr, wrong.stderr, unreachable.stderr):
        assert password not in text
    with zipfile.ZipFile(out) as zf:
        for name in zf.namelist():
            assert password.encode() not in zf.read(name), name
        metadata = zf.read("documentation/metadata.json").decode()
    assert "127.0.0.1" not in metadata and str(demo_project.images_root) not in metadata
