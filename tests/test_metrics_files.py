"""The four metrics file writers: layout, units, exact values, summary and byte-identical output."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import xml.etree.ElementTree as ET
import zipfile
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_export.formats import metrics_xlsx
from ray_export.formats.metrics_csv import MetricsCsvWriter
from ray_export.formats.metrics_files import summary_statistics
from ray_export.formats.metrics_json import MetricsJsonWriter
from ray_export.formats.metrics_parquet import MetricsParquetWriter
from ray_export.formats.metrics_xlsx import MetricsXlsxWriter
from ray_export.metrics import KEY_COLUMNS, METRIC_COLUMNS, header_name, image_metric_rows, metric_units
from ray_export.polygons import parse_polygons

CREATED = datetime(2024, 5, 6, 7, 8, 9)
NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
TRICKY_FLOATS = [0.1 + 0.2, 1e-300, 5e-324, 1.7976931348623157e300, 1 / 3, 123456789.12345679, 2.0**-1074 * 3, 1e22]


def _star(rng: np.random.Generator, n: int, radius: float, center: np.ndarray) -> list[list[float]]:
    spacing = 2 * np.pi / n
    angles = spacing * (np.arange(n) + rng.uniform(-0.3, 0.3, n))
    radii = rng.uniform(0.5 * radius, radius, n)
    return (center + np.c_[radii * np.cos(angles), radii * np.sin(angles)]).tolist()


def _sample_rows(scale: float | None = None, images: int = 4) -> list[dict]:
    rng = np.random.default_rng(11)
    names = ["plain.png", 'comma, "quote".tif', "=SUM(A1).png", "http://example.com/x.png", "ünïcødé 細胞.jpg"]
    rows: list[dict] = []
    for i in range(images):
        elements = []
        for _ in range(int(rng.integers(1, 5))):
            center = rng.uniform(100, 5000, 2)
            elements.append({"type": "external", "points": _star(rng, 12, 40.0, center)})
            if rng.random() < 0.5:
                elements.append({"type": "internal", "points": _star(rng, 6, 8.0, center)})
        elements.append({"type": "external", "points": [[0, 0], [1, 1], [2, 2]]})  # undefined metrics
        got, _ = image_metric_rows(f"id-{i}", names[i % len(names)], parse_polygons(elements), scale)
        rows.extend(got)
    # Values that a lossy number format would not keep.
    special = dict(rows[0])
    special["number"] = 99
    for name, value in zip(METRIC_COLUMNS[:8], TRICKY_FLOATS, strict=False):
        special[name] = value
    rows.append(special)
    return rows


def _write(writer_cls, rows_batches, *args, **kwargs) -> bytes:
    buf = io.BytesIO()
    writer = writer_cls(buf, *args, **kwargs)
    for batch in rows_batches:
        writer.write_rows(batch)
    writer.close()
    assert not buf.closed
    return buf.getvalue()


WRITERS = [
    (MetricsCsvWriter, (False,), {}),
    (MetricsXlsxWriter, (False, CREATED), {}),
    (MetricsJsonWriter, (False, None), {}),
    (MetricsParquetWriter, (False, None), {"row_group_rows": 5}),
]


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return type(a) is type(b) and a == b


# ----------------------------------------------------------------------------------------- CSV


def test_csv_layout_and_exact_values():
    rows = _sample_rows(scale=0.5)
    data = _write(MetricsCsvWriter, [rows], True)
    text = data.decode("utf-8")
    assert "\r" not in text
    records = list(csv.reader(io.StringIO(text, newline="")))
    header = records[0]
    units = metric_units(True)
    assert header[:3] == KEY_COLUMNS
    assert header[3:] == [header_name(n, units[n]) for n in METRIC_COLUMNS]
    assert header[3] == "area (um^2)" and "perimeter (um)" in header and "centroid_x (px)" in header
    assert "feret_angle (deg)" in header and "circularity" in header and "holes" in header
    assert len(records) == len(rows) + 1
    for record, row in zip(records[1:], rows, strict=True):
        assert record[0] == row["image_id"] and record[1] == row["image_name"]
        assert int(record[2]) == row["number"]
        for text_value, name in zip(record[3:], METRIC_COLUMNS, strict=True):
            value = row[name]
            if value is None:
                assert text_value == ""
            elif name == "holes":
                assert text_value == str(value)
            else:
                assert float(text_value) == value and text_value == repr(value)
    assert any(r[METRIC_COLUMNS.index("compactness") + 3] == "" for r in records[1:])


def test_csv_pixel_header():
    header = _write(MetricsCsvWriter, [[]], False).decode().splitlines()[0].split(",")
    assert header[3] == "area (px^2)" and header[4] == "perimeter (px)"


# ----------------------------------------------------------------------------------------- JSON


def test_json_layout_and_exact_values():
    rows = _sample_rows(scale=2.0)
    rows[1] = dict(rows[1], roundness=float("nan"), extent=float("inf"))
    data = _write(MetricsJsonWriter, [rows[:3], [], rows[3:]], True, 2.0)
    assert b"NaN" not in data and b"Infinity" not in data
    doc = json.loads(data)
    assert list(doc) == ["scale_um_per_px", "units", "rows"]
    assert doc["scale_um_per_px"] == 2.0
    assert doc["units"] == metric_units(True)
    assert len(doc["rows"]) == len(rows)
    expected = [dict(r) for r in rows]
    expected[1]["roundness"] = None
    expected[1]["extent"] = None
    for got, want in zip(doc["rows"], expected, strict=True):
        assert list(got) == KEY_COLUMNS + METRIC_COLUMNS
        for key in got:
            assert _same(got[key], want[key]), key


def test_json_empty_and_unscaled():
    doc = json.loads(_write(MetricsJsonWriter, [], False, None))
    assert doc == {"scale_um_per_px": None, "units": metric_units(False), "rows": []}


# ----------------------------------------------------------------------------------------- Parquet


def test_parquet_schema_units_and_values():
    rows = _sample_rows(scale=0.25)
    data = _write(MetricsParquetWriter, [rows[:2], rows[2:7], rows[7:]], True, 0.25, row_group_rows=4)
    pf = pq.ParquetFile(io.BytesIO(data))
    schema = pf.schema_arrow
    assert schema.names == KEY_COLUMNS + METRIC_COLUMNS
    assert schema.field("image_id").type == pa.string()
    assert schema.field("image_name").type == pa.string()
    assert schema.field("number").type == pa.int32()
    assert schema.field("holes").type == pa.int32()
    for name in METRIC_COLUMNS:
        if name != "holes":
            assert schema.field(name).type == pa.float64()
            assert schema.field(name).nullable
    assert json.loads(schema.metadata[b"units"]) == metric_units(True)
    assert json.loads(schema.metadata[b"scale_um_per_px"]) == 0.25
    sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    assert sizes == [4] * (len(rows) // 4) + ([len(rows) % 4] if len(rows) % 4 else [])
    table = pf.read()
    for got, want in zip(table.to_pylist(), rows, strict=True):
        for key in KEY_COLUMNS + METRIC_COLUMNS:
            assert _same(got[key], want[key]), key
    assert table.column("compactness").null_count >= 1


def test_parquet_empty_file_is_valid():
    table = pq.read_table(io.BytesIO(_write(MetricsParquetWriter, [], False, None)))
    assert table.num_rows == 0
    assert table.schema.names == KEY_COLUMNS + METRIC_COLUMNS
    assert json.loads(table.schema.metadata[b"units"])["area"] == "px^2"


# ----------------------------------------------------------------------------------------- XLSX


def _col_index(ref: str) -> int:
    letters = re.match(r"[A-Z]+", ref).group(0)
    n = 0
    for ch in letters:
        n = n * 26 + ord(ch) - 64
    return n - 1


def _read_xlsx(data: bytes) -> dict[str, list[list]]:
    """Sheet name -> rows of cell values (str, float, or None for an empty cell)."""
    zf = zipfile.ZipFile(io.BytesIO(data))
    workbook = ET.fromstring(zf.read("xl/workbook.xml"))
    names = [s.get("name") for s in workbook.find("m:sheets", NS)]
    sheets = {}
    for i, name in enumerate(names, start=1):
        root = ET.fromstring(zf.read(f"xl/worksheets/sheet{i}.xml"))
        table: list[list] = []
        for row in root.find("m:sheetData", NS):
            r = int(row.get("r")) - 1
            while len(table) <= r:
                table.append([])
            cells = table[r]
            for cell in row:
                c = _col_index(cell.get("r"))
                while len(cells) <= c:
                    cells.append(None)
                if cell.get("t") == "inlineStr":
                    cells[c] = "".join(t.text or "" for t in cell.iter(f"{{{NS['m']}}}t"))
                else:
                    cells[c] = float(cell.find("m:v", NS).text)
        sheets[name] = table
    return sheets


def test_xlsx_sheets_values_and_summary():
    rows = _sample_rows(scale=0.5)
    data = _write(MetricsXlsxWriter, [rows[:5], rows[5:]], True, CREATED)
    sheets = _read_xlsx(data)
    assert list(sheets) == ["Polygon Metrics", "Summary"]
    table = sheets["Polygon Metrics"]
    units = metric_units(True)
    assert table[0] == KEY_COLUMNS + [header_name(n, units[n]) for n in METRIC_COLUMNS]
    assert len(table) == len(rows) + 1
    for cells, row in zip(table[1:], rows, strict=True):
        cells = cells + [None] * (len(KEY_COLUMNS) + len(METRIC_COLUMNS) - len(cells))
        assert cells[0] == row["image_id"] and cells[1] == row["image_name"]
        assert cells[2] == float(row["number"])
        for got, name in zip(cells[3:], METRIC_COLUMNS, strict=True):
            want = row[name]
            assert (got is None) if want is None else (got == float(want)), name
    # Formula-like and URL-like names stay text.
    assert "=SUM(A1).png" in [c[1] for c in table[1:]]
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert b"<f>" not in zf.read("xl/worksheets/sheet1.xml")
    assert not any(n.startswith("xl/worksheets/_rels") for n in zf.namelist())

    summary = sheets["Summary"]
    assert summary[0] == ["metric", "count", "mean", "std", "min", "median", "max"]
    assert [r[0] for r in summary[1:]] == [header_name(n, units[n]) for n in METRIC_COLUMNS]
    for line, name in zip(summary[1:], METRIC_COLUMNS, strict=True):
        values = [float(r[name]) for r in rows if r[name] is not None]
        line = line + [None] * (7 - len(line))
        assert line[1] == len(values)
        assert line[2] == pytest.approx(statistics.fmean(values), rel=1e-12, abs=1e-300)
        assert line[3] == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-300)
        assert line[4] == min(values) and line[6] == max(values)
        assert line[5] == statistics.median(values)

    core = zf.read("docProps/core.xml").decode()
    assert '<dcterms:created xsi:type="dcterms:W3CDTF">2024-05-06T07:08:09Z</dcterms:created>' in core


def test_xlsx_summary_with_few_values_and_no_rows():
    assert summary_statistics([]) == [0.0, None, None, None, None, None]
    assert summary_statistics([2.5]) == [1.0, 2.5, None, 2.5, 2.5, 2.5]
    huge = 1.7976931348623157e308
    assert summary_statistics([huge, huge]) == [2.0, huge, 0.0, huge, huge, huge]
    count, mean, std, low, median, high = summary_statistics([1.0, 2.0, 4.0])
    assert (count, low, median, high) == (3.0, 1.0, 2.0, 4.0)
    assert mean == pytest.approx(7 / 3, rel=1e-15) and std == pytest.approx(math.sqrt(7 / 3), rel=1e-15)
    sheets = _read_xlsx(_write(MetricsXlsxWriter, [], False, CREATED))
    assert len(sheets["Polygon Metrics"]) == 1
    assert sheets["Polygon Metrics"][0][3] == "area (px^2)"
    assert all(line[1] == 0.0 and len(line) == 2 for line in sheets["Summary"][1:])


def test_xlsx_exact_number_text():
    row = dict(_sample_rows(images=1)[-1])
    data = _write(MetricsXlsxWriter, [[row]], False, CREATED)
    sheet = zipfile.ZipFile(io.BytesIO(data)).read("xl/worksheets/sheet1.xml").decode()
    for value in TRICKY_FLOATS:
        text = repr(value)
        text = text[:-2] if text.endswith(".0") else text
        assert f"<v>{text}</v>" in sheet, text
    cells = _read_xlsx(data)["Polygon Metrics"][1]
    assert cells[3 : 3 + len(TRICKY_FLOATS)] == TRICKY_FLOATS


def test_xlsx_created_timezone_is_utc():
    aware = datetime(2024, 5, 6, 9, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    assert _write(MetricsXlsxWriter, [], False, aware) == _write(MetricsXlsxWriter, [], False, CREATED)
    assert _write(MetricsXlsxWriter, [], False, CREATED + timedelta(seconds=1)) != _write(
        MetricsXlsxWriter, [], False, CREATED
    )


def test_xlsx_overflow_continues_on_new_sheet(monkeypatch):
    monkeypatch.setattr(metrics_xlsx, "XLSX_ROWS_PER_SHEET", 3)
    rows = _sample_rows()[:7]
    sheets = _read_xlsx(_write(MetricsXlsxWriter, [rows], False, CREATED))
    assert list(sheets) == ["Polygon Metrics", "Polygon Metrics (2)", "Polygon Metrics (3)", "Summary"]
    assert [len(sheets[n]) for n in list(sheets)[:3]] == [4, 4, 2]
    assert sheets["Polygon Metrics (2)"][0] == sheets["Polygon Metrics"][0]
    assert sheets["Summary"][1][1] == float(sum(r["area"] is not None for r in rows))


# ----------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize(("writer_cls", "args", "kwargs"), WRITERS, ids=lambda v: getattr(v, "__name__", ""))
def test_identical_bytes_twice_and_independent_of_batching(writer_cls, args, kwargs):
    rows = _sample_rows()
    once = _write(writer_cls, [rows], *args, **kwargs)
    again = _write(writer_cls, [rows], *args, **kwargs)
    assert once == again
    batches = [rows[:1], [], rows[1:4], rows[4:11], rows[11:]]
    assert _write(writer_cls, batches, *args, **kwargs) == once
    single = [[r] for r in rows]
    assert _write(writer_cls, single, *args, **kwargs) == once


def test_rows_built_from_numpy_values_write_as_python_numbers():
    row = dict(_sample_rows(images=1)[0])
    row["area"] = np.float64(12.5)
    row["holes"] = np.int64(2)
    row["number"] = np.int32(1)
    doc = json.loads(_write(MetricsJsonWriter, [[row]], False, None))
    assert doc["rows"][0]["area"] == 12.5 and doc["rows"][0]["holes"] == 2
    text = _write(MetricsCsvWriter, [[row]], False).decode()
    assert ",12.5," in text
    table = pq.read_table(io.BytesIO(_write(MetricsParquetWriter, [[row]], False, None)))
    assert table.column("holes").to_pylist() == [2]
    assert math.isclose(table.column("area")[0].as_py(), 12.5)


@pytest.mark.parametrize(("writer_cls", "args", "kwargs"), WRITERS, ids=lambda v: getattr(v, "__name__", ""))
def test_abort_leaves_no_temporary_files(writer_cls, args, kwargs, tmp_path):
    kwargs = dict(kwargs, tmpdir=str(tmp_path)) if writer_cls is MetricsXlsxWriter else kwargs
    writer = writer_cls(io.BytesIO(), *args, **kwargs)
    writer.write_rows(_sample_rows(images=1))
    if writer_cls is MetricsXlsxWriter:  # the row data file lost its name as soon as it was open
        assert list(tmp_path.iterdir()) == []
        assert writer._workbook.worksheets()[0].row_data_fh.tell() > 0
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_xlsx_close_leaves_no_temporary_files(tmp_path):
    buf = io.BytesIO()
    writer = MetricsXlsxWriter(buf, False, CREATED, tmpdir=str(tmp_path))
    writer.write_rows(_sample_rows(images=1))
    writer.close()
    assert list(tmp_path.iterdir()) == []
    assert zipfile.ZipFile(buf).testzip() is None
