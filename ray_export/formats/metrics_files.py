"""Streaming writers of the metrics files (``metrics/metrics.csv|xlsx|json|parquet``).

Each writer takes a binary file object, writes its header when constructed, accepts rows with
:meth:`write_rows` (dicts keyed by ``KEY_COLUMNS + METRIC_COLUMNS``, as made by
:func:`ray_export.metrics.image_metric_rows`) and finishes the file with :meth:`close`, which leaves
the file object open; :meth:`abort` gives up instead and removes any temporary files. The bytes depend
only on the rows (not on how they were split into calls), the scale and the given creation time.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from array import array
from datetime import datetime, timezone
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xlsxwriter
from xlsxwriter.worksheet import Worksheet

from ..metrics import INTEGER_METRICS, KEY_COLUMNS, METRIC_COLUMNS, header_name, metric_units

ALL_COLUMNS: list[str] = KEY_COLUMNS + METRIC_COLUMNS
METRICS_SHEET = "Polygon Metrics"
SUMMARY_SHEET = "Summary"
SUMMARY_COLUMNS: list[str] = ["metric", "count", "mean", "std", "min", "median", "max"]
#: Data rows per "Polygon Metrics" sheet (Excel's 1,048,576 rows minus the header).
XLSX_ROWS_PER_SHEET = 1_048_575
#: Rows per Parquet row group (fixed, so the file does not depend on how rows arrive).
PARQUET_ROW_GROUP_ROWS = 32_768


def _header_names(scaled: bool) -> list[str]:
    units = metric_units(scaled)
    return KEY_COLUMNS + [header_name(name, units[name]) for name in METRIC_COLUMNS]


def _metric_float(value: Any) -> float | None:
    """A metric value as a finite Python float, or ``None``."""
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _metric_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _scale_value(scale_um_per_px: float | None) -> float | None:
    return None if scale_um_per_px is None else float(scale_um_per_px)


class MetricsCsvWriter:
    """``metrics.csv``: UTF-8, ``\\n`` line ends, units in the header, round-trip floats, empty if undefined."""

    def __init__(self, fileobj: BinaryIO, scaled: bool) -> None:
        self._file = fileobj
        self._write_records([_header_names(scaled)])

    def _write_records(self, records: list[list[str]]) -> None:
        text = io.StringIO(newline="")
        csv.writer(text, lineterminator="\n").writerows(records)
        self._file.write(text.getvalue().encode("utf-8"))

    def write_rows(self, rows: list[dict]) -> None:
        """Append rows."""
        records: list[list[str]] = []
        for row in rows:
            out: list[str] = [str(row["image_id"]), str(row["image_name"]), str(int(row["number"]))]
            for name in METRIC_COLUMNS:
                if name in INTEGER_METRICS:
                    v = _metric_int(row.get(name))
                    out.append("" if v is None else str(v))
                else:
                    f = _metric_float(row.get(name))
                    out.append("" if f is None else repr(f))
            records.append(out)
        if records:
            self._write_records(records)

    def close(self) -> None:
        """Flush the file object (left open)."""
        self._file.flush()

    def abort(self) -> None:
        """Give up without finishing the file (nothing to clean up)."""


class _ExactNumberWorksheet(Worksheet):
    """Worksheet that stores numbers as their shortest round-trip text (full float64 precision)."""

    def _xml_number_element(self, number, attributes=None) -> None:
        attr = ""
        for key, value in attributes or []:
            attr += f' {key}="{self._escape_attributes(value)}"'
        text = repr(float(number))
        if text.endswith(".0"):
            text = text[:-2]
        self.fh.write(f"<c{attr}><v>{text}</v></c>")


# Guard against a future xlsxwriter that renames the number writer: fall back to its own output.
_WORKSHEET_CLASS = _ExactNumberWorksheet if hasattr(Worksheet, "_xml_number_element") else Worksheet


def _naive_utc(created: datetime) -> datetime:
    if created.tzinfo is not None:
        created = created.astimezone(timezone.utc).replace(tzinfo=None)
    return created


class MetricsXlsxWriter:
    """``metrics.xlsx``: sheet "Polygon Metrics" (header with units, exact values) and sheet "Summary".

    Rows are streamed to disk (xlsxwriter ``constant_memory``); the defined values of every metric are
    kept as float64 arrays for the summary. ``tmpdir`` is where xlsxwriter keeps its temporary files.
    """

    def __init__(self, fileobj: BinaryIO, scaled: bool, created: datetime, tmpdir: str | None = None) -> None:
        options: dict[str, Any] = {
            "constant_memory": True,
            "strings_to_numbers": False,
            "strings_to_formulas": False,
            "strings_to_urls": False,
            "use_zip64": False,
        }
        if tmpdir is not None:
            options["tmpdir"] = tmpdir
        self._workbook = xlsxwriter.Workbook(fileobj, options)
        self._workbook.set_properties({"title": "Polygon metrics", "created": _naive_utc(created)})
        self._header = _header_names(scaled)
        self._bold = self._workbook.add_format({"bold": True})
        self._values: dict[str, array] = {name: array("d") for name in METRIC_COLUMNS}
        self._rows_total = 0
        self._sheet_count = 0
        self._sheet: Worksheet | None = None
        self._row_in_sheet = 0
        self._new_metrics_sheet()

    def _new_metrics_sheet(self) -> None:
        self._sheet_count += 1
        name = METRICS_SHEET if self._sheet_count == 1 else f"{METRICS_SHEET} ({self._sheet_count})"
        sheet = self._workbook.add_worksheet(name, worksheet_class=_WORKSHEET_CLASS)
        sheet.set_column(0, 0, 12)
        sheet.set_column(1, 1, 28)
        sheet.set_column(2, len(self._header) - 1, 14)
        sheet.freeze_panes(1, 0)
        for col, text in enumerate(self._header):
            sheet.write_string(0, col, text, self._bold)
        self._sheet = sheet
        self._row_in_sheet = 0

    def write_rows(self, rows: list[dict]) -> None:
        """Append rows."""
        for row in rows:
            if self._row_in_sheet >= XLSX_ROWS_PER_SHEET:
                self._new_metrics_sheet()
            sheet = self._sheet
            assert sheet is not None
            r = self._row_in_sheet + 1
            sheet.write_string(r, 0, str(row["image_id"]))
            sheet.write_string(r, 1, str(row["image_name"]))
            sheet.write_number(r, 2, int(row["number"]))
            for offset, name in enumerate(METRIC_COLUMNS, start=3):
                value = _metric_float(row.get(name))
                if value is not None:
                    sheet.write_number(r, offset, value)
                    self._values[name].append(value)
            self._row_in_sheet += 1
            self._rows_total += 1

    def _write_summary(self) -> None:
        sheet = self._workbook.add_worksheet(SUMMARY_SHEET, worksheet_class=_WORKSHEET_CLASS)
        sheet.set_column(0, 0, 28)
        sheet.set_column(1, len(SUMMARY_COLUMNS) - 1, 14)
        for col, text in enumerate(SUMMARY_COLUMNS):
            sheet.write_string(0, col, text, self._bold)
        for r, (name, text) in enumerate(zip(METRIC_COLUMNS, self._header[len(KEY_COLUMNS) :], strict=True), start=1):
            sheet.write_string(r, 0, text)
            for col, stat in enumerate(summary_statistics(self._values[name]), start=1):
                if stat is not None:
                    sheet.write_number(r, col, stat)

    def close(self) -> None:
        """Write the Summary sheet and finish the workbook (the file object stays open)."""
        self._write_summary()
        self._workbook.close()

    def abort(self) -> None:
        """Give up without finishing the file: close and remove xlsxwriter's temporary row files."""
        for sheet in self._workbook.worksheets():
            handle = getattr(sheet, "row_data_fh", None)
            path = getattr(sheet, "row_data_filename", None)
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()
            if path:
                with contextlib.suppress(OSError):
                    os.remove(path)


def summary_statistics(values: array | np.ndarray | list[float]) -> list[float | None]:
    """``[count, mean, std (ddof 1), min, median, max]`` of the values; ``None`` where undefined or overflowing."""
    data = np.asarray(values, dtype=np.float64)
    n = len(data)
    if n == 0:
        return [0.0, None, None, None, None, None]
    # Values near the float64 limit are divided by a power of two first, so sums and squares cannot overflow.
    magnitude = float(np.max(np.abs(data)))
    exponent = math.frexp(magnitude)[1] if magnitude > 1e150 else 0
    scaled = np.ldexp(data, -exponent)
    with np.errstate(over="ignore", invalid="ignore"):
        std = float(np.ldexp(np.std(scaled, ddof=1), exponent)) if n >= 2 else None
        mean = float(np.ldexp(np.mean(scaled), exponent))
        median = float(np.ldexp(np.median(scaled), exponent))
    stats = [float(n), mean, std, float(np.min(data)), median, float(np.max(data))]
    return [v if v is None or math.isfinite(v) else None for v in stats]


class MetricsJsonWriter:
    """``metrics.json``: ``{"scale_um_per_px", "units", "rows": [...]}``, one row per line, null when undefined."""

    def __init__(self, fileobj: BinaryIO, scaled: bool, scale_um_per_px: float | None) -> None:
        self._file = fileobj
        head = (
            '{"scale_um_per_px": '
            + json.dumps(_scale_value(scale_um_per_px), allow_nan=False)
            + ', "units": '
            + json.dumps(metric_units(scaled), allow_nan=False)
            + ', "rows": ['
        )
        self._file.write(head.encode("utf-8"))
        self._count = 0

    def write_rows(self, rows: list[dict]) -> None:
        """Append rows."""
        parts: list[str] = []
        for row in rows:
            record: dict[str, Any] = {
                "image_id": str(row["image_id"]),
                "image_name": str(row["image_name"]),
                "number": int(row["number"]),
            }
            for name in METRIC_COLUMNS:
                if name in INTEGER_METRICS:
                    record[name] = _metric_int(row.get(name))
                else:
                    record[name] = _metric_float(row.get(name))
            sep = ",\n" if self._count else "\n"
            parts.append(sep + json.dumps(record, ensure_ascii=False, allow_nan=False))
            self._count += 1
        if parts:
            self._file.write("".join(parts).encode("utf-8"))

    def close(self) -> None:
        """Close the JSON document (the file object stays open)."""
        self._file.write(("\n]}\n" if self._count else "]}\n").encode("utf-8"))
        self._file.flush()

    def abort(self) -> None:
        """Give up without finishing the file (nothing to clean up)."""


def metrics_parquet_schema(scaled: bool, scale_um_per_px: float | None) -> pa.Schema:
    """Fixed Parquet schema: keys, nullable float64 metrics, int32 ``number``/``holes``; units in metadata."""
    fields = [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_name", pa.string(), nullable=False),
        pa.field("number", pa.int32(), nullable=False),
    ]
    for name in METRIC_COLUMNS:
        fields.append(pa.field(name, pa.int32() if name in INTEGER_METRICS else pa.float64(), nullable=True))
    metadata = {
        b"units": json.dumps(metric_units(scaled)).encode("utf-8"),
        b"scale_um_per_px": json.dumps(_scale_value(scale_um_per_px)).encode("utf-8"),
    }
    return pa.schema(fields, metadata=metadata)


class MetricsParquetWriter:
    """``metrics.parquet``: fixed schema, row groups of ``row_group_rows`` rows (the last one shorter)."""

    def __init__(
        self,
        fileobj: BinaryIO,
        scaled: bool,
        scale_um_per_px: float | None,
        row_group_rows: int = PARQUET_ROW_GROUP_ROWS,
    ) -> None:
        self._schema = metrics_parquet_schema(scaled, scale_um_per_px)
        self._writer = pq.ParquetWriter(fileobj, self._schema, compression="zstd", write_statistics=True)
        self._row_group_rows = int(row_group_rows)
        self._columns: dict[str, list] = {name: [] for name in ALL_COLUMNS}
        self._buffered = 0

    def write_rows(self, rows: list[dict]) -> None:
        """Append rows; full row groups are written as soon as they are complete."""
        for row in rows:
            self._columns["image_id"].append(str(row["image_id"]))
            self._columns["image_name"].append(str(row["image_name"]))
            self._columns["number"].append(int(row["number"]))
            for name in METRIC_COLUMNS:
                if name in INTEGER_METRICS:
                    self._columns[name].append(_metric_int(row.get(name)))
                else:
                    self._columns[name].append(_metric_float(row.get(name)))
            self._buffered += 1
            if self._buffered >= self._row_group_rows:
                self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        arrays = [pa.array(self._columns[f.name], type=f.type) for f in self._schema]
        table = pa.Table.from_arrays(arrays, schema=self._schema)
        self._writer.write_table(table, row_group_size=self._buffered)
        self._columns = {name: [] for name in ALL_COLUMNS}
        self._buffered = 0

    def close(self) -> None:
        """Write the last row group and the footer (the file object stays open)."""
        self._flush()
        self._writer.close()

    def abort(self) -> None:
        """Give up without writing the buffered rows; the file is left incomplete."""
        self._columns = {name: [] for name in ALL_COLUMNS}
        self._buffered = 0
        with contextlib.suppress(Exception):
            self._writer.close()
