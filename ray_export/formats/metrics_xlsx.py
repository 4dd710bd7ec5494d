"""``metrics/metrics.xlsx``: sheet "Polygon Metrics" (header with units, exact values) and sheet "Summary"."""

from __future__ import annotations

import contextlib
import io
import os
from array import array
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, BinaryIO

import xlsxwriter
from xlsxwriter.worksheet import Worksheet

from ..metrics import KEY_COLUMNS, METRIC_COLUMNS
from ..project_types.base import FLOAT_KINDS, TypeTable, final_rows, holds_rows
from ..project_types.registry import project_type_named
from .metrics_files import header_names, metric_float, metrics_file_format, summary_statistics
from .type_tables import cell_value

METRICS_SHEET = "Polygon Metrics"
SUMMARY_SHEET = "Summary"
SUMMARY_COLUMNS: list[str] = ["metric", "count", "mean", "std", "min", "median", "max"]
#: Data rows per "Polygon Metrics" sheet (Excel's 1,048,576 rows minus the header).
XLSX_ROWS_PER_SHEET = 1_048_575


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

    # Row data of constant_memory mode lives in a temporary file that has no name once open, so that an
    # export that dies leaves nothing; the open handle is kept (never closed and reopened by name).
    def _initialize(self, init_data) -> None:
        super()._initialize(init_data)
        if getattr(self, "row_data_filename", None):
            with contextlib.suppress(OSError):
                os.unlink(self.row_data_filename)

    def _opt_close(self) -> None:
        """Keep the unnamed row data file open (it cannot be reopened by name)."""

    def _opt_reopen(self) -> None:
        """The row data file was never closed."""

    def _write_optimized_sheet_data(self) -> None:
        if self.dim_rowmin is None:
            self._xml_empty_tag("sheetData")
            return
        self._xml_start_tag("sheetData")
        source = self.row_data_fh
        source.seek(0)
        while chunk := source.read(1 << 16):
            self.fh.write(chunk)
        source.close()
        self._xml_end_tag("sheetData")


# Guard against a future xlsxwriter that renames the number writer: fall back to its own output.
_WORKSHEET_CLASS = (
    _ExactNumberWorksheet
    if all(hasattr(Worksheet, name) for name in ("_xml_number_element", "_write_optimized_sheet_data", "_opt_reopen"))
    else Worksheet
)


def _naive_utc(created: datetime) -> datetime:
    if created.tzinfo is not None:
        created = created.astimezone(timezone.utc).replace(tzinfo=None)
    return created


class MetricsXlsxWriter:
    """``metrics.xlsx``: sheet "Polygon Metrics" (header with units, exact values) and sheet "Summary".

    Rows are streamed to disk (xlsxwriter ``constant_memory``, in temporary files unlinked once open); the
    defined values of every metric are kept as float64 arrays for the summary. ``tmpdir`` is where
    xlsxwriter makes its temporary files (the system's temporary folder when None): the row files lose
    their names at once, the package's parts exist only while :meth:`close` assembles the workbook.
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        scaled: bool,
        created: datetime,
        tmpdir: str | None = None,
        type_tables: Sequence[TypeTable] = (),
        object_metrics: bool = True,
    ) -> None:
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
        self._header = header_names(scaled)
        self._bold = self._workbook.add_format({"bold": True})
        self._values: dict[str, array] = {name: array("d") for name in METRIC_COLUMNS}
        self._rows_total = 0
        self._sheet_count = 0
        self._sheet: Worksheet | None = None
        self._row_in_sheet = 0
        #: the per-object table and its summary are written (a project type may leave them out)
        self._object_metrics = object_metrics
        if object_metrics:
            self._new_metrics_sheet()
        self._type_tables = tuple(type_tables)
        self._type_sheets = {
            t.name: TypeSheet(self._workbook, t, scaled, self._bold) for t in type_tables if not t.hidden
        }
        self._held: dict[str, list[dict[str, Any]]] = {
            t.name: [] for t in type_tables if holds_rows(t) and not t.hidden
        }

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
        """Append rows (none without the per-object table)."""
        if not self._object_metrics:
            return
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
                value = metric_float(row.get(name))
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

    def write_type_rows(self, rows: Mapping[str, list[dict[str, Any]]]) -> None:
        """Append one image's rows of the project type's tables to their sheets (or hold them until the
        whole-table step)."""
        for name, sheet in self._type_sheets.items():
            found = rows.get(name) or []
            if name in self._held:
                self._held[name].extend(found)
            elif not sheet.table.derived_from:
                sheet.add(found)

    def close(self) -> None:
        """Write the Summary sheet (and the type tables' held rows and summaries) and finish the workbook
        (the file object stays open)."""
        if self._object_metrics:
            self._write_summary()
        finals = final_rows([t for t in self._type_tables if not t.hidden], self._held)
        self._held = {}
        for name, sheet in self._type_sheets.items():
            sheet.finish(finals.get(name, []))
        self._workbook.close()

    def abort(self) -> None:
        """Give up without finishing the file: close and remove xlsxwriter's temporary row files."""
        for sheet in self._workbook.worksheets():
            handle = getattr(sheet, "row_data_fh", None)
            path = getattr(sheet, "row_data_filename", None)
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()
            if path and not isinstance(sheet, _ExactNumberWorksheet):  # its files lost their names at once
                with contextlib.suppress(OSError):
                    os.remove(path)


class TypeSheet:
    """One table of the project type as a sheet: the header with units, rows as they come (or, for a
    table with a whole-table step, all at the end), and its summary sheet where it has one."""

    def __init__(self, workbook: Any, table: TypeTable, scaled: bool, bold: Any) -> None:
        self.table = table
        self._workbook = workbook
        self._bold = bold
        self._header = table.header(scaled)
        self._sheet = workbook.add_worksheet(table.sheet, worksheet_class=_WORKSHEET_CLASS)
        self._sheet.set_column(0, 0, 12)
        self._sheet.set_column(1, 1, 28)
        self._sheet.set_column(2, len(self._header) - 1, 14)
        self._sheet.freeze_panes(1, 0)
        for col, text in enumerate(self._header):
            self._sheet.write_string(0, col, text, bold)
        self._next_row = 1
        floats = [name for name, kind in table.columns if kind in FLOAT_KINDS]
        self._values: dict[str, array] = {name: array("d") for name in floats}

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Write one image's rows."""
        self._write(rows)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if self._next_row > XLSX_ROWS_PER_SHEET:
                raise ValueError(f"table {self.table.name} has more rows than an XLSX sheet holds")
            for col, (name, kind) in enumerate(self.table.all_columns):
                value = cell_value(row.get(name), kind)
                if value is None:
                    continue
                if isinstance(value, str):
                    self._sheet.write_string(self._next_row, col, value)
                else:
                    self._sheet.write_number(self._next_row, col, value)
                    if name in self._values:
                        self._values[name].append(float(value))
            self._next_row += 1

    def finish(self, final_rows: list[dict[str, Any]]) -> None:
        """Write the last rows, then the table's chart (beside the columns) and its summary sheet."""
        self._write(final_rows)
        if self.table.chart is not None:
            png = self.table.chart(final_rows)
            self._sheet.insert_image(
                1, len(self._header) + 1, self.table.chart_member.rsplit("/", 1)[-1],
                {"image_data": io.BytesIO(png), "object_position": 3, "description": self.table.description},
            )  # fmt: skip
        if self.table.summary_sheet:
            sheet = self._workbook.add_worksheet(self.table.summary_sheet, worksheet_class=_WORKSHEET_CLASS)
            sheet.set_column(0, 0, 28)
            sheet.set_column(1, len(SUMMARY_COLUMNS) - 1, 14)
            for col, text in enumerate(SUMMARY_COLUMNS):
                sheet.write_string(0, col, text, self._bold)
            headers = dict(zip((name for name, _ in self.table.all_columns), self._header, strict=True))
            for r, name in enumerate(self._values, start=1):
                sheet.write_string(r, 0, headers[name])
                for col, stat in enumerate(summary_statistics(self._values[name]), start=1):
                    if stat is not None:
                        sheet.write_number(r, col, stat)


def _open_xlsx(fh: BinaryIO, ctx: Any) -> MetricsXlsxWriter:
    tables = project_type_named(ctx.selection.project_type).tables if ctx.selection.type_tables else ()
    return MetricsXlsxWriter(
        fh, ctx.scale_um_per_px is not None, ctx.export_time, type_tables=tables,
        object_metrics=ctx.selection.object_metrics,
    )  # fmt: skip


FORMAT = metrics_file_format(
    "xlsx",
    _open_xlsx,
    "metrics workbook: sheets `Polygon Metrics` and `Summary`",
    lambda member: [
        "# pd.read_excel needs openpyxl",
        f'xlsx_table = pd.read_excel("{member}", sheet_name="Polygon Metrics")',
        f'xlsx_summary = pd.read_excel("{member}", sheet_name="Summary")',
    ],
    readme_order=30.2,
    option_rank=1,
)
