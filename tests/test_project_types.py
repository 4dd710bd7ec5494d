"""Project types: the registry, the type tables in every metrics format, and typed exports end to end
(sperm, microcapsule and invasive spheroid projects, an unknown type) read back with independent readers."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_export import stages
from ray_export.formats.type_tables import TableCsvWriter, TableJsonWriter, TableParquetWriter
from ray_export.problems import Problem
from ray_export.project_types import sperm
from ray_export.project_types.base import TypeTable, decode_type_rows
from ray_export.project_types.registry import PROJECT_TYPES, project_type_for, project_type_named


def _polyline(instance, part, points):
    line = {"geometry": "polyline", "type": "external", "partClass": part,
            "points": [{"x": x, "y": y} for x, y in points]}  # fmt: skip
    if instance is not None:
        line["instanceId"] = instance
    return line


def _cell(instance, x0: float, y0: float) -> list[dict]:
    """A sperm cell: head 10 px, midpiece 20 px, tail 3-4-5 triangle leg sum 5 + 12 = 17 px."""
    return [
        _polyline(instance, "head", [(x0, y0), (x0 + 10, y0)]),
        _polyline(instance, "midpiece", [(x0 + 10, y0), (x0 + 30, y0)]),
        _polyline(instance, "tail", [(x0 + 30, y0), (x0 + 33, y0 + 4), (x0 + 33, y0 + 16)]),
    ]


def _circle(cx: float, cy: float, r: float, n: int = 180, **extra) -> dict:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    points = [{"x": float(cx + r * np.cos(a)), "y": float(cy + r * np.sin(a))} for a in t]
    return {"type": "external", "points": points, **extra}


def _ellipse(cx: float, cy: float, a: float, b: float, n: int = 360, **extra) -> dict:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    points = [{"x": float(cx + a * np.cos(s)), "y": float(cy + b * np.sin(s))} for s in t]
    return {"type": "external", "points": points, **extra}


# ------------------------------------------------------------------------------------------------ the registry
def test_every_type_is_registered_and_an_unknown_one_is_a_spheroid_with_a_note():
    assert {"spheroid", "spheroid_invasive", "sperm", "microcapsule"} <= set(PROJECT_TYPES)
    for name, kind in PROJECT_TYPES.items():
        assert kind.name == name
    kind, note = project_type_for("sperm")
    assert kind.name == "sperm" and note is None
    kind, note = project_type_for("spheroidz")
    assert kind.name == "spheroid" and "'spheroidz'" in note and "exported as spheroid" in note
    assert project_type_for(None)[0].name == "spheroid"
    assert project_type_named("nope").tables == ()


def test_type_problem_codes_are_accepted():
    assert Problem("sperm_part_missing", "metrics", "x").code == "sperm_part_missing"
    with pytest.raises(ValueError, match="unknown problem code"):
        Problem("no_such_code_anywhere", "metrics", "x")


# ------------------------------------------------------------------------------------------------ the table files
TABLE = TypeTable(
    name="things", sheet="Things",
    columns=(("label", "text"), ("size", "length"), ("area", "area"), ("n", "count"), ("ratio", "unitless")),
    rows=lambda image: ([], []), description="things",
)  # fmt: skip
ROWS = [
    {"image_id": "a", "image_name": "a.png", "label": "x,y", "size": 0.1, "area": 1e-300, "n": 3, "ratio": None},
    {"image_id": "b", "image_name": "b.png", "label": None, "size": 2.5, "area": 4.0, "n": 0, "ratio": 1 / 3},
]


@pytest.mark.parametrize("scaled", [False, True])
def test_table_files_hold_the_rows_exactly_with_units(scaled):
    unit = "um" if scaled else "px"
    buffers = {name: io.BytesIO() for name in ("csv", "json", "parquet")}
    for name, cls in (("csv", TableCsvWriter), ("json", TableJsonWriter), ("parquet", TableParquetWriter)):
        writer = cls(buffers[name], TABLE, scaled, 0.5 if scaled else None)
        writer.write_rows(ROWS[:1])
        writer.write_rows(ROWS[1:])
        writer.close()
    records = list(csv.reader(io.StringIO(buffers["csv"].getvalue().decode())))
    assert records[0] == ["image_id", "image_name", "label", f"size ({unit})", f"area ({unit}^2)", "n", "ratio"]
    assert records[1] == ["a", "a.png", "x,y", "0.1", "1e-300", "3", ""]
    assert float(records[2][6]) == 1 / 3 and records[2][2] == ""
    document = json.loads(buffers["json"].getvalue())
    assert document["units"] == {"size": unit, "area": f"{unit}^2"}
    assert document["scale_um_per_px"] == (0.5 if scaled else None)
    assert document["rows"] == [dict(r) for r in ROWS]
    table = pq.read_table(io.BytesIO(buffers["parquet"].getvalue()))
    assert table.to_pylist() == [dict(r) for r in ROWS]
    assert table.schema.field("n").type == pa.int64() and table.schema.field("size").type == pa.float64()
    assert json.loads(table.schema.metadata[b"units"]) == {"size": unit, "area": f"{unit}^2"}


# ------------------------------------------------------------------------------------------------ the metrics stage
def _stage_input(polygons: list[list[dict]]) -> pa.Table:
    n = len(polygons)
    return pa.table({
        "index": pa.array(range(1, n + 1), pa.int64()), "image_id": [f"i{k}" for k in range(n)],
        "file_name": [f"f{k}.png" for k in range(n)], "width": pa.array([200] * n, pa.int64()),
        "height": pa.array([100] * n, pa.int64()), "polygons": [json.dumps(p) for p in polygons],
        "problems": pa.array([[]] * n, type=stages.PROBLEMS_TYPE),
    })  # fmt: skip


def test_metrics_stage_fills_the_type_rows_scaled():
    table = _stage_input([_cell(7, 5, 5) + _cell("b", 60, 40), [_polyline(None, "tail", [(0, 0), (3, 4)])]])
    out = stages.metrics_stage(table, 0.5, project_type="sperm", type_tables=True)
    first, second = (decode_type_rows(text)["sperm_metrics"] for text in out.column("type_rows").to_pylist())
    assert [row["instance_id"] for row in first] == ["7", "b"]
    for row in first:
        assert row["head_length"] == pytest.approx(5.0) and row["midpiece_length"] == pytest.approx(10.0)
        assert row["tail_length"] == pytest.approx(8.5) and row["total_length"] == pytest.approx(23.5)
        assert row["image_id"] == "i0" and row["image_name"] == "f0.png"
    assert second == []
    codes = [p["code"] for p in out.column("problems").to_pylist()[1]]
    assert codes == ["sperm_polyline_without_instance"]
    plain = stages.metrics_stage(table, 0.5)
    assert "type_rows" not in plain.column_names


# ------------------------------------------------------------------------------------------------ typed exports
@pytest.fixture(scope="module")
def typed_source(tmp_path_factory):
    """The demo project, copied: a database whose polygons and type each test sets."""
    from ray_export.demo import build_demo_project

    return build_demo_project(tmp_path_factory.mktemp("typed"), n_images=6, seed=3)


def _project(source, tmp_path: Path, project_type: str, polygons: list[list[dict]]) -> Path:
    db = tmp_path / "typed.db"
    shutil.copyfile(source.db_path, db)
    ids = _segmented_order(source, db)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE projects SET type = ?", (project_type,))
        con.execute("UPDATE segmentations SET polygons = '[]'")
        for image_id, value in zip(ids, polygons, strict=False):
            con.execute('UPDATE segmentations SET polygons = ? WHERE "imageId" = ?', (json.dumps(value), image_id))
    return db


def _export_order(source, db: Path) -> list[str]:
    from ray_export.sources import list_images, parse_db_target

    return [entry.image_id for entry in list_images(parse_db_target(str(db)), source.project_id).entries]


def _segmented_order(source, db: Path) -> list[str]:
    """The images that have a segmentation row, in export order (their polygons are what tests set)."""
    with sqlite3.connect(db) as con:
        segmented = {row[0] for row in con.execute('SELECT "imageId" FROM segmentations')}
    return [image_id for image_id in _export_order(source, db) if image_id in segmented]


def _export(source, db: Path, out: Path, **options) -> zipfile.ZipFile:
    from ray_export.api import export

    export(db=str(db), project=source.project_id, images_root=str(source.images_root), output=str(out), **options)
    return zipfile.ZipFile(out)


@pytest.mark.usefixtures("ray_session")
def test_sperm_export_has_its_table_in_every_format(typed_source, tmp_path):
    import openpyxl

    db = _project(typed_source, tmp_path, "sperm", [_cell(1, 5, 5) + _cell(2, 100, 50), _cell("x", 10, 10)[:2]])
    archive = _export(typed_source, db, tmp_path / "sperm.zip", scale=2.0)
    names = archive.namelist()
    for member in ("metrics/sperm_metrics.csv", "metrics/sperm_metrics.json", "metrics/sperm_metrics.parquet"):
        assert member in names
    rows = list(csv.DictReader(io.StringIO(archive.read("metrics/sperm_metrics.csv").decode())))
    assert [(r["instance_id"], float(r["total_length (um)"])) for r in rows] == [("1", 94.0), ("2", 94.0), ("x", 60.0)]
    parquet = pq.read_table(io.BytesIO(archive.read("metrics/sperm_metrics.parquet"))).to_pylist()
    assert [r["tail_length"] for r in parquet] == [34.0, 34.0, 0.0]
    workbook = openpyxl.load_workbook(io.BytesIO(archive.read("metrics/metrics.xlsx")))
    assert workbook.sheetnames == ["Polygon Metrics", "Sperm Metrics", "Summary"]
    sheet = [list(r) for r in workbook["Sperm Metrics"].iter_rows(values_only=True)]
    assert sheet[0][2:] == ["instance_id", "head_length (um)", "midpiece_length (um)", "tail_length (um)",
                            "total_length (um)"]  # fmt: skip
    assert [row[2:] for row in sheet[1:]] == [["1", 20, 40, 34, 94], ["2", 20, 40, 34, 94], ["x", 20, 40, 0, 60]]
    report = json.loads(archive.read("documentation/export_report.json"))
    assert "sperm_part_missing" in report["problem_codes"]
    assert any(p["code"] == "sperm_part_missing" for image in report["images"] for p in image["problems"])
    guide = archive.read("documentation/metrics_guide.md").decode()
    assert "## Sperm metrics (`sperm_metrics`)" in guide
    assert "metrics/sperm_metrics.csv" in archive.read("documentation/README.md").decode()


@pytest.mark.usefixtures("ray_session")
def test_microcapsule_export_rows_and_summary(typed_source, tmp_path):
    import openpyxl

    capsules = [[_ellipse(100, 100, 40, 20, confidence=0.9), _circle(300, 200, 30, complete=False)],
                [_circle(150, 150, 25)]]  # fmt: skip
    db = _project(typed_source, tmp_path, "microcapsule", capsules)
    archive = _export(typed_source, db, tmp_path / "caps.zip", metrics="csv,xlsx", scale=1.0)
    rows = list(csv.DictReader(io.StringIO(archive.read("metrics/microcapsule_metrics.csv").decode())))
    assert len(rows) == 2  # the capsule cut by the border is left out
    ellipse = rows[0]
    assert float(ellipse["ovality"]) == pytest.approx(2.0, rel=1e-3) and float(ellipse["confidence"]) == 0.9
    feret_max, feret_min = float(ellipse["feret_max (um)"]), float(ellipse["feret_min (um)"])
    assert float(ellipse["diameter (um)"]) == pytest.approx((feret_max + feret_min) / 2)
    for row in rows:
        assert float(row["ovality"]) >= 1
    workbook = openpyxl.load_workbook(io.BytesIO(archive.read("metrics/metrics.xlsx")))
    assert workbook.sheetnames == ["Polygon Metrics", "Microcapsule Metrics", "Summary", "Microcapsule Summary"]
    summary = {row[0]: row[1:] for row in workbook["Microcapsule Summary"].iter_rows(min_row=2, values_only=True)}
    diameters = [float(r["diameter (um)"]) for r in rows]
    assert summary["diameter (um)"][0] == 2 and summary["diameter (um)"][1] == pytest.approx(np.mean(diameters))
    assert "metrics/microcapsule_metrics.json" not in archive.namelist()  # only the chosen formats


@pytest.mark.usefixtures("ray_session")
def test_invasive_export_solid_disc_and_shedding_spheroid(typed_source, tmp_path):
    solid = [_circle(200, 200, 60, partClass="core")]
    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    shedding = [_circle(200, 200, 60, n=360, partClass="core")] + [
        _circle(200 + 120 * math.cos(a), 200 + 120 * math.sin(a), 8) for a in angles
    ]
    db = _project(typed_source, tmp_path, "spheroid_invasive", [solid, shedding, [_circle(50, 50, 10)]])
    archive = _export(typed_source, db, tmp_path / "inv.zip", metrics="parquet", scale=1.0)
    rows = pq.read_table(io.BytesIO(archive.read("metrics/image_metrics.parquet"))).to_pylist()
    assert len(rows) == 6  # every selected image, also those without a segmentation of interest
    by_mode = {}
    for row in rows:
        by_mode.setdefault(row["reference_mode"], []).append(row)
    disc, fragments = sorted(by_mode["core"], key=lambda r: r["fragment_count"])
    assert disc["fragment_count"] == 1 and disc["disintegration_index"] < 0.05
    assert fragments["fragment_count"] == 9 and fragments["disintegration_index"] > disc["disintegration_index"]
    assert disc["core_area"] == pytest.approx(math.pi * 60**2, rel=1e-3)
    assert by_mode["no_core"][0]["disintegration_index"] is None


@pytest.mark.usefixtures("ray_session")
def test_unknown_type_is_exported_as_spheroid_with_a_note(typed_source, tmp_path):
    db = _project(typed_source, tmp_path, "organoid", [])
    archive = _export(typed_source, db, tmp_path / "unknown.zip", metrics="csv")
    assert not [n for n in archive.namelist() if n.startswith("metrics/") and n != "metrics/metrics.csv"]
    notes = json.loads(archive.read("documentation/export_report.json"))["notes"]
    assert any("'organoid'" in note["message"] and "exported as spheroid" in note["message"] for note in notes)


@pytest.mark.usefixtures("ray_session")
def test_typed_zip_is_the_same_at_any_batch_size_and_reuse_gives_a_full_exports_bytes(typed_source, tmp_path):
    db = _project(typed_source, tmp_path, "sperm", [_cell(1, 5, 5), _cell(2, 30, 30) + _cell(3, 60, 60)])
    first = tmp_path / "a.zip"
    _export(typed_source, db, first)
    _export(typed_source, db, tmp_path / "b.zip", stages={"read": {"batch_size": 1}, "metrics": {"batch_size": 1}})
    assert (tmp_path / "b.zip").read_bytes() == first.read_bytes()
    image_id = _segmented_order(typed_source, db)[0]
    with sqlite3.connect(db) as con:  # one image edited
        con.execute('UPDATE segmentations SET polygons = ?, "updatedAt" = "updatedAt" + 1000 WHERE "imageId" = ?',
                    (json.dumps(_cell(9, 50, 50)), image_id))  # fmt: skip
    full = tmp_path / "full.zip"
    _export(typed_source, db, full)
    reused = tmp_path / "reused.zip"
    _export(typed_source, db, reused, reuse=str(first))
    assert reused.read_bytes() == full.read_bytes()
    rows = list(csv.DictReader(io.StringIO(zipfile.ZipFile(full).read("metrics/sperm_metrics.csv").decode())))
    assert sorted(r["instance_id"] for r in rows) == ["2", "3", "9"]


def test_sperm_module_rows_match_segment_sums():
    from ray_export.polygons import parse_polygons

    rows, _ = sperm.sperm_rows(parse_polygons(json.dumps(_cell(4, 0, 0))))
    assert rows[0]["total_length"] == pytest.approx(10 + 20 + 5 + 12)


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> dict:
    points = [{"x": x0, "y": y0}, {"x": x1, "y": y0}, {"x": x1, "y": y1}, {"x": x0, "y": y1}]
    return {"type": "external", "points": points}


@pytest.mark.usefixtures("ray_session")
def test_wound_time_series_closure_chart_and_sheet(typed_source, tmp_path):
    import openpyxl
    from PIL import Image

    widths = [100.0, 70.0, 30.0, 0.0]  # a closing scratch: a vertical band of shrinking width
    bands = [[_rectangle(200 - w / 2, 0, 200 + w / 2, 100)] if w else [] for w in widths]
    db = _project(typed_source, tmp_path, "wound", [*bands, [_rectangle(0, 0, 10, 10)]])
    order = _segmented_order(typed_source, db)
    assert len(order) == 5
    with sqlite3.connect(db) as con:
        con.execute("UPDATE segmentations SET model = 'wound'")
        con.execute("UPDATE segmentations SET model = 'spheroid' WHERE \"imageId\" = ?", (order[4],))
        sizes = dict(con.execute("SELECT id, width * height FROM images").fetchall())
    archive = _export(typed_source, db, tmp_path / "wound.zip", metrics="csv,xlsx", scale=1.0)
    rows = list(csv.DictReader(io.StringIO(archive.read("metrics/wound_time_series.csv").decode())))
    assert [r["image_id"] for r in rows] == order[:4]  # the other model's image is not in the series
    assert [int(r["order"]) for r in rows] == [0, 1, 2, 3]
    for row, width, image_id in zip(rows, widths, order, strict=False):
        area = width * 100
        assert float(row["wound_area (um^2)"]) == pytest.approx(area)
        assert float(row["wound_area_pct"]) == pytest.approx(area / sizes[image_id] * 100)
        assert float(row["closure_pct"]) == pytest.approx((10_000 - area) / 10_000 * 100)
        assert row["created_at"].endswith("Z")
    chart = archive.read("wound_healing/wound_area_chart.png")
    assert Image.open(io.BytesIO(chart)).size == (1200, 600)
    workbook = openpyxl.load_workbook(io.BytesIO(archive.read("metrics/metrics.xlsx")))
    sheet = workbook["WoundTimeSeries"]
    assert next(sheet.iter_rows(values_only=True))[:3] == ("order", "image_id", "image_name")
    assert len(sheet._images) == 1 and sheet._images[0]._data() == chart
    assert "wound_healing/wound_area_chart.png" in archive.read("documentation/README.md").decode()


# ------------------------------------------------------------------------------------------------ the demo types
@pytest.fixture(scope="module")
def mt_demo(tmp_path_factory):
    from ray_export.demo import build_demo_project

    return build_demo_project(tmp_path_factory.mktemp("mt"), project_type="microtubules")


@pytest.mark.usefixtures("ray_session")
def test_microtubule_export_read_back_with_roifile_and_xml(mt_demo, tmp_path):
    import xml.etree.ElementTree as ET

    import openpyxl
    import roifile

    from ray_export.api import export

    out = tmp_path / "mt.zip"
    export(db=str(mt_demo.db_path), project=mt_demo.project_id, output=str(out), mt_thickness=4.0)
    archive = zipfile.ZipFile(out)
    names = archive.namelist()
    assert "metrics/metrics.csv" not in names  # the per-object table is left out for microtubules
    frames = json.loads(archive.read("annotations/json/segmentation_data.json"))["images"]
    lines = {(image["file_name"], tuple(map(tuple, line["points"])))
             for image in frames for line in image["polylines"]}  # fmt: skip
    assert lines
    [video] = {n.split("/")[-1][: -len(".xml")] for n in names if n.startswith("annotations/cvat/")}
    root = ET.fromstring(archive.read(f"annotations/cvat/{video}.xml"))
    cvat = [(image.get("name"), polyline.get("label"), polyline.get("points"))
            for image in root.iter("image") for polyline in image.iter("polyline")]  # fmt: skip
    assert len(cvat) == len(lines)
    used = {label for _, label, _ in cvat}
    assert used <= {label.findtext("name") for label in root.iter("label")} and used <= {"dynamic", "stable"}
    roiset = zipfile.ZipFile(io.BytesIO(archive.read(f"annotations/imagej/{video}_RoiSet.zip")))
    rois = [roifile.ImagejRoi.frombytes(roiset.read(name)) for name in roiset.namelist()]
    signal = [roi for roi in rois if not roi.name.endswith("_bg")]
    assert len(signal) == len(lines) and len(rois) == 2 * len(lines)
    points_by_frame = {}
    for image in frames:
        frame = int(image["file_name"].rsplit("_t", 1)[1][:3])
        for line in image["polylines"]:
            points_by_frame.setdefault(frame, []).append(np.asarray(line["points"], dtype=np.float64))
    for roi in signal:
        frame = roi.position - 1
        assert any(
            len(p) == len(roi.subpixel_coordinates) and np.allclose(roi.subpixel_coordinates, p, atol=1e-3)
            for p in points_by_frame[frame]
        ), roi.name
        assert roi.stroke_width == 4
    rows = list(csv.DictReader(io.StringIO(archive.read("metrics/microtubule_metrics.csv").decode())))
    assert rows and all(r["label"].startswith("MT") and float(r["pixel_count"]) > 0 for r in rows)
    tracks = {}
    for row in rows:  # one instance keeps one label over the video
        tracks.setdefault(row["instance_id"], set()).add(row["label"])
    assert all(len(labels) == 1 for labels in tracks.values())
    totals = list(csv.DictReader(io.StringIO(archive.read("metrics/microtubule_channel_totals.csv").decode())))
    assert [int(t["polylines"]) for t in totals] == [len(rows)]
    workbook = openpyxl.load_workbook(io.BytesIO(archive.read("metrics/metrics.xlsx")))
    assert workbook.sheetnames == ["Microtubule Metrics", "Microtubule Channel Totals"]
    metadata = archive.read("documentation/metadata.json").decode()
    assert '"mt_thickness": 4.0' in metadata and "mt_margin" not in metadata  # the default is not recorded


@pytest.mark.usefixtures("ray_session")
def test_bad_input_of_each_type_is_reported_and_the_export_succeeds(typed_source, mt_demo, tmp_path):
    from ray_export.api import export

    # an invasive image without core, a sperm polyline without instance: in their own tests above; here the
    # wound image whose size is unknown everywhere and a microtubule frame without a video
    db = _project(typed_source, tmp_path, "wound", [[_rectangle(0, 0, 10, 10)]])
    first = _segmented_order(typed_source, db)[0]
    with sqlite3.connect(db) as con:
        con.execute("UPDATE segmentations SET model = 'wound'")
        con.execute('UPDATE images SET width = NULL, height = NULL, "originalPath" = \'gone.png\' WHERE id = ?',
                    (first,))  # fmt: skip
        con.execute('UPDATE segmentations SET "imageWidth" = NULL, "imageHeight" = NULL WHERE "imageId" = ?', (first,))
    archive = _export(typed_source, db, tmp_path / "wound.zip", metrics="csv")
    codes = {p["code"] for i in json.loads(archive.read("documentation/export_report.json"))["images"]
             for p in i["problems"]}  # fmt: skip
    assert "wound_size_unknown" in codes
    mt_db = tmp_path / "mt.db"
    shutil.copyfile(mt_demo.db_path, mt_db)
    with sqlite3.connect(mt_db) as con:
        con.execute('UPDATE images SET "parentVideoId" = NULL WHERE "frameIndex" = 3')
    out = tmp_path / "mt.zip"
    export(db=str(mt_db), project=mt_demo.project_id, images_root=str(mt_demo.images_root), output=str(out))
    archive = zipfile.ZipFile(out)
    report = json.loads(archive.read("documentation/export_report.json"))
    assert "mt_frame_without_video" in {p["code"] for i in report["images"] for p in i["problems"]}
    assert "annotations/cvat/video.xml" in archive.namelist()


@pytest.mark.postgres
@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("project_type", ["spheroid_invasive", "wound", "sperm", "microcapsule", "microtubules"])
def test_typed_zip_is_the_same_from_sqlite_and_postgresql(project_type, postgres_dsn, tmp_path):
    """Each type's ZIP from SQLite (default blocks) and from PostgreSQL (read in blocks of 2) is the same."""
    from ray_export.api import export
    from ray_export.demo import build_demo_project, copy_project_to_postgres

    demo = build_demo_project(tmp_path / "demo", n_images=5, project_type=project_type)
    copy_project_to_postgres(demo.db_path, postgres_dsn)
    export(db=str(demo.db_path), project=demo.project_id, output=str(tmp_path / "sqlite.zip"))
    export(db=postgres_dsn, project=demo.project_id, images_root=str(demo.images_root),
           output=str(tmp_path / "pg.zip"), stages={"read": {"batch_size": 2}})  # fmt: skip
    assert (tmp_path / "pg.zip").read_bytes() == (tmp_path / "sqlite.zip").read_bytes()
