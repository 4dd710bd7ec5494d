"""The parallel, ordered Ray datasource over the projected image query (SQLite and PostgreSQL)."""

from __future__ import annotations

import itertools
import json
import pickle
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from ray_export.datasource import (
    ProjectImagesDatasource,
    block_schema,
    read_project_images,
)
from ray_export.demo import copy_project_to_postgres
from ray_export.sources import POSTGRES, SQLITE, DbTarget, list_images, parse_db_target
from tests.projects import write_sqlite_rows

PROJECT_ID = "ds-project-0001"
N_IMAGES = 160
ROWS_PER_TASK = 32


def _image_id(k: int) -> str:
    return f"ds-image-{k:04d}"


def _polygons(k: int) -> str:
    ring = [{"x": 10.0 + k, "y": 10.0}, {"x": 20.0 + k, "y": 10.0}, {"x": 20.0 + k, "y": 25.5}]
    return json.dumps([{"id": _image_id(k), "points": ring, "type": "external"}])


def make_big_db(path: Path) -> Path:
    """A project of N_IMAGES rows (no image files): every 7th without segmentation, every 11th without size."""
    images, segmentations = [], []
    for k in range(N_IMAGES):
        # displayOrder runs backwards so the export order differs from insertion and id order.
        images.append({
            "id": _image_id(k), "name": f"img_{k:04d}.png", "originalPath": f"uploads/p/img_{k:04d}.png",
            "projectId": PROJECT_ID, "width": None if k % 11 == 0 else 640 + k, "height": 480,
            "displayOrder": N_IMAGES - k, "isVideoContainer": 0, "pixelSizeUm": 1.0,
            "createdAt": 1_700_000_000_000 + k, "updatedAt": 1_700_000_000_000 + k,
        })
        if k % 7:
            segmentations.append({
                "id": f"ds-seg-{k:04d}", "imageId": _image_id(k), "polygons": _polygons(k), "model": "hrnet",
                "threshold": 0.5, "imageWidth": 1000 + k, "imageHeight": 2000 + k,
                "createdAt": 1_700_000_100_000, "updatedAt": 1_700_000_100_000,
            })
    images.append({
        "id": "ds-video", "name": "movie.mp4", "originalPath": "uploads/p/movie.mp4", "projectId": PROJECT_ID,
        "displayOrder": 0, "isVideoContainer": 1, "createdAt": 0, "updatedAt": 0,
    })
    project = {"id": PROJECT_ID, "title": "Datasource test", "type": "spheroid", "createdAt": 0, "updatedAt": 0}
    write_sqlite_rows(path, [project], images, segmentations)
    return path


@pytest.fixture(scope="module")
def big_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_big_db(tmp_path_factory.mktemp("dsdb") / "big.db")


@pytest.fixture(scope="module")
def big_pg(postgres_dsn: str, big_db: Path) -> str:
    copy_project_to_postgres(big_db, postgres_dsn)
    return postgres_dsn


@pytest.fixture(params=[SQLITE, pytest.param(POSTGRES, marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, big_db: Path) -> DbTarget:
    if request.param == SQLITE:
        return parse_db_target(str(big_db))
    return parse_db_target(request.getfixturevalue("big_pg"))


def _driver_rows(target: DbTarget) -> list[dict[str, Any]]:
    listing = list_images(target, PROJECT_ID)
    return [
        {"index": e.index, "image_id": e.image_id, "member": f"images/{e.name}", "stem": Path(e.name).stem,
         "light_size": e.size_in_database}
        for e in listing.entries
    ]


def _k(image_id: str) -> int:
    return int(image_id.rsplit("-", 1)[1])


def _check_rows(table: pa.Table, need_polygons: bool, need_path: bool) -> None:
    for row in table.to_pylist():
        k = _k(row["image_id"])
        assert row["index"] == N_IMAGES - k  # displayOrder runs backwards
        assert row["member"] == f"images/img_{k:04d}.png" and row["stem"] == f"img_{k:04d}"
        assert row["db_width"] == (None if k % 11 == 0 else 640 + k) and row["db_height"] == 480
        assert row["light_size"] == (k % 7 != 0 or k % 11 != 0)
        if k % 7:
            assert (row["seg_width"], row["seg_height"]) == (1000 + k, 2000 + k)
        else:
            assert row["seg_width"] is None and row["seg_height"] is None
        if need_polygons and k % 7:
            assert json.loads(row["polygons"]) == json.loads(_polygons(k))
        else:
            assert row["polygons"] is None
        assert row["original_path"] == (f"uploads/p/img_{k:04d}.png" if need_path else None)


def _check_blocks(tables: list[pa.Table]) -> None:
    """Each block sorted by index over a contiguous range; together exactly 1..N_IMAGES."""
    ranges = []
    for table in tables:
        indexes = table.column("index").to_pylist()
        assert indexes == list(range(indexes[0], indexes[0] + len(indexes)))
        ranges.append((indexes[0], indexes[-1]))
    ranges.sort()
    assert ranges[0][0] == 1 and ranges[-1][1] == N_IMAGES
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))


def test_read_tasks_are_contiguous_and_serializable(target: DbTarget) -> None:
    from ray import cloudpickle

    rows = _driver_rows(target)
    datasource = ProjectImagesDatasource(target, list(reversed(rows)), True, True, rows_per_task=ROWS_PER_TASK)
    tasks = datasource.get_read_tasks(parallelism=1)
    assert len(tasks) == datasource.num_read_tasks() == 5
    assert sum(t.metadata.num_rows for t in tasks) == N_IMAGES
    assert datasource.estimate_inmemory_data_size() > 0
    tables = []
    for task in tasks:
        clone = cloudpickle.loads(cloudpickle.dumps(task))
        produced = list(clone())
        assert len(produced) == 1 and produced[0].schema.equals(datasource.schema)
        tables.append(produced[0])
    _check_blocks(tables)
    for table in tables:
        _check_rows(table, need_polygons=True, need_path=True)


def test_parallel_read_with_ray(ray_session, target: DbTarget) -> None:
    ray = ray_session
    dataset = read_project_images(target, _driver_rows(target), need_polygons=True, need_path=False,
                                  rows_per_task=ROWS_PER_TASK)
    materialized = dataset.materialize()
    assert materialized.num_blocks() >= 3
    tasks_executed = re.search(r"ReadProjectImages: (\d+) tasks executed", materialized.stats())
    assert tasks_executed is not None and int(tasks_executed.group(1)) == 5
    tables = [ray.get(ref) for ref in materialized.to_arrow_refs()]
    assert len(tables) == 5 and sum(t.num_rows for t in tables) == N_IMAGES
    _check_blocks(tables)
    for table in tables:
        _check_rows(table, need_polygons=True, need_path=False)
    ids = [i for t in tables for i in t.column("image_id").to_pylist()]
    assert len(set(ids)) == N_IMAGES and "ds-video" not in ids


def test_only_postgres_reads_may_leave_the_driver_node(big_db: Path) -> None:
    # Ray pins the reads of a datasource without distributed reads to the driver's node.
    sqlite_source = ProjectImagesDatasource(parse_db_target(str(big_db)), [{"index": 1, "image_id": "a"}], False, False)
    postgres_source = ProjectImagesDatasource(
        parse_db_target("postgresql://u@localhost/db"), [{"index": 1, "image_id": "a"}], False, False
    )
    assert sqlite_source.supports_distributed_reads is False
    assert postgres_source.supports_distributed_reads is True


def test_sqlite_read_with_resource_hints(ray_session, big_db: Path) -> None:
    target = parse_db_target(str(big_db))
    dataset = read_project_images(target, _driver_rows(target)[:10], False, False, rows_per_task=4,
                                  ray_remote_args={"num_cpus": 0.5})
    assert dataset.count() == 10


@pytest.mark.postgres
def test_postgres_read_accepts_a_label_selector(ray_session, big_pg: str) -> None:
    ray = ray_session
    target = parse_db_target(big_pg)
    driver_node = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
    pinned = read_project_images(target, _driver_rows(target)[:8], False, True, rows_per_task=4,
                                 ray_remote_args={"label_selector": driver_node, "num_cpus": 0.25})
    rows = sorted(pinned.take_all(), key=lambda r: r["index"])
    assert [r["index"] for r in rows] == list(range(1, 9))
    assert all(r["original_path"].startswith("uploads/p/") for r in rows)


def test_missing_rows_and_passthrough_fields(big_db: Path) -> None:
    target = parse_db_target(str(big_db))
    rows = [
        {"index": 2, "image_id": _image_id(5), "flag": True, "note": None, "count": 3, "original_path": "given"},
        {"index": 1, "image_id": "no-such-image", "flag": False, "note": "x", "count": None},
        {"index": 3, "image_id": _image_id(7), "mixed": 1},
        {"index": 4, "image_id": _image_id(8), "mixed": "two"},
    ]
    datasource = ProjectImagesDatasource(target, rows, need_polygons=False, need_path=False, rows_per_task=10)
    schema = datasource.schema
    assert schema.names[:2] == ["index", "image_id"]
    assert schema.field("flag").type == pa.bool_() and schema.field("count").type == pa.int64()
    assert schema.field("note").type == pa.string() and schema.field("mixed").type == pa.string()
    (task,) = datasource.get_read_tasks(parallelism=8)
    (table,) = list(task())
    out = table.to_pylist()
    assert [r["index"] for r in out] == [1, 2, 3, 4]
    assert out[0]["db_width"] is None and out[0]["seg_width"] is None and out[0]["note"] == "x"
    assert out[1]["seg_width"] == 1005 and out[1]["flag"] is True
    assert out[1]["original_path"] == "given"  # not fetched: the driver's value passes through
    assert [r["mixed"] for r in out] == [None, None, "1", "two"]


def test_block_schema_is_fixed() -> None:
    schema = block_schema([{"index": 1, "image_id": "a"}])
    assert schema.names == ["index", "image_id", "original_path", "db_width", "db_height", "seg_width",
                            "seg_height", "polygons", "problems"]
    assert schema.field("db_width").type == pa.int64() and schema.field("polygons").type == pa.string()


def test_invalid_construction(big_db: Path) -> None:
    target = parse_db_target(str(big_db))
    with pytest.raises(ValueError):
        ProjectImagesDatasource(target, [{"image_id": "a"}], False, False)
    with pytest.raises(ValueError):
        ProjectImagesDatasource(target, [{"index": 1, "image_id": "a"}, {"index": 1, "image_id": "b"}], False, False)
    with pytest.raises(ValueError):
        ProjectImagesDatasource(target, [{"index": 1, "image_id": "a"}], False, False, rows_per_task=0)
    datasource = ProjectImagesDatasource(target, [{"index": 1, "image_id": "a"}], False, False)
    assert pickle.loads(pickle.dumps(datasource)).target == target
    assert ProjectImagesDatasource(target, _driver_rows(target)[:12], False, False).num_read_tasks() == 1


# --------------------------------------------------------------------------------------------------
# projection: the heavy read fetches only the columns the chosen outputs need


class _RecordingCursor:
    def __init__(self, cursor: Any, issued: list[str]) -> None:
        self.cursor = cursor
        self.issued = issued

    def execute(self, query: Any, params: Any = None) -> Any:
        self.issued.append(str(query))
        return self.cursor.execute(query, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cursor, name)


class _RecordingConnection:
    """A psycopg connection whose cursors record each statement they send."""

    def __init__(self, conn: Any, issued: list[str]) -> None:
        self.conn = conn
        self.issued = issued

    def cursor(self) -> _RecordingCursor:
        return _RecordingCursor(self.conn.cursor(), self.issued)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def issued_sql(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement the datasource's reads send (SQLite: the engine's trace of what it ran)."""
    import ray_export.datasource as datasource_module

    issued: list[str] = []
    real_connect = datasource_module.connect

    def recording_connect(target: DbTarget) -> Any:
        conn = real_connect(target)
        if target.kind == SQLITE:
            conn.set_trace_callback(issued.append)
            return conn
        return _RecordingConnection(conn, issued)

    monkeypatch.setattr(datasource_module, "connect", recording_connect)
    return issued


#: image ids whose size is in the database (every image but those without segmentation and images.width)
_SIZED = [_image_id(k) for k in range(1, 40) if k % 7 or k % 11]
_UNSIZED = [_image_id(77)]

PROJECTIONS = [
    # (options, selected ids, polygon text read, originalPath read)
    ({}, _SIZED, True, True),
    ({"annotations": "none", "metrics": "none", "visualizations": False}, _SIZED, False, True),
    ({"originals": False, "visualizations": False, "metrics": "none", "annotations": "coco"}, _SIZED, True, False),
    ({"originals": False, "visualizations": False, "metrics": "csv", "annotations": "none"}, _SIZED, True, False),
    ({"originals": False, "visualizations": True, "metrics": "none", "annotations": "none"}, _SIZED, True, True),
    ({"originals": False, "visualizations": False, "metrics": "none", "annotations": "none"}, _SIZED, False, False),
    # an image whose size only its file holds: the copy stage must still find the file
    ({"originals": False, "visualizations": False, "metrics": "none", "annotations": "none"},
     _SIZED + _UNSIZED, False, True),
]


@pytest.mark.parametrize(("values", "image_ids", "polygons", "path"), PROJECTIONS)
def test_heavy_read_fetches_only_what_the_outputs_need(
    target: DbTarget, tmp_path: Path, issued_sql: list[str], values: dict, image_ids: list[str], polygons: bool,
    path: bool,
) -> None:
    from ray_export.options import build_options
    from ray_export.planning import plan_export

    options = build_options(
        {"db": target.dsn, "project": PROJECT_ID, "images_root": str(tmp_path), "output": str(tmp_path / "x.zip"),
         "image_ids": image_ids, **values}
    )
    plan = plan_export(options)
    assert (plan.need_polygons, plan.need_path) == (polygons, path)
    source = ProjectImagesDatasource(plan.target, plan.rows, plan.need_polygons, plan.need_path, rows_per_task=16)
    tables = list(source.read_in_process())
    reads = [sql for sql in issued_sql if "segmentations" in sql]
    assert len(reads) == len(tables) == 3
    for sql in reads:
        assert ("polygons" in sql) == polygons
        assert ('"originalPath"' in sql) == path
        assert "i.width" in sql and '"imageWidth"' in sql  # the sizes are always read
    rows = [row for table in tables for row in table.to_pylist()]
    assert [row["image_id"] for row in rows] == [row["image_id"] for row in plan.rows]
    with_polygons = [row for row in rows if row["polygons"] is not None]
    assert bool(with_polygons) == polygons
    assert all(row["original_path"] is not None for row in rows) == path
    assert any(row["original_path"] is not None for row in rows) == path
