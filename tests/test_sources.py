"""Database access: targets, masking, project resolution, export order, projections, demo data."""

from __future__ import annotations

import hashlib
import json
import pickle
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ray_export import sources
from ray_export.demo import DEMO_DB_NAME, build_demo_project, copy_project_to_postgres
from ray_export.polygons import parse_polygons
from ray_export.sources import (
    POSTGRES,
    SQLITE,
    DbTarget,
    ReplacedText,
    SourceError,
    connect,
    fetch_image_rows,
    list_images,
    mask_dsn,
    parse_db_target,
    parse_timestamp,
    projected_columns,
    resolve_project,
    text_value,
)
from tests.pg_server import TEST_PASSWORD
from tests.projects import write_sqlite_rows

UTC = timezone.utc


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


# --------------------------------------------------------------------------------------------------
# a small hand-made database with mixed timestamp forms


ORDER_DB_PROJECTS = [
    {"id": "p-alpha", "title": "Alpha", "type": "spheroid", "createdAt": 0, "updatedAt": _ms("2024-02-01T00:00:00")},
    {"id": "p-twin-1", "title": "Twin", "type": "wound", "createdAt": 0, "updatedAt": 0},
    {"id": "p-twin-2", "title": "Twin", "type": "sperm", "createdAt": 0, "updatedAt": 0},
    {"id": "Alpha", "title": "Named like a title", "type": "spheroid", "createdAt": 0, "updatedAt": 0},
]


def _image(image_id: str, project: str, display: int | None, created: Any, **extra: Any) -> dict[str, Any]:
    row = {
        "id": image_id, "name": f"{image_id}.png", "originalPath": f"uploads/{image_id}.png", "projectId": project,
        "width": 100, "height": 80, "displayOrder": display, "isVideoContainer": 0, "pixelSizeUm": 0.5,
        "createdAt": created, "updatedAt": _ms("2024-01-05T00:00:00"),
    }
    row.update(extra)
    return row


# Expected export order of p-alpha: d, e (same instant as d, id decides), b, h, a, g, c.
ORDER_DB_IMAGES = [
    _image("img-a", "p-alpha", 2, 1000),
    _image("img-b", "p-alpha", 1, "2024-01-02T00:00:00Z"),
    _image("img-c", "p-alpha", None, "2023-01-01 00:00:00"),
    _image("img-e", "p-alpha", 1, "2024-01-01T02:00:00+02:00"),
    _image("img-d", "p-alpha", 1, _ms("2024-01-01T00:00:00")),
    _image("img-f", "p-alpha", 0, 0, isVideoContainer=1, name="movie.mp4"),
    _image("img-g", "p-alpha", None, "2022-06-01 12:00:00.250"),
    _image("img-h", "p-alpha", 2, "500", width=None, height=None, pixelSizeUm=None),
    _image("img-twin", "p-twin-1", 1, 0),
]
ORDER_EXPECTED = ["img-d", "img-e", "img-b", "img-h", "img-a", "img-g", "img-c"]
ORDER_DB_SEGMENTATIONS = [
    {"id": "seg-a", "imageId": "img-a", "polygons": '[{"points":[{"x":1,"y":1},{"x":5,"y":1},{"x":5,"y":5}],'
     '"type":"external"}]', "model": "hrnet", "threshold": 0.5, "imageWidth": 101, "imageHeight": 81,
     "createdAt": 0, "updatedAt": "2024-03-01T10:00:00.123Z"},
    {"id": "seg-h", "imageId": "img-h", "polygons": "[]", "model": "hrnet", "threshold": 0.5,
     "imageWidth": 640, "imageHeight": 480, "createdAt": 0, "updatedAt": _ms("2024-01-06T00:00:00")},
]


def make_order_db(path: Path) -> Path:
    return write_sqlite_rows(path, ORDER_DB_PROJECTS, ORDER_DB_IMAGES, ORDER_DB_SEGMENTATIONS)


@pytest.fixture(scope="module")
def order_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_order_db(tmp_path_factory.mktemp("order") / "order.db")


@pytest.fixture(scope="module")
def demo(demo_project):
    """The session's demo project (12 images, seed 0; conftest)."""
    return demo_project


@pytest.fixture(scope="module")
def pg_dsn(postgres_dsn: str, order_db: Path, demo) -> str:
    """The session's PostgreSQL server loaded with the order test data and the demo project."""
    copy_project_to_postgres(order_db, postgres_dsn)
    copy_project_to_postgres(demo.db_path, postgres_dsn)
    return postgres_dsn


@pytest.fixture(params=[SQLITE, pytest.param(POSTGRES, marks=pytest.mark.postgres)])
def order_target(request: pytest.FixtureRequest, order_db: Path) -> DbTarget:
    if request.param == SQLITE:
        return parse_db_target(str(order_db))
    return parse_db_target(request.getfixturevalue("pg_dsn"))


# --------------------------------------------------------------------------------------------------
# targets and masking


def test_parse_postgres_dsn_forms() -> None:
    target = parse_db_target("postgresql://alice:hunter2@db.example:5433/spheroseg?sslmode=disable")
    assert target.kind == POSTGRES and target.sqlite_path is None
    assert target.dsn == "postgresql://alice:hunter2@db.example:5433/spheroseg?sslmode=disable"
    assert target.display() == "postgresql://alice:***@db.example:5433/spheroseg?sslmode=disable"
    assert parse_db_target("postgres://db.example/spheroseg").display() == "postgres://db.example/spheroseg"
    kv = parse_db_target("host=db.example dbname=spheroseg password=hunter2 user=alice")
    assert kv.kind == POSTGRES and "hunter2" not in kv.display()


def test_parse_sqlite_forms(order_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = parse_db_target(str(order_db))
    assert plain.kind == SQLITE and plain.sqlite_path == order_db.resolve()
    assert parse_db_target(f"sqlite:///{order_db}").sqlite_path == order_db.resolve()  # sqlite:////abs
    assert parse_db_target(f"sqlite://{order_db}").sqlite_path == order_db.resolve()  # sqlite:///abs (3 slashes)
    monkeypatch.chdir(order_db.parent)
    assert parse_db_target("sqlite:///order.db").sqlite_path == order_db.resolve()
    assert parse_db_target("order.db").sqlite_path == order_db.resolve()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "/nonexistent/folder/spheroseg.db",
        "sqlite:///nonexistent-file.db",
        "postgresql://alice:hunter2@[::1/db",
        "postgresql://alice:hunter2@db.example:notaport/db",
        "mysql://alice:hunter2@db.example/db",
        "host=db.example password=hunter2 port=abc",
    ],
)
def test_parse_errors_are_usage_errors_without_password(text: str) -> None:
    with pytest.raises(SourceError) as info:
        parse_db_target(text)
    assert info.value.exit_code == 2
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p%40w@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:p@w/x@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db?user=u&password=pw&sslmode=require", "postgresql://h/db?user=u&password=***&sslmode=require"),
        ("host=h password='a b' dbname=d", "host=h password=*** dbname=d"),
    ],
)
def test_mask_dsn(dsn: str, masked: str) -> None:
    assert mask_dsn(dsn) == masked


def test_target_never_shows_password() -> None:
    target = parse_db_target("postgresql://alice:hunter2@db.example/spheroseg")
    for text in (repr(target), str(target), f"{target}", target.display()):
        assert "hunter2" not in text
    clone = pickle.loads(pickle.dumps(target))
    assert clone == target and clone.dsn.endswith("@db.example/spheroseg")


def test_unreachable_postgres_is_exit_1_masked() -> None:
    with socket_closed_port() as port:
        target = parse_db_target(f"postgresql://alice:hunter2@127.0.0.1:{port}/spheroseg?connect_timeout=5")
        with pytest.raises(SourceError) as info:
            resolve_project(target, "anything")
    assert info.value.exit_code == 1
    assert "hunter2" not in str(info.value) and "alice:***@127.0.0.1" in str(info.value)


class socket_closed_port:
    """A local port that nothing listens on."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


@pytest.mark.postgres
def test_postgres_auth_failure_is_exit_1_masked(pg_dsn: str) -> None:
    from urllib.parse import urlsplit

    password = urlsplit(pg_dsn).password
    assert password, "the test server's DSN carries a password (TCP logins use scram)"
    wrong = pg_dsn.replace(f":{password}@", ":Wr0ng-Secret@")
    with pytest.raises(SourceError) as info:
        resolve_project(parse_db_target(wrong), "Alpha")
    assert info.value.exit_code == 1
    assert "Wr0ng-Secret" not in str(info.value) and password not in str(info.value)
    assert "authentication" in str(info.value)


@pytest.mark.postgres
def test_postgres_connection_is_read_only(pg_dsn: str) -> None:
    import psycopg

    conn = connect(parse_db_target(pg_dsn))
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE should_not_exist (a int)")
    finally:
        conn.close()


@pytest.mark.postgres
def test_postgres_without_tables_is_not_spheroseg(pg_dsn: str) -> None:
    sep = "&" if "?" in pg_dsn else "?"
    target = parse_db_target(f"{pg_dsn}{sep}options=-csearch_path%3Dno_such_schema")
    with pytest.raises(SourceError) as info:
        resolve_project(target, "Alpha")
    assert info.value.exit_code == 1 and "not a SpheroSeg database" in str(info.value)
    assert TEST_PASSWORD not in str(info.value)


def test_sqlite_is_read_only_and_not_created(order_db: Path, tmp_path: Path) -> None:
    conn = connect(parse_db_target(str(order_db)))
    try:
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("CREATE TABLE should_not_exist (a int)")
    finally:
        conn.close()
    gone = tmp_path / "gone.db"
    gone.write_bytes(b"")
    target = parse_db_target(str(gone))
    gone.unlink()
    with pytest.raises(SourceError) as info:
        connect(target)
    assert info.value.exit_code == 1 and not gone.exists()


def test_sqlite_without_tables_is_not_spheroseg(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE something (a int)")
    with pytest.raises(SourceError) as info:
        resolve_project(parse_db_target(str(other)), "Alpha")
    assert info.value.exit_code == 1 and "not a SpheroSeg database" in str(info.value)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SourceError) as info:
        resolve_project(parse_db_target(str(junk)), "Alpha")
    assert info.value.exit_code == 1


def test_source_error_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(SourceError("boom", exit_code=2)))
    assert isinstance(err, SourceError) and err.exit_code == 2 and str(err) == "boom"


# --------------------------------------------------------------------------------------------------
# timestamps


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (1709283600000, datetime(2024, 3, 1, 9, 0, tzinfo=UTC)),
        (1709283600123.0, datetime(2024, 3, 1, 9, 0, 0, 123000, tzinfo=UTC)),
        ("1709283600000", datetime(2024, 3, 1, 9, 0, tzinfo=UTC)),
        ("2024-03-01T09:00:00Z", datetime(2024, 3, 1, 9, 0, tzinfo=UTC)),
        ("2024-03-01T11:00:00+02:00", datetime(2024, 3, 1, 9, 0, tzinfo=UTC)),
        ("2024-03-01 09:00:00.5", datetime(2024, 3, 1, 9, 0, 0, 500000, tzinfo=UTC)),
        ("2024-03-01 09:00:00.123 +00:00", datetime(2024, 3, 1, 9, 0, 0, 123000, tzinfo=UTC)),
        ("2024-03-01T09:00:00.1234567+0100", datetime(2024, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)),
        ("2024-03-01", datetime(2024, 3, 1, tzinfo=UTC)),
        (datetime(2024, 3, 1, 9, 0), datetime(2024, 3, 1, 9, 0, tzinfo=UTC)),
        (datetime(2024, 3, 1, 10, 0, tzinfo=timezone(timedelta(hours=1))), datetime(2024, 3, 1, 9, 0, tzinfo=UTC)),
        (None, None),
        ("", None),
        ("yesterday", None),
        (float("nan"), None),
        (True, None),
    ],
)
def test_parse_timestamp(value: Any, expected: datetime | None) -> None:
    parsed = parse_timestamp(value)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)


# --------------------------------------------------------------------------------------------------
# projects and the light listing (both backends)


def test_resolve_project_by_id_and_title(order_target: DbTarget) -> None:
    by_id = resolve_project(order_target, "p-alpha")
    assert (by_id.id, by_id.title, by_id.type) == ("p-alpha", "Alpha", "spheroid")
    assert by_id.updated_at == datetime(2024, 2, 1, tzinfo=UTC)
    assert resolve_project(order_target, "Named like a title").id == "Alpha"
    # An id wins over an equal title.
    assert resolve_project(order_target, "Alpha").id == "Alpha"


def test_resolve_project_unknown_and_ambiguous(order_target: DbTarget) -> None:
    with pytest.raises(SourceError) as info:
        resolve_project(order_target, "No such project")
    assert info.value.exit_code == 2 and "unknown project" in str(info.value)
    with pytest.raises(SourceError) as info:
        resolve_project(order_target, "Twin")
    assert info.value.exit_code == 2
    assert "p-twin-1" in str(info.value) and "p-twin-2" in str(info.value)


def test_export_order_mixed_timestamps(order_target: DbTarget) -> None:
    listing = list_images(order_target, "p-alpha")
    assert [e.image_id for e in listing.entries] == ORDER_EXPECTED
    assert [e.index for e in listing.entries] == list(range(1, len(ORDER_EXPECTED) + 1))
    assert "img-f" not in {e.image_id for e in listing.entries}  # video container
    assert listing.unknown_image_ids == []
    by_id = {e.image_id: e for e in listing.entries}
    assert by_id["img-a"].updated_at == datetime(2024, 3, 1, 10, 0, 0, 123000, tzinfo=UTC)
    assert by_id["img-b"].updated_at == datetime(2024, 1, 5, tzinfo=UTC)
    assert (by_id["img-h"].pixel_size_um, by_id["img-a"].pixel_size_um) == (None, 0.5)
    # a size in segmentations (img-h), in images (img-b) or in both (img-a)
    assert by_id["img-h"].size_in_database and by_id["img-b"].size_in_database and by_id["img-a"].size_in_database
    assert by_id["img-a"].name == "img-a.png"
    assert listing.newest_updated_at == datetime(2024, 3, 1, 10, 0, 0, 123000, tzinfo=UTC)


def test_selected_ids_and_unknown_ids(order_target: DbTarget) -> None:
    listing = list_images(order_target, "p-alpha", ["img-a", "img-c", "img-f", "img-twin", "nope", "img-a", "img-d"])
    assert [(e.index, e.image_id) for e in listing.entries] == [(1, "img-d"), (2, "img-a"), (3, "img-c")]
    assert listing.unknown_image_ids == ["img-f", "img-twin", "nope"]
    # The export time covers only what is exported (and the project).
    only_b = list_images(order_target, "p-alpha", ["img-b"])
    assert only_b.newest_updated_at == datetime(2024, 2, 1, tzinfo=UTC)


def test_no_images_selected_is_usage_error(order_target: DbTarget) -> None:
    with pytest.raises(SourceError) as info:
        list_images(order_target, "p-alpha", ["img-f", "nope"])
    assert info.value.exit_code == 2
    with pytest.raises(SourceError) as info:
        list_images(order_target, "p-twin-2")
    assert info.value.exit_code == 2


def test_user_values_are_bound_parameters(order_target: DbTarget) -> None:
    hostile = "x' OR '1'='1"
    with pytest.raises(SourceError) as info:
        resolve_project(order_target, hostile)
    assert "unknown project" in str(info.value)
    with pytest.raises(SourceError):
        list_images(order_target, hostile)
    listing = list_images(order_target, "p-alpha", [hostile, "img-a"])
    assert listing.unknown_image_ids == [hostile] and len(listing.entries) == 1


def _traced_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    statements: list[str] = []
    real_connect = sources.connect

    def traced(target: DbTarget) -> Any:
        conn = real_connect(target)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sources, "connect", traced)
    return statements


def test_light_query_reads_no_polygons(order_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    statements = _traced_statements(monkeypatch)
    list_images(parse_db_target(str(order_db)), "p-alpha")
    assert statements and all("polygons" not in s for s in statements)


# --------------------------------------------------------------------------------------------------
# the heavy projected read


def test_projected_columns() -> None:
    assert projected_columns(False, False) == ["image_id", "db_width", "db_height", "seg_width", "seg_height"]
    assert projected_columns(True, True) == [
        "image_id", "original_path", "db_width", "db_height", "seg_width", "seg_height", "polygons",
    ]


@pytest.mark.parametrize(("need_polygons", "need_path"), [(False, False), (True, False), (False, True), (True, True)])
def test_fetch_image_rows_projects(order_target: DbTarget, need_polygons: bool, need_path: bool) -> None:
    conn = connect(order_target)
    try:
        rows = fetch_image_rows(conn, order_target.kind, ["img-a", "img-b", "img-h", "missing"], need_polygons,
                                need_path)
    finally:
        conn.close()
    by_id = {r["image_id"]: r for r in rows}
    assert set(by_id) == {"img-a", "img-b", "img-h"}
    for row in rows:
        assert list(row) == [*projected_columns(need_polygons, need_path), "problems"]
        assert row["problems"] == []
    assert (by_id["img-a"]["db_width"], by_id["img-a"]["seg_width"], by_id["img-a"]["seg_height"]) == (100, 101, 81)
    assert by_id["img-b"]["seg_width"] is None and by_id["img-h"]["db_width"] is None
    if need_polygons:
        assert json.loads(by_id["img-a"]["polygons"])[0]["type"] == "external"
        assert by_id["img-b"]["polygons"] is None and by_id["img-h"]["polygons"] == "[]"
    if need_path:
        assert by_id["img-a"]["original_path"] == "uploads/img-a.png"


def test_heavy_sql_selects_only_needed_columns(order_db: Path) -> None:
    conn = connect(parse_db_target(str(order_db)))
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        fetch_image_rows(conn, SQLITE, ["img-a"], need_polygons=False, need_path=False)
    finally:
        conn.close()
    sql = " ".join(statements)
    assert "polygons" not in sql and "originalPath" not in sql and "LEFT JOIN segmentations" in sql
    pg_sql = sources.heavy_query(POSTGRES, projected_columns(False, False), 3)
    assert "polygons" not in pg_sql and "= ANY(%s)" in pg_sql


def test_sqlite_ids_are_sent_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "many.db"
    projects = [{"id": "p", "title": "Many", "createdAt": 0, "updatedAt": 0}]
    write_sqlite_rows(path, projects, [_image(f"i{k:04d}", "p", k, k) for k in range(1203)])
    ro = connect(parse_db_target(str(path)))
    statements: list[str] = []
    ro.set_trace_callback(statements.append)
    try:
        rows = fetch_image_rows(ro, SQLITE, [f"i{k:04d}" for k in range(1203)], False, False)
    finally:
        ro.close()
    assert len(rows) == 1203 and len(statements) == 3


# --------------------------------------------------------------------------------------------------
# the demo project


def test_demo_project_content(demo) -> None:
    import cv2

    assert demo.db_path.name == DEMO_DB_NAME and demo.images_root == demo.db_path.parent
    target = parse_db_target(str(demo.db_path))
    project = resolve_project(target, demo.title)
    assert project.id == demo.project_id
    listing = list_images(target, demo.project_id)
    assert len(listing.entries) == 12
    names = [e.name for e in listing.entries]
    assert names.count("spheroid.png") == 2
    assert listing.entries[-1].name == "spheroid.png"  # displayOrder null goes last
    assert {e.pixel_size_um for e in listing.entries} == {0.645}

    conn = sqlite3.connect(demo.db_path)
    video = conn.execute('SELECT id FROM images WHERE "isVideoContainer"').fetchall()
    polygons = dict(conn.execute('SELECT "imageId", polygons FROM segmentations').fetchall())
    files = {row[0]: row[1:] for row in conn.execute('SELECT id, "originalPath", width, height FROM images')}
    conn.close()
    assert len(video) == 1 and video[0][0] not in {e.image_id for e in listing.entries}
    assert len({files[e.image_id][0] for e in listing.entries}) == 12
    assert sum(e.image_id not in polygons for e in listing.entries) == 1

    kinds = set()
    holes = polylines = incomplete = 0
    for entry in listing.entries:
        original_path, db_width, db_height = files[entry.image_id]
        data = (demo.images_root / original_path).read_bytes()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert image is not None
        height, width = image.shape[:2]
        assert 1_000_000 <= width * height <= 2_000_000
        if db_width is not None:
            assert (db_width, db_height) == (width, height)
        kinds.add((Path(entry.name).suffix, str(image.dtype), image.ndim))
        if entry.image_id in polygons:
            raw = json.loads(polygons[entry.image_id])
            parsed = parse_polygons(polygons[entry.image_id])
            assert parsed.problems == [] and parsed.orphan_holes == []
            assert all(60 <= len(o.outer) <= 200 for o in parsed.objects)
            assert all(o.outer[:, 0].max() <= width - 1 and o.outer[:, 1].max() <= height - 1 for o in parsed.objects)
            holes += sum(len(o.holes) for o in parsed.objects)
            assert sum(1 for el in raw if el["type"] == "internal") == sum(len(o.holes) for o in parsed.objects)
            assert all(el.get("parent_id") for el in raw if el["type"] == "internal")
            polylines += len(parsed.polylines)
            incomplete += sum(not o.complete for o in parsed.objects)
    assert {(".png", "uint8", 2), (".png", "uint16", 2), (".tif", "uint16", 2), (".jpg", "uint8", 3),
            (".tif", "uint8", 3)} <= kinds
    assert holes >= 2 and polylines == 1 and incomplete == 1


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".db"
    }


def _db_dump(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return [
            row for table in ("projects", "images", "segmentations")
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY id")
        ]
    finally:
        conn.close()


def test_demo_is_deterministic_and_reused(demo, tmp_path: Path) -> None:
    again = build_demo_project(tmp_path / "a", n_images=12, seed=0)
    assert again.project_id == demo.project_id
    assert _tree_digest(again.images_root) == _tree_digest(demo.images_root)
    assert _db_dump(again.db_path) == _db_dump(demo.db_path)

    stamp = again.db_path.stat().st_mtime_ns
    reused = build_demo_project(tmp_path / "a", n_images=12, seed=0)
    assert reused == again and again.db_path.stat().st_mtime_ns == stamp

    other = build_demo_project(tmp_path / "a", n_images=3, seed=1)
    assert other.project_id != demo.project_id
    assert len(list_images(parse_db_target(str(other.db_path)), other.project_id).entries) == 3


def test_demo_rebuilds_when_a_file_is_missing(tmp_path: Path) -> None:
    workdir = tmp_path / "odd name #1?"
    first = build_demo_project(workdir, n_images=2, seed=5)
    victim = next((workdir / "uploads").rglob("*.png"))
    victim.unlink()
    second = build_demo_project(workdir, n_images=2, seed=5)
    assert second == first and victim.is_file()
    assert resolve_project(parse_db_target(str(first.db_path)), first.project_id).title == first.title


@pytest.mark.postgres
def test_backends_give_identical_listings(pg_dsn: str, demo, order_db: Path) -> None:
    sqlite_target, pg_target = parse_db_target(str(demo.db_path)), parse_db_target(pg_dsn)
    assert resolve_project(pg_target, demo.title) == resolve_project(sqlite_target, demo.title)
    assert list_images(pg_target, demo.project_id) == list_images(sqlite_target, demo.project_id)
    order_sqlite = parse_db_target(str(order_db))
    assert list_images(pg_target, "p-alpha") == list_images(order_sqlite, "p-alpha")

    ids = [e.image_id for e in list_images(sqlite_target, demo.project_id).entries]
    pg_conn, sqlite_conn = connect(pg_target), connect(sqlite_target)
    try:
        pg_rows = sorted(fetch_image_rows(pg_conn, POSTGRES, ids, True, True), key=lambda r: r["image_id"])
        sqlite_rows = sorted(fetch_image_rows(sqlite_conn, SQLITE, ids, True, True), key=lambda r: r["image_id"])
    finally:
        pg_conn.close()
        sqlite_conn.close()
    assert pg_rows == sqlite_rows


def test_ssl_key_passwords_are_masked_too() -> None:
    assert mask_dsn("postgresql://u:pw@h/db?sslpassword=abc&x=1") == "postgresql://u:***@h/db?sslpassword=***&x=1"
    assert mask_dsn("host=h sslpassword=abc password=pw user=u") == "host=h sslpassword=*** password=*** user=u"


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:pw@127.0.0.1:1/db?connect_timeout=abc",
        "postgresql://u:pw@127.0.0.1:1/db?sslmode=bogus",
        "postgresql://u:pw@127.0.0.1:1/db?bogusopt=1",
    ],
)
def test_malformed_dsn_parameters_are_usage_errors(dsn: str) -> None:
    from ray_export.sources import connect

    with pytest.raises(SourceError) as info:
        connect(parse_db_target(dsn))
    assert info.value.exit_code == 2 and ":pw@" not in str(info.value)


def test_short_digit_strings_are_dates_not_epoch_milliseconds() -> None:
    from ray_export.sources import parse_timestamp

    assert parse_timestamp("1709280000000") == datetime(2024, 3, 1, 8, tzinfo=timezone.utc)
    assert parse_timestamp("20240301") == datetime(2024, 3, 1, tzinfo=timezone.utc)
    assert parse_timestamp("2024") is None


# --------------------------------------------------------------------------------------------------
# text that is not UTF-8


def test_invalid_utf8_text_is_replaced_and_reported(tmp_path: Path) -> None:
    db = make_order_db(tmp_path / "bad_text.db")
    conn = sqlite3.connect(db)
    bad = "CAST(X'737572EDB280FF2E706E67' AS TEXT)"
    conn.execute(f"UPDATE images SET name = {bad}, \"originalPath\" = {bad} WHERE id = 'img-a'")
    conn.execute(f"UPDATE segmentations SET polygons = {bad} WHERE id = 'seg-a'")
    conn.execute(f"UPDATE projects SET title = {bad} WHERE id = 'p-alpha'")
    conn.commit()
    conn.close()
    target = parse_db_target(str(db))
    assert resolve_project(target, "p-alpha").title == "sur\ufffd\ufffd\ufffd\ufffd.png"
    entries = {e.image_id: e for e in list_images(target, "p-alpha").entries}
    assert entries["img-a"].name == "sur\ufffd\ufffd\ufffd\ufffd.png"
    assert [p["code"] for p in entries["img-a"].problems] == ["text_invalid_utf8"]
    assert "images.name" in entries["img-a"].problems[0]["message"]
    assert all(not e.problems for i, e in entries.items() if i != "img-a")
    conn = connect(target)
    try:
        rows = {r["image_id"]: r for r in fetch_image_rows(conn, SQLITE, ["img-a", "img-b"], True, True)}
    finally:
        conn.close()
    assert type(rows["img-a"]["polygons"]) is str and rows["img-a"]["polygons"].startswith("sur\ufffd")
    assert [p["code"] for p in rows["img-a"]["problems"]] == ["text_invalid_utf8", "text_invalid_utf8"]
    assert [
        p["message"].split(" held")[0] for p in rows["img-a"]["problems"]
    ] == ['images."originalPath"', "segmentations.polygons"]
    assert rows["img-b"]["problems"] == []


def test_text_values_from_bytes() -> None:
    assert text_value(b"caf\xc3\xa9") == "café" and type(text_value(b"caf\xc3\xa9")) is str
    replaced = text_value(memoryview(b"a\xffb"))
    assert replaced == "a\ufffdb" and isinstance(replaced, ReplacedText)
    assert text_value(None) is None and text_value(7) == "7"


@pytest.mark.postgres
def test_postgres_text_sent_as_bytes_is_decoded(pg_dsn: str) -> None:
    # with client_encoding SQL_ASCII psycopg hands text over as bytes
    target = parse_db_target(pg_dsn + ("&" if "?" in pg_dsn else "?") + "client_encoding=SQL_ASCII")
    conn = connect(target)
    try:
        assert conn.execute("SELECT 'x'::text").fetchone()[0] == b"x"
        rows = fetch_image_rows(conn, POSTGRES, ["img-a"], True, True)
    finally:
        conn.close()
    assert rows[0]["original_path"] == "uploads/img-a.png" and rows[0]["problems"] == []
    assert json.loads(rows[0]["polygons"])[0]["type"] == "external"
    assert resolve_project(target, "p-alpha").title == "Alpha"
    names = [e.name for e in list_images(target, "p-alpha").entries]
    assert names == [f"{i}.png" for i in ORDER_EXPECTED]
