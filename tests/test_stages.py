"""Stage functions and the ZIP assembler, without Ray."""

from __future__ import annotations

import json
import os
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pyarrow as pa
import pytest

from actors.zip_writer import AssemblyPlan, ExportAssembler
from ray_export import stages
from ray_export.documents import ExportSummary
from ray_export.formats.base import Selection
from ray_export.formats.registry import ResultSchemaError, result_schema, selected_formats
from ray_export.options import VisualizationSettings, build_options
from ray_export.planning import _decide_scale
from tests.open_files import unnamed_files_in

SQUARE = json.dumps(
    [
        {"type": "external", "points": [{"x": 4, "y": 4}, {"x": 36, "y": 4}, {"x": 36, "y": 28}, {"x": 4, "y": 28}]},
        {
            "type": "internal",
            "points": [{"x": 14, "y": 10}, {"x": 26, "y": 10}, {"x": 26, "y": 20}, {"x": 14, "y": 20}],
        },
        {"geometry": "polyline", "points": [{"x": 1, "y": 1}, {"x": 10, "y": 2}]},
    ]
)


def _png(width: int = 40, height: int = 32) -> bytes:
    ok, data = cv2.imencode(".png", np.full((height, width), 120, dtype=np.uint8))
    assert ok
    return data.tobytes()


def _source(rows: list[dict]) -> pa.Table:
    base = {"index": 0, "image_id": "", "file_name": "", "stem": "", "original_path": None, "db_width": None,
            "db_height": None, "seg_width": None, "seg_height": None, "polygons": None}
    full = [{**base, **r} for r in rows]
    schema = pa.schema([("index", pa.int64()), ("image_id", pa.string()), ("file_name", pa.string()),
                        ("stem", pa.string()), ("original_path", pa.string()), ("db_width", pa.int64()),
                        ("db_height", pa.int64()), ("seg_width", pa.int64()), ("seg_height", pa.int64()),
                        ("polygons", pa.string())])
    return pa.Table.from_pylist(full, schema=schema)


@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "root"
    (r / "sub").mkdir(parents=True)
    (r / "sub" / "a.png").write_bytes(_png())
    (tmp_path / "secret.png").write_bytes(_png())
    os.symlink(tmp_path / "secret.png", r / "link.png")
    os.symlink(r / "sub" / "a.png", r / "inner_link.png")
    return r


def _problems(table: pa.Table) -> list[set[str]]:
    return [{p["code"] for p in problems} for problems in table.column("problems").to_pylist()]


def _coco(table: pa.Table, row: int) -> list[dict]:
    return [json.loads(item) for item in table.column("coco_annotations")[row].as_py()]


def test_copy_stage_reads_bytes_refuses_escapes_and_settles_sizes(root):
    table = _source([
        {"index": 1, "original_path": "sub/a.png", "seg_width": 40, "seg_height": 32, "db_width": 1, "db_height": 1},
        {"index": 2, "original_path": "sub/a.png", "db_width": 40, "db_height": 32},
        {"index": 3, "original_path": "sub/a.png"},
        {"index": 4, "original_path": "../secret.png", "db_width": 40, "db_height": 32},
        {"index": 5, "original_path": "link.png", "db_width": 40, "db_height": 32},
        {"index": 6, "original_path": "/etc/passwd", "db_width": 40, "db_height": 32},
        {"index": 7, "original_path": "sub/missing.png"},
        {"index": 8, "original_path": "inner_link.png", "db_width": 50, "db_height": 32},
        {"index": 9, "original_path": "sub\\a.png", "db_width": 40, "db_height": 32},
    ])
    out = stages.copy_stage(table, str(root), read_files=True)
    data = out.column("original").to_pylist()
    sizes = list(zip(out.column("width").to_pylist(), out.column("height").to_pylist(), strict=True))
    problems = _problems(out)
    expected = (root / "sub" / "a.png").read_bytes()
    assert data[0] == data[1] == data[2] == data[7] == data[8] == expected
    assert sizes[:3] == [(40, 32)] * 3  # segmentation size first, then images, then the header
    assert problems[0] == set() and problems[1] == set() and problems[2] == set()
    assert data[3] is None and "path_outside_root" in problems[3]
    assert data[4] is None and "path_outside_root" in problems[4]
    assert data[5] is None and "path_outside_root" in problems[5]
    assert data[6] is None and problems[6] == {"file_missing", "image_size_unknown"} and sizes[6] == (0, 0)
    assert sizes[7] == (50, 32) and "image_size_mismatch" in problems[7]
    assert "original_path" not in out.column_names and "db_width" not in out.column_names


def test_copy_stage_without_file_reads_only_reads_when_size_is_unknown(root):
    table = _source([
        {"index": 1, "original_path": "sub/a.png", "db_width": 40, "db_height": 32},
        {"index": 2, "original_path": "sub/a.png"},
    ])
    out = stages.copy_stage(table, str(root), read_files=False)
    assert out.column("original").to_pylist() == [None, None]
    assert out.column("width").to_pylist() == [40, 40]


def test_stages_chain_produces_every_part(root):
    table = _source([{"index": 3, "image_id": "img-3", "file_name": "a.png", "stem": "a",
                      "original_path": "sub/a.png", "polygons": SQUARE}])
    t = stages.copy_stage(table, str(root), read_files=True)
    t = stages.visualize_stage(t, VisualizationSettings(), keep_originals=False)
    assert "original" not in t.column_names
    viz = t.column("visualization")[0].as_py()
    assert viz.startswith(b"\x89PNG")
    t = stages.annotate_stage(t, ("coco", "yolo", "json"))
    coco = _coco(t, 0)
    assert [a["category_id"] for a in coco] == [1]  # the polyline is not in COCO
    assert coco[0]["image_id"] == 3 and "id" not in coco[0]
    assert coco[0]["iscrowd"] == 0 and "counts" in coco[0]["segmentation"]
    assert coco[0]["area"] == pytest.approx(32 * 24 - 12 * 10, rel=0.05)
    assert len(t.column("yolo_label")[0].as_py().splitlines()) == 1
    entry = json.loads(t.column("json_entry")[0].as_py())
    assert entry["index"] == 3 and entry["objects"][0]["area"] == 32 * 24 - 12 * 10
    assert t.column("n_objects").to_pylist() == [1] and t.column("n_polylines").to_pylist() == [1]
    assert {"polyline_not_in_yolo", "polyline_not_in_coco"} <= _problems(t)[0]
    t = stages.metrics_stage(t, 0.5)
    (row,) = t.column("metric_rows")[0].as_py()
    assert row["number"] == 1 and row["image_name"] == "a.png"
    assert row["area"] == pytest.approx((32 * 24 - 12 * 10) * 0.25)
    assert row["perimeter"] == pytest.approx(2 * (32 + 24) * 0.5)
    t = stages.finish_stage(t)
    assert "polygons" not in t.column_names


def test_annotate_without_formats_still_reports_parse_problems():
    table = _source([{"index": 1, "polygons": "{broken", "db_width": 10, "db_height": 10}])
    t = stages.copy_stage(table, "/nonexistent-root", read_files=False)
    t = stages.annotate_stage(t, ())
    assert "polygons_invalid_json" in _problems(t)[0]
    assert "coco_annotations" not in t.column_names and t.column("n_objects").to_pylist() == [0]


def test_broken_stage_input_becomes_a_problem(monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(stages, "render_visualization", boom)
    table = pa.table({"index": [1], "original": [b"x"], "polygons": [SQUARE]})
    out = stages.visualize_stage(table, VisualizationSettings(), keep_originals=True)
    assert out.column("visualization").to_pylist() == [None]
    assert _problems(out) == [{"render_failed"}]


@pytest.mark.parametrize(
    ("values", "option", "expected"),
    [
        ([0.5, 0.5], None, (0.5, "database")),
        ([0.5, 0.25], None, (None, "pixels")),
        ([0.5, None], None, (None, "pixels")),
        ([5000.0, 5000.0], None, (None, "pixels")),
        ([0.5, 0.25], 2.0, (2.0, "option")),
    ],
)
def test_default_scale_rule(values, option, expected):
    entries = [SimpleNamespace(pixel_size_um=v) for v in values]
    options = build_options(None, {"db": "x.db", "project": "p", **({"scale": option} if option else {})})
    scale, source, notes = _decide_scale(options, entries)
    assert (scale, source) == expected
    assert bool(notes) == (source == "pixels")


def _plan(tmp_path: Path, total: int) -> AssemblyPlan:
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    summary = ExportSummary(project_id="p", project_title="T", project_type="spheroid",
                            export_time="2024-05-06T07:08:09.000000Z", content_options={}, counts={},
                            scale_um_per_px=None, scale_source="pixels")
    # spool files are made beside the output, without names, as in an export
    return AssemblyPlan(output=str(tmp_path / "out.zip"), export_time=when, total_images=total,
                        include_originals=True, include_visualizations=True, annotations=("coco", "yolo", "json"),
                        metrics=("csv",), include_docs=False, viz_extension=".png", scale_um_per_px=None,
                        summary=summary, coco_info={"description": "T"}, spool_dir=str(tmp_path))


def _result_rows(indices: list[int], drop: str = "") -> pa.Table:
    """Results of images without objects, in the result schema of ``_plan``'s formats."""
    rows = [
        {"index": i, "image_id": f"id{i}", "file_name": f"f{i}.png", "stem": f"f{i}", "width": 1, "height": 1,
         "decodable": True, "n_objects": 0, "n_polylines": 0, "problems": [], "original": b"IMG%d" % i,
         "visualization": None, "coco_annotations": [], "json_entry": json.dumps(
             {"index": i, "image_id": f"id{i}", "file_name": f"f{i}.png", "width": 1, "height": 1, "objects": [],
              "polylines": [], "orphan_holes": []}).encode(), "yolo_label": "", "metric_rows": []}
        for i in indices
    ]
    schema = result_schema(selected_formats(Selection(annotations=("coco", "yolo", "json"), metrics=("csv",),
                                                      docs=False)))
    table = pa.Table.from_pylist(rows, schema=schema)
    return table.drop_columns([drop]) if drop else table


def test_assembler_reorders_and_writes_in_index_order(tmp_path):
    assembler = ExportAssembler(_plan(tmp_path, 5))
    assert assembler.add_batch(_result_rows([3, 4])) == 0
    assert assembler.pending == 2
    assert assembler.add_batch(_result_rows([1])) == 1
    assert assembler.add_batch(_result_rows([2, 5])) == 4
    counts = assembler.finish()
    assert counts["images"] == 5
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        names = zf.namelist()
        assert names[:4] == ["images/f1.png", "labels/f1.txt", "images/f2.png", "labels/f2.txt"]
        assert names[-2:] == ["documentation/export_report.json", "documentation/export_manifest.parquet"]
        coco = json.loads(zf.read("annotations/instances_default.json"))
        assert [i["id"] for i in coco["images"]] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zip"]  # spools removed


def test_assembler_refuses_to_commit_with_missing_images_and_abort_cleans_up(tmp_path):
    assembler = ExportAssembler(_plan(tmp_path, 3))
    assembler.add_batch(_result_rows([1, 3]))
    assert list(tmp_path.iterdir()) == []  # the partial and the spool files have no names
    assert unnamed_files_in(tmp_path)
    with pytest.raises(RuntimeError, match="only 1 of 3"):
        assembler.finish()
    assembler.abort()
    assert list(tmp_path.iterdir()) == []
    assert unnamed_files_in(tmp_path) == []


def test_stage_placement_pins_only_what_must_stay_on_the_driver():
    from ray_export.cluster import stage_placement
    from ray_export.options import MAP_STAGES

    pin = {"ray.io/node-id": "n1"}
    assert stage_placement(False, True, "n1") == dict.fromkeys(MAP_STAGES)
    assert stage_placement(False, False, "n1") == dict.fromkeys(MAP_STAGES)
    assert stage_placement(True, True, "n1") == dict.fromkeys(MAP_STAGES, pin)
    multi = stage_placement(True, False, "n1")
    assert multi["copy"] == pin
    # an explicit empty selector keeps Ray from carrying the pin over to the fused later stages
    assert multi["visualize"] == multi["annotate"] == multi["metrics"] == {}


@pytest.mark.parametrize(
    ("n", "cpus", "max_rows", "expected"),
    [(12, 2, 32, 4), (150, 2, 32, 5), (230, 2, 32, 8), (1000, 2, 32, 32), (10_000, 16, 32, 32), (3, 2, 32, 4),
     (1000, 2, 8, 8), (2, 64, 1, 1)],
)
def test_rows_per_read_task(n, cpus, max_rows, expected):
    from ray_export.dataset import rows_per_read_task

    assert rows_per_read_task(n, cpus, max_rows) == expected


@pytest.mark.parametrize(
    ("n", "cpus", "max_rows"),
    [(230, 2, 32), (1000, 2, 32), (24, 2, 32), (5, 2, 32), (1, 2, 32), (5000, 16, 32), (150, 4, 8), (3, 1, 1),
     (100, 0.5, 32), (31, 2, 32)],
)
def test_block_sizes_cover_every_image_with_small_first_and_last_blocks(n, cpus, max_rows):
    from ray_export.dataset import block_sizes, rows_per_read_task

    sizes = block_sizes(n, cpus, max_rows)
    full = rows_per_read_task(n, cpus, max_rows)
    assert sum(sizes) == n and max(sizes) <= min(full, max_rows) and min(sizes) >= 1
    if len(sizes) > 1 + 2 * max(1, round(cpus)):
        c = max(1, round(cpus))
        quarter, half = min(full, max(4, full // 4)), min(full, max(4, full // 2))
        assert sizes[0] == quarter
        assert sizes[-2 * c :] == [half] * c + [quarter] * c
        middle = sizes[1 : -2 * c]
        assert max(middle) - min(middle) <= 1 and max(middle) == full


def test_block_sizes_of_1000_images_on_2_cpus():
    from ray_export.dataset import block_sizes

    sizes = block_sizes(1000, 2, 32)
    assert sizes[:2] == [8, 32] and sizes[-4:] == [16, 16, 8, 8] and sum(sizes) == 1000


def test_datasource_reads_blocks_of_the_given_sizes(tmp_path):
    from ray_export.datasource import ProjectImagesDatasource
    from ray_export.sources import DbTarget

    target = DbTarget(kind="sqlite", dsn=str(tmp_path / "x.db"))
    rows = [{"index": i, "image_id": f"id{i}"} for i in range(1, 11)]
    source = ProjectImagesDatasource(target, rows, False, False, rows_per_task=[2, 5, 3])
    assert [len(r.rows) for r in source.range_readers()] == [2, 5, 3] and source.num_read_tasks() == 3
    assert [r["index"] for r in source.range_readers()[1].rows] == [3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="add up to 9 rows, not the 10"):
        ProjectImagesDatasource(target, rows, False, False, rows_per_task=[4, 5])


def test_pinned_stage_asking_for_more_cpus_than_the_driver_node_is_refused():
    from ray_export.cluster import check_pinned_stages_fit, stage_placement
    from ray_export.errors import ExportError

    options = build_options(None, {"db": "x.db", "project": "p", "stages": {"copy": {"num_cpus": 4}}})
    with pytest.raises(ExportError) as info:
        check_pinned_stages_fit(options, stage_placement(True, False, "n1"), {"CPU": 2.0})
    assert info.value.exit_code == 2 and "stages.copy.num_cpus" in str(info.value)
    check_pinned_stages_fit(options, stage_placement(False, False, "n1"), {"CPU": 2.0})  # may run elsewhere
    gpu = build_options(None, {"db": "x.db", "project": "p", "stages": {"copy": {"resources": {"scanner": 1}}}})
    with pytest.raises(ExportError, match=r"stages\.copy\.resources\.scanner"):
        check_pinned_stages_fit(gpu, stage_placement(True, True, "n1"), {"CPU": 2.0})
    check_pinned_stages_fit(gpu, stage_placement(True, True, "n1"), {"CPU": 2.0, "scanner": 1.0})


def test_assembler_enforces_its_reorder_bound(tmp_path):
    plan = _plan(tmp_path, 10)
    plan.max_buffered_images = 2
    assembler = ExportAssembler(plan)
    assembler.add_batch(_result_rows([2, 3]))
    with pytest.raises(RuntimeError, match="max_buffered_images"):
        assembler.add_batch(_result_rows([4]))
    assembler.abort()
    assert list(tmp_path.iterdir()) == []


def test_hostile_polygon_json_never_escapes_a_stage(root):
    huge_int = "1" + "0" * 400
    hostile = (
        '[{"type": "external", "points": [{"x": 0, "y": 0}, {"x": ' + huge_int + ', "y": 0}, {"x": 1e300, "y": 5},'
        ' {"x": 10, "y": 10}, {"x": 0, "y": 10}], "confidence": ' + huge_int + ', "partClass": NaN},'
        ' {"geometry": "polyline", "partClass": Infinity, "instanceId": [NaN, 1],'
        ' "points": [{"x": 1, "y": 1}, {"x": 5, "y": 5}]}]'
    )
    table = _source([
        {"index": 1, "image_id": "a", "file_name": "a.png", "stem": "a", "original_path": "sub/a.png",
         "polygons": hostile},
        {"index": 2, "image_id": "b", "file_name": "b.png", "stem": "b", "original_path": "bad\\x00name.png",
         "db_width": 40, "db_height": 32},
        {"index": 3, "image_id": "c", "file_name": "c.png", "stem": "c", "original_path": None,
         "db_width": 40, "db_height": 32},
    ])
    t = stages.copy_stage(table, str(root), read_files=True)
    t = stages.visualize_stage(t, VisualizationSettings(), keep_originals=True)
    t = stages.annotate_stage(t, ("coco", "yolo", "json"))
    t = stages.metrics_stage(t, None)
    problems = _problems(t)
    assert "points_not_finite" in problems[0]
    assert "file_missing" in problems[2]
    entry = json.loads(t.column("json_entry")[0].as_py())
    assert len(entry["objects"]) == 1 and entry["objects"][0]["confidence"] is None
    assert entry["polylines"][0]["part_class"] is None and entry["polylines"][0]["instance_id"] == [None, 1]
    assert [a["category_id"] for a in _coco(t, 0)] == [1]
    assert len(t.column("metric_rows")[0].as_py()) == 1
    assert all(text is not None for text in t.column("json_entry").to_pylist())


def test_failed_indices_name_the_images_that_gained_a_failure(root):
    table = _source([
        {"index": 1, "original_path": "sub/a.png", "db_width": 40, "db_height": 32},
        {"index": 2, "original_path": "sub/missing.png", "db_width": 40, "db_height": 32},
        {"index": 3, "original_path": "sub/a.png", "db_width": 50, "db_height": 32},  # size mismatch: a warning
    ])
    copied = stages.copy_stage(table, str(root), read_files=True)
    assert stages.failed_indices(table, copied) == [2]
    annotated = stages.annotate_stage(copied, ("yolo",))
    assert stages.failed_indices(copied, annotated) == []


@pytest.mark.parametrize("column", ["yolo_label", "problems", "coco_annotations", "metric_rows"])
def test_assembler_refuses_results_without_a_needed_column(tmp_path, column):
    assembler = ExportAssembler(_plan(tmp_path, 1))
    with pytest.raises(ResultSchemaError, match=column):
        assembler.add_batch(_result_rows([1], drop=column))
    assembler.abort()
    assert list(tmp_path.iterdir()) == []


def test_assembler_refuses_a_result_column_of_another_type(tmp_path):
    assembler = ExportAssembler(_plan(tmp_path, 1))
    table = _result_rows([1])
    as_text = pa.array(["[]"], type=pa.string())
    table = table.set_column(table.column_names.index("problems"), "problems", as_text)
    with pytest.raises(ResultSchemaError, match=r"problems.*type"):
        assembler.add_batch(table)
    assembler.abort()


def test_stage_chain_follows_the_selected_formats(root):
    everything = build_options(None, {"db": "x.db", "project": "p"})
    chain = stages.stage_chain(everything, str(root), 0.5)
    assert [step.name for step in chain] == ["copy", "visualize", "annotate", "metrics"]
    assert chain[0].kwargs == {"images_root": str(root), "read_files": True, "check": "header",
                               "limits": stages.ReadLimits(2 << 30, 300.0, 100_000_000), "reuse": None,
                               "file_fingerprint": "sha256", "scale_um_per_px": 0.5}
    limited = build_options(None, {"db": "x.db", "project": "p", "max_file_bytes": "1MiB", "read_timeout_s": 2,
                                   "max_image_pixels": 4096})
    assert stages.stage_chain(limited, str(root), None)[0].kwargs["limits"] == stages.ReadLimits(1 << 20, 2.0, 4096)
    assert chain[2].kwargs == {"formats": ("coco", "yolo", "json"), "settings": {"coco_holes": "rle"}}
    assert chain[3].kwargs == {"scale_um_per_px": 0.5, "project_type": "spheroid", "type_tables": False}
    typed = stages.stage_chain(everything, str(root), 0.5, project_type="sperm", type_context={"a": 1})
    assert typed[3].kwargs == {"scale_um_per_px": 0.5, "project_type": "sperm", "type_tables": True,
                               "type_context": {"a": 1}}  # fmt: skip
    lean_mt = build_options(None, {"db": "x.db", "project": "p", "originals": False})
    chain = stages.stage_chain(lean_mt, str(root), None, project_type="microtubules")
    assert chain[0].kwargs["read_files"] and chain[1].kwargs["keep_originals"]  # the pixels are measured
    assert stages.stage_chain(lean_mt, str(root), None)[1].kwargs["keep_originals"] is False
    lean = build_options(None, {"db": "x.db", "project": "p", "originals": False, "visualizations": False,
                                "annotations": "json", "metrics": "none"})
    chain = stages.stage_chain(lean, str(root), None)
    assert [step.name for step in chain] == ["copy", "annotate"]
    assert chain[0].kwargs["read_files"] is False and chain[1].kwargs["formats"] == ("json",)
    assert chain[0].kwargs["check"] == "none"
    no_drawings = build_options(None, {"db": "x.db", "project": "p", "visualizations": False})
    assert stages.stage_chain(no_drawings, str(root), None)[0].kwargs["check"] == "decode"


def test_chained_stages_match_the_writer_schema(root):
    options = build_options(None, {"db": "x.db", "project": "p", "metrics": "csv"})
    table = _source([{"index": 1, "image_id": "img-1", "file_name": "a.png", "stem": "a",
                      "original_path": "sub/a.png", "polygons": SQUARE}])
    for step in stages.stage_chain(options, str(root), None):
        table = step.fn(table, **step.kwargs)
    schema = result_schema(selected_formats(Selection.of(options)))
    assert [table.schema.field(name).type for name in schema.names] == list(schema.types)


def test_stages_leave_image_bytes_untouched_where_they_do_not_use_them(root):
    table = _source([{"index": 1, "image_id": "img-1", "file_name": "a.png", "stem": "a",
                      "original_path": "sub/a.png", "polygons": SQUARE}])
    copied = stages.copy_stage(table, str(root), read_files=True)
    address = copied.column("original").chunk(0).buffers()[2].address
    later = stages.metrics_stage(stages.annotate_stage(copied, ("coco", "yolo", "json")), None)
    assert later.column("original").chunk(0).buffers()[2].address == address  # passed on, not rebuilt


def test_copy_stage_bounds_reads_and_refuses_special_files(root):
    os.mkfifo(root / "pipe.png")
    (root / "big.png").write_bytes(_png(200, 200))
    (root / "folder.png").mkdir()
    table = _source([
        {"index": 1, "original_path": "pipe.png", "db_width": 40, "db_height": 32},
        {"index": 2, "original_path": "big.png"},
        {"index": 3, "original_path": "folder.png", "db_width": 40, "db_height": 32},
        {"index": 4, "original_path": "sub/a.png"},
    ])
    limit = len((root / "sub" / "a.png").read_bytes())
    limits = stages.ReadLimits(max_file_bytes=limit, read_timeout_s=60.0, max_image_pixels=40 * 32)
    out = stages.copy_stage(table, str(root), read_files=True, check="header", limits=limits)
    problems = _problems(out)
    assert problems[0] == {"file_not_regular"} and problems[2] == {"file_not_regular"}
    assert problems[1] == {"file_too_large", "image_size_unknown"}
    assert problems[3] == set()
    assert out.column("original").to_pylist()[:3] == [None, None, None]
    messages = [p["message"] for p in out.column("problems")[0].as_py()]
    assert messages == ["'pipe.png': 'pipe.png' is a named pipe, not a regular file"]


def test_copy_stage_keeps_images_over_the_pixel_limit_undecoded(root):
    table = _source([{"index": 1, "image_id": "a", "file_name": "a.png", "stem": "a", "original_path": "sub/a.png",
                      "polygons": SQUARE}])
    limits = stages.ReadLimits(max_image_pixels=40 * 32 - 1)
    for check in ("header", "decode"):
        copied = stages.copy_stage(table, str(root), read_files=True, check=check, limits=limits)
        assert _problems(copied) == [{"image_too_large"}]
        assert copied.column("decodable").to_pylist() == [True]
        assert (copied.column("width")[0].as_py(), copied.column("height")[0].as_py()) == (40, 32)
        drawn = stages.visualize_stage(copied, VisualizationSettings(), keep_originals=True)
        assert drawn.column("visualization").to_pylist() == [None]
        assert drawn.column("original").to_pylist() == [(root / "sub" / "a.png").read_bytes()]
        assert _problems(drawn) == [{"image_too_large"}]


def test_opencv_threads_follow_the_task_cpus(monkeypatch):
    import cv2

    from ray_export.dataset import limit_library_threads

    before = cv2.getNumThreads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray sets for a 1-CPU task
        limit_library_threads()
        assert cv2.getNumThreads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        limit_library_threads()
        assert cv2.getNumThreads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        limit_library_threads()  # outside Ray: left as it is
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)
