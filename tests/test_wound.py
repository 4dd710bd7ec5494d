"""Wound projects: per-image wound area, the closure time series, the chart and the XLSX sheet."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import xlsxwriter
from PIL import Image
from shapely.geometry import Polygon

from ray_export.polygons import parse_polygons
from ray_export.project_types import wound
from ray_export.project_types.wound import (
    CHART_HEIGHT,
    CHART_WIDTH,
    COLUMN_NAMES,
    COLUMNS,
    FORMULAS,
    header_names,
    label_indices,
    nice_axis,
    scale_series,
    shorten,
    wound_chart_png,
    wound_image_values,
    wound_time_series,
)

REPO = Path(__file__).resolve().parents[1]
W, H = 1000, 800
T0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
LINE_COLOUR = (37, 99, 235)


def _element(points, kind="external", **extra) -> dict:
    return {"type": kind, "points": [{"x": float(x), "y": float(y)} for x, y in points], **extra}


def _strip(width: float, wobble: float = 0.0) -> list[tuple[float, float]]:
    """A vertical scratch across the whole image height, centred at x = W/2, edges slightly slanted."""
    left, right = W / 2 - width / 2, W / 2 + width / 2
    return [(left, 0), (right + wobble, 0), (right, H / 2), (right - wobble, H), (left + wobble, H), (left, H / 2)]


def _rect(x: float, y: float, w: float, h: float) -> list[tuple[float, float]]:
    return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]


def _area(outer, holes=()) -> float:
    """Independent area: shapely's polygon area."""
    return Polygon(outer, [list(h) for h in holes]).area


def _scratch_frames() -> tuple[list[dict], list[float]]:
    """Eight frames of a closing scratch (frame 3 holds a cell island, a hole); rows and expected areas."""
    widths = [400, 350, 300, 250, 200, 150, 100, 50]
    rows, areas = [], []
    for i, width in enumerate(widths):
        outer = _strip(width, wobble=7.5)
        elements = [_element(outer, id="w")]
        holes = []
        if i == 3:
            hole = _rect(480, 300, 30, 40)
            holes.append(hole)
            elements.append(_element(hole, "internal", parent_id="w"))
        values = wound_image_values(parse_polygons(json.dumps(elements)), W, H)
        rows.append(
            {
                "image_id": f"id-{i}",
                "image_name": f"scratch_t{i:02d}.png",
                "created_at": T0 + timedelta(hours=6 * i),
                **values,
            }
        )
        areas.append(_area(outer, holes))
    return rows, areas


# --------------------------------------------------------------------------------------------------
# Values


def test_wound_area_and_percent_of_one_image():
    outer = _strip(300, wobble=12.25)
    hole = _rect(450, 100, 40, 25)
    second = _rect(10, 10, 20, 30)
    raw = [_element(outer), _element(hole, "internal"), _element(second, complete=False)]
    values = wound_image_values(parse_polygons(raw), W, H)
    expected = _area(outer, [hole]) + _area(second)
    assert values["wound_area"] == pytest.approx(expected, rel=1e-12)
    assert values["wound_area_pct"] == pytest.approx(expected / (W * H) * 100, rel=1e-12)
    assert values["polygons"] == 2
    assert values["note"] is None


def test_orphan_holes_and_polylines_do_not_count():
    outer = _rect(100, 100, 200, 100)
    raw = [
        _element(outer),
        _element(_rect(600, 600, 10, 10), "internal"),  # inside no external: an orphan
        {"geometry": "polyline", "points": [{"x": 0, "y": 0}, {"x": 50, "y": 50}]},
    ]
    values = wound_image_values(parse_polygons(raw), W, H)
    assert values["wound_area"] == 20000.0
    assert values["wound_area_pct"] == 2.5
    assert values["polygons"] == 1


def test_no_polygons_is_zero_area():
    values = wound_image_values(parse_polygons(None), W, H)
    assert values == {"wound_area": 0.0, "wound_area_pct": 0.0, "polygons": 0, "note": None}


@pytest.mark.parametrize(("width", "height"), [(0, 0), (None, None), (W, 0), (-5, H)])
def test_unknown_image_size_gives_no_percent(width, height):
    values = wound_image_values(parse_polygons([_element(_rect(0, 0, 10, 10))]), width, height)
    assert values["wound_area"] == 100.0
    assert values["wound_area_pct"] is None
    assert "unknown image size" in values["note"]


def test_unreadable_polygons_give_no_values():
    values = wound_image_values(parse_polygons("{not json"), W, H)
    assert values["wound_area"] is None
    assert values["wound_area_pct"] is None
    assert values["polygons"] is None
    assert "unreadable polygons" in values["note"]


# --------------------------------------------------------------------------------------------------
# Time series


def test_closing_scratch_time_series():
    rows, areas = _scratch_frames()
    series = wound_time_series(rows)
    assert [r["order"] for r in series] == list(range(8))
    assert [list(r) for r in series] == [list(COLUMN_NAMES)] * 8
    a0 = areas[0]
    for row, area in zip(series, areas, strict=True):
        assert row["wound_area"] == pytest.approx(area, rel=1e-12)
        assert row["wound_area_pct"] == pytest.approx(area / (W * H) * 100, rel=1e-12)
        assert row["closure_pct"] == pytest.approx((a0 - area) / a0 * 100, rel=1e-12, abs=1e-12)
        assert row["polygons"] == 1
        assert row["note"] is None
    assert series[0]["closure_pct"] == 0.0
    assert series[0]["created_at"] == "2024-01-02T03:04:05.000000Z"
    assert series[7]["created_at"] == "2024-01-03T21:04:05.000000Z"
    assert series[3]["image_name"] == "scratch_t03.png"
    assert series[3]["image_id"] == "id-3"
    # the hole of frame 3 is not wound
    assert series[3]["wound_area"] == pytest.approx(_area(_strip(250, 7.5)) - 1200, rel=1e-12)
    closures = [r["closure_pct"] for r in series]
    assert closures == sorted(closures)
    # the slanted edges take 7.5 px × H / 4 off every frame: (400 − 50)·H / (400·H − 1500)
    assert closures[-1] == pytest.approx(350 * H / (400 * H - 1500) * 100, rel=1e-12)


def test_first_area_zero_leaves_closure_undefined():
    rows = [
        {"image_id": 1, "image_name": "a.png", "created_at": None, **wound_image_values(parse_polygons([]), W, H)},
        {
            "image_id": 2,
            "image_name": "b.png",
            "created_at": None,
            **wound_image_values(parse_polygons([_element(_rect(0, 0, 10, 10))]), W, H),
        },
    ]
    series = wound_time_series(rows)
    assert [r["wound_area"] for r in series] == [0.0, 100.0]
    assert [r["closure_pct"] for r in series] == [None, None]
    assert all("first known wound area is 0" in r["note"] for r in series)
    assert series[0]["image_id"] == "1"


def test_reference_is_first_known_area_and_unknowns_stay_empty():
    unreadable = wound_image_values(parse_polygons("[oops"), W, H)
    big = wound_image_values(parse_polygons([_element(_rect(0, 0, 100, 100))]), W, H)
    no_size = wound_image_values(parse_polygons([_element(_rect(0, 0, 50, 100))]), 0, 0)
    small = wound_image_values(parse_polygons([_element(_rect(0, 0, 25, 100))]), W, H)
    rows = [
        {"image_id": str(i), "image_name": f"{i}.png", "created_at": None, **v}
        for i, v in enumerate([unreadable, big, no_size, unreadable, small])
    ]
    series = wound_time_series(rows)
    assert [r["closure_pct"] for r in series] == [None, 0.0, 50.0, None, 75.0]
    assert [r["wound_area_pct"] for r in series] == [None, 1.25, None, None, 0.3125]
    assert "unreadable polygons" in series[0]["note"]
    assert "unknown image size" in series[2]["note"]
    assert series[4]["note"] is None


def test_area_missing_without_note_is_explained():
    series = wound_time_series([{"image_id": "x", "image_name": "x.png", "created_at": None, "wound_area": None}])
    assert series[0]["note"] == wound.NOTE_AREA_UNKNOWN
    assert series[0]["closure_pct"] is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05.000000Z"),
        (datetime(2024, 1, 2, 5, 4, 5, 120, tzinfo=timezone(timedelta(hours=2))), "2024-01-02T03:04:05.000120Z"),
        ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05.000000Z"),
        ("2024-01-02T03:04:05.5+01:00", "2024-01-02T02:04:05.500000Z"),
        ("2024-01-02 03:04:05", "2024-01-02T03:04:05.000000Z"),
        (None, None),
    ],
)
def test_created_at_is_utc_iso_text(value, expected):
    series = wound_time_series([{"image_id": "x", "image_name": "x.png", "created_at": value, "wound_area": 1.0}])
    assert series[0]["created_at"] == expected
    assert series[0]["note"] is None


def test_unreadable_created_at_is_noted():
    series = wound_time_series([{"image_id": "x", "image_name": "x.png", "created_at": "yesterday", "wound_area": 1}])
    assert series[0]["created_at"] is None
    assert series[0]["note"] == wound.NOTE_CREATED_UNREADABLE


def test_columns_units_and_scaling():
    assert [name for name, _ in COLUMNS] == [
        "order",
        "image_id",
        "image_name",
        "created_at",
        "wound_area",
        "wound_area_pct",
        "closure_pct",
        "polygons",
        "note",
    ]
    assert {kind for _, kind in COLUMNS} <= {"area", "length", "count", "percent", "text", "int"}
    assert dict(COLUMNS)["wound_area"] == "area"
    assert header_names(False)[4:7] == ["wound_area (px^2)", "wound_area_pct", "closure_pct"]
    assert header_names(True)[4] == "wound_area (um^2)"
    rows, _ = _scratch_frames()
    series = wound_time_series(rows)
    scaled = scale_series(series, 0.5)
    assert scaled[0]["wound_area"] == series[0]["wound_area"] * 0.25
    assert scaled[0]["wound_area_pct"] == series[0]["wound_area_pct"]
    assert scaled[0]["closure_pct"] == series[0]["closure_pct"]
    assert scale_series(series, None) == series
    assert series[0]["wound_area"] != scaled[0]["wound_area"]  # the input is not changed


def test_formulas_document_every_column_and_the_chart():
    for name in COLUMN_NAMES:
        assert f"`{name}`" in FORMULAS
    assert "A_0 = 0" in FORMULAS
    assert wound.CHART_MEMBER in FORMULAS


# --------------------------------------------------------------------------------------------------
# Chart


def _decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        assert image.size == (CHART_WIDTH, CHART_HEIGHT)
        assert image.mode == "RGB"
        return np.asarray(image)


def _scratch_series() -> list[dict]:
    rows, _ = _scratch_frames()
    return wound_time_series(rows)


def test_chart_draws_the_series():
    png = wound_chart_png(_scratch_series(), "Scratch assay")
    pixels = _decode(png)
    plot = pixels[wound._TOP : wound._BOTTOM, wound._LEFT + 2 : wound._RIGHT]
    assert np.any(np.any(plot != 255, axis=2))
    assert np.sum(np.all(plot == LINE_COLOUR, axis=2)) > 500  # the line and its markers
    title = pixels[10:50]
    assert np.any(title != 255)
    below_axis = pixels[wound._BOTTOM + 8 : CHART_HEIGHT]
    assert np.any(below_axis != 255)  # tick labels and the axis label
    assert np.any(pixels[:, :60] != 255)  # the y axis label and tick labels


def test_chart_bytes_are_deterministic_and_follow_the_data():
    series = _scratch_series()
    first = wound_chart_png(series, "Scratch assay")
    assert wound_chart_png(series, "Scratch assay") == first
    changed = [dict(r) for r in series]
    changed[4]["wound_area_pct"] += 1.0
    assert wound_chart_png(changed, "Scratch assay") != first
    assert wound_chart_png(series, "Another title") != first
    renamed = [dict(r) for r in series]
    renamed[0]["image_name"] = "other.png"
    assert wound_chart_png(renamed, "Scratch assay") != first


def test_chart_bytes_are_the_same_in_a_fresh_interpreter():
    series = _scratch_series()
    digest = hashlib.sha256(wound_chart_png(series, "Scratch assay — ü")).hexdigest()
    script = (
        "import hashlib, json, sys\n"
        "from ray_export.project_types.wound import wound_chart_png\n"
        "series = json.loads(sys.stdin.read())\n"
        "print(hashlib.sha256(wound_chart_png(series, 'Scratch assay — ü')).hexdigest())\n"
    )
    plain = [{k: v for k, v in r.items()} for r in series]
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(plain),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip() == digest


def test_missing_values_are_gaps_in_the_line():
    def row(i, v):
        return {"image_name": f"{i}.png", "wound_area_pct": v}

    full = _decode(wound_chart_png([row(0, 10.0), row(1, 10.0), row(2, 10.0)], "t"))
    gap = _decode(wound_chart_png([row(0, 10.0), row(1, None), row(2, 10.0)], "t"))
    xs = wound._x_positions(3)
    _, top, _ = nice_axis(0.0, 10.0)
    y = round(wound._BOTTOM - 10.0 / top * (wound._BOTTOM - wound._TOP))
    middle = (xs[0] + xs[1]) // 2
    assert tuple(full[y, middle]) == LINE_COLOUR
    assert tuple(gap[y, middle]) != LINE_COLOUR
    assert tuple(gap[y, xs[2]]) == LINE_COLOUR  # the marker after the gap


@pytest.mark.parametrize("count", [0, 1, 2, 13, 200])
def test_chart_any_number_of_images(count):
    series = [
        {"image_name": f"a_rather_long_image_name_of_frame_{i:04d}.tif", "wound_area_pct": 50.0 * (1 - i / 250)}
        for i in range(count)
    ]
    pixels = _decode(wound_chart_png(series, "Wound closure"))
    if count:
        plot = pixels[wound._TOP : wound._BOTTOM, wound._LEFT + 2 : wound._RIGHT]
        assert np.any(np.all(plot == LINE_COLOUR, axis=2))


def test_chart_with_no_values_or_odd_values():
    for values in ([None, None], [0.0, 0.0], [1e-9, 2e-9], [150.0, 3.0], [-2.0, 5.0]):
        series = [{"image_name": f"{i}", "wound_area_pct": v} for i, v in enumerate(values)]
        _decode(wound_chart_png(series, ""))
    _decode(wound_chart_png([{"image_name": "名前\u0000\u200b.png", "wound_area_pct": float("nan")}], "x" * 500))


def test_nice_axis():
    assert nice_axis(0.0, 43.0) == (0.0, 50.0, 10.0)
    assert nice_axis(0.0, 0.012) == (0.0, 0.012, 0.002)
    assert nice_axis(0.0, 3.0)[1] == 3.0
    assert nice_axis(0.0, 0.0) == (0.0, 10.0, 1.0)
    bottom, top, step = nice_axis(-2.0, 5.0)
    assert bottom <= -2.0 and top >= 5.0 and bottom <= 0.0
    for high in (0.7, 1.0, 7.3, 99.9, 100.0, 123.4, 1e-5):
        bottom, top, step = nice_axis(0.0, high)
        assert bottom == 0.0 and top >= high
        assert (top - bottom) / step <= 10


def test_x_labels_at_most_twelve_and_shortened():
    for count in range(0, 400):
        shown = label_indices(count)
        assert len(shown) <= 12
        assert shown == sorted(set(shown))
        assert (count == 0) == (not shown)
        if count:
            assert shown[0] == 0
    assert label_indices(8) == list(range(8))
    font = wound._font(12)
    name = "a_rather_long_image_name_of_frame_0001.tif"
    short = shorten(name, font, 90)
    assert "…" in short and font.getlength(short) <= 90
    assert short.endswith(".tif") and short.startswith("a_r")
    assert shorten("short.png", font, 90) == "short.png"


# --------------------------------------------------------------------------------------------------
# XLSX


def _workbook_bytes(series, png, scaled=False, constant_memory=False) -> bytes:
    """The wound sheet as metrics.xlsx writes it (``png`` None: a table without chart)."""
    from dataclasses import replace

    from ray_export.formats.metrics_xlsx import TypeSheet

    table = wound.TYPE.tables[0]
    table = replace(table, chart=None) if png is None else replace(table, chart=lambda rows: png)
    buffer = io.BytesIO()
    workbook = xlsxwriter.Workbook(buffer, {"constant_memory": constant_memory, "in_memory": not constant_memory})
    workbook.set_properties({"title": "Polygon metrics", "created": datetime(2024, 1, 2, 3, 4, 5)})
    TypeSheet(workbook, table, scaled, workbook.add_format({"bold": True})).finish(list(series))
    workbook.close()
    return buffer.getvalue()


@pytest.mark.parametrize("constant_memory", [False, True])
def test_xlsx_sheet_with_chart(constant_memory):
    openpyxl = pytest.importorskip("openpyxl")
    rows, _ = _scratch_frames()
    rows[2]["note"] = "a note"
    rows[2]["wound_area_pct"] = None
    series = wound_time_series(rows)
    png = wound_chart_png(series, "Scratch assay")
    data = _workbook_bytes(series, png, constant_memory=constant_memory)
    assert _workbook_bytes(series, png, constant_memory=constant_memory) == data

    book = openpyxl.load_workbook(io.BytesIO(data))
    sheet = book[wound.SHEET]
    table = list(sheet.iter_rows(values_only=True))
    assert list(table[0]) == header_names(False)
    assert table[0][4] == "wound_area (px^2)"
    assert len(table) == 1 + len(series)
    for got, row in zip(table[1:], series, strict=True):
        assert list(got) == [row[name] for name in COLUMN_NAMES]  # exact float64 values, empty for None
    assert table[3][5] is None and table[3][8] == "a note"
    images = sheet._images
    assert len(images) == 1
    assert images[0]._data() == png
    assert images[0].anchor._from.col == 10 and images[0].anchor._from.row == 1  # K2


def test_xlsx_scaled_header_and_bytes_follow_the_data():
    openpyxl = pytest.importorskip("openpyxl")
    series = scale_series(_scratch_series(), 0.65)
    png = wound_chart_png(series, "t")
    data = _workbook_bytes(series, png, scaled=True)
    header = next(openpyxl.load_workbook(io.BytesIO(data))[wound.SHEET].iter_rows(values_only=True))
    assert header[4] == "wound_area (um^2)"
    assert _workbook_bytes(series, png, scaled=False) != data
    assert _workbook_bytes(series, wound_chart_png(series, "u"), scaled=True) != data


def test_xlsx_without_images_or_chart():
    openpyxl = pytest.importorskip("openpyxl")
    data = _workbook_bytes([], None)
    sheet = openpyxl.load_workbook(io.BytesIO(data))[wound.SHEET]
    assert [list(r) for r in sheet.iter_rows(values_only=True)] == [header_names(False)]
    assert sheet._images == []
    data = _workbook_bytes([], wound_chart_png([], "empty"))
    assert len(openpyxl.load_workbook(io.BytesIO(data))[wound.SHEET]._images) == 1
