"""The tables of the project type (``metrics/<table>.csv|json|parquet``; the XLSX sheets are written into
``metrics.xlsx`` by :mod:`.metrics_xlsx`).

The metrics stage fills the ``type_rows`` part of each image (every table's rows, values already scaled,
see :mod:`ray_export.project_types.base`); this writer streams them into one file per table and chosen
format, with the same conventions as the per-object metrics files: units in CSV headers, JSON
``{"scale_um_per_px", "units", "rows"}``, Parquet units in the schema metadata, shortest round-trip
floats, undefined values empty (CSV) or null. A table with a whole-table step (``series``, e.g. a wound
time series) keeps its rows until the end; every other table is written as the images arrive.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Mapping
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from ..output_files import spool_file
from ..project_types.base import FLOAT_KINDS, INT_KINDS, TypeTable, decode_type_rows, final_rows, holds_rows
from ..project_types.registry import project_type_named
from ..statistics import metric_float
from .base import ImagePart, OutputFormat, ReadmeSection, WriterContext

METRICS_FOLDER = "metrics/"
#: The formats a table is written in as a file of its own (XLSX tables are sheets of metrics.xlsx).
FILE_FORMATS: tuple[str, ...] = ("csv", "json", "parquet")
PARQUET_ROW_GROUP_ROWS = 32_768

#: Filled by the metrics stage: every table's rows of the image, as JSON text ``{table: [rows]}``.
PART = ImagePart(stage="metrics", column="type_rows", type=pa.string())


def table_member(table: TypeTable, fmt: str) -> str:
    """The member path of ``table`` in file format ``fmt``."""
    return f"{METRICS_FOLDER}{table.name}.{fmt}"


def cell_value(value: Any, kind: str) -> Any:
    """A value as the table files hold it: a finite float, an int, text, or None."""
    if value is None:
        return None
    if kind in FLOAT_KINDS:
        return metric_float(value)
    if kind in INT_KINDS:
        return int(value)
    return str(value)


class TableCsvWriter:
    """One table as CSV: UTF-8, ``\\n`` line ends, units in the header, round-trip floats, empty if undefined."""

    def __init__(self, fileobj: BinaryIO, table: TypeTable, scaled: bool, scale_um_per_px: float | None) -> None:
        self._file = fileobj
        self._columns = table.all_columns
        self._write([table.header(scaled)])

    def _write(self, records: list[list[str]]) -> None:
        text = io.StringIO(newline="")
        csv.writer(text, lineterminator="\n").writerows(records)
        self._file.write(text.getvalue().encode("utf-8"))

    def write_rows(self, rows: list[Mapping[str, Any]]) -> None:
        """Append rows."""
        records = []
        for row in rows:
            record = []
            for name, kind in self._columns:
                value = cell_value(row.get(name), kind)
                record.append("" if value is None else repr(value) if isinstance(value, float) else str(value))
            records.append(record)
        if records:
            self._write(records)

    def close(self) -> None:
        """Flush the file object (left open)."""
        self._file.flush()


class TableJsonWriter:
    """One table as ``{"scale_um_per_px", "units", "rows": [...]}``, one row per line, null when undefined."""

    def __init__(self, fileobj: BinaryIO, table: TypeTable, scaled: bool, scale_um_per_px: float | None) -> None:
        self._file = fileobj
        self._columns = table.all_columns
        scale = None if scale_um_per_px is None else float(scale_um_per_px)
        units = {name: unit for name, unit in table.units(scaled).items() if unit is not None}
        head = '{"scale_um_per_px": ' + json.dumps(scale) + ', "units": ' + json.dumps(units) + ', "rows": ['
        self._file.write(head.encode("utf-8"))
        self._count = 0

    def write_rows(self, rows: list[Mapping[str, Any]]) -> None:
        """Append rows."""
        parts = []
        for row in rows:
            record = {name: cell_value(row.get(name), kind) for name, kind in self._columns}
            parts.append((",\n" if self._count else "\n") + json.dumps(record, ensure_ascii=False, allow_nan=False))
            self._count += 1
        if parts:
            self._file.write("".join(parts).encode("utf-8"))

    def close(self) -> None:
        """Close the JSON document (the file object stays open)."""
        self._file.write(("\n]}\n" if self._count else "]}\n").encode("utf-8"))
        self._file.flush()


def table_parquet_schema(table: TypeTable, scaled: bool, scale_um_per_px: float | None) -> pa.Schema:
    """The table's Parquet schema: text as string, integers as int64, the rest float64; units in metadata."""
    fields = []
    for name, kind in table.all_columns:
        type_ = pa.float64() if kind in FLOAT_KINDS else pa.int64() if kind in INT_KINDS else pa.string()
        fields.append(pa.field(name, type_, nullable=name not in ("image_id", "image_name")))
    units = {name: unit for name, unit in table.units(scaled).items() if unit is not None}
    scale = None if scale_um_per_px is None else float(scale_um_per_px)
    metadata = {b"units": json.dumps(units).encode("utf-8"), b"scale_um_per_px": json.dumps(scale).encode("utf-8")}
    return pa.schema(fields, metadata=metadata)


class TableParquetWriter:
    """One table as Parquet: a fixed schema, row groups of a fixed number of rows."""

    def __init__(self, fileobj: BinaryIO, table: TypeTable, scaled: bool, scale_um_per_px: float | None) -> None:
        self._schema = table_parquet_schema(table, scaled, scale_um_per_px)
        self._kinds = dict(table.all_columns)
        self._writer = pq.ParquetWriter(fileobj, self._schema, compression="zstd", write_statistics=True)
        self._rows: list[Mapping[str, Any]] = []
        self._written = False

    def write_rows(self, rows: list[Mapping[str, Any]]) -> None:
        """Append rows; full row groups are written at once."""
        self._rows.extend(rows)
        while len(self._rows) >= PARQUET_ROW_GROUP_ROWS:
            self._flush(self._rows[:PARQUET_ROW_GROUP_ROWS])
            self._rows = self._rows[PARQUET_ROW_GROUP_ROWS:]

    def _flush(self, rows: list[Mapping[str, Any]]) -> None:
        arrays = [
            pa.array([cell_value(row.get(f.name), self._kinds[f.name]) for row in rows], type=f.type)
            for f in self._schema
        ]
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self._schema), row_group_size=len(rows))
        self._written = True

    def close(self) -> None:
        """Write the last row group and the footer (the file object stays open)."""
        if self._rows or not self._written:
            self._flush(self._rows)
        self._rows = []
        self._writer.close()


_WRITERS = {"csv": TableCsvWriter, "json": TableJsonWriter, "parquet": TableParquetWriter}


class _TableFile:
    """One (table, format) file: an unnamed spool file and its streaming writer."""

    def __init__(self, ctx: WriterContext, table: TypeTable, fmt: str) -> None:
        self.member = table_member(table, fmt)
        self.file = spool_file(ctx.spool)
        try:
            self.writer = _WRITERS[fmt](self.file, table, ctx.scale_um_per_px is not None, ctx.scale_um_per_px)
        except BaseException:
            self.file.close()
            raise


class TypeTablesWriter:
    """Writes every table of the export's project type in each chosen file format."""

    def __init__(self, ctx: WriterContext) -> None:
        self.ctx = ctx
        self.tables = project_type_named(ctx.selection.project_type).tables
        formats = [fmt for fmt in FILE_FORMATS if fmt in ctx.selection.metrics]
        self.files: dict[str, list[_TableFile]] = {}
        #: rows of the tables with a whole-table step and of hidden tables, kept until the end
        self.held: dict[str, list[dict[str, Any]]] = {t.name: [] for t in self.tables if holds_rows(t)}
        try:
            for table in self.tables:
                self.files[table.name] = [] if table.hidden else [_TableFile(ctx, table, fmt) for fmt in formats]
        except BaseException:
            self.abort()
            raise

    def add(self, row: Mapping[str, Any]) -> None:
        """Append the image's rows of every table."""
        rows = decode_type_rows(row.get(PART.column))
        for table in self.tables:
            if table.derived_from:
                continue
            found = rows.get(table.name) or []
            if table.name in self.held:
                self.held[table.name].extend(found)
            elif found:
                for table_file in self.files[table.name]:
                    table_file.writer.write_rows(found)

    def finish(self, summary: Any) -> None:
        """Finish every file (after the whole-table step where there is one) and add it to the ZIP, then
        each table's chart."""
        finals = final_rows(self.tables, self.held)
        self.held = {}
        for table in self.tables:
            for table_file in self.files[table.name]:
                table_file.writer.write_rows(finals.get(table.name, []))
            for table_file in self.files[table.name]:
                table_file.writer.close()
                self.ctx.zip.add_file(table_file.member, table_file.file)
                table_file.file.close()
        for table in self.tables:
            if table.chart is not None:
                self.ctx.zip.add_bytes(table.chart_member, table.chart(finals.get(table.name, [])))
        for table in self.tables:
            if table.members is not None:
                for name, data in table.members(finals.get(table.name, []), self.ctx.type_context):
                    self.ctx.zip.add_bytes(name, data)

    def abort(self) -> None:
        """Close every spool file (they have no names)."""
        for files in self.files.values():
            for table_file in files:
                with contextlib.suppress(Exception):
                    table_file.file.close()


def _describe(summary: Any) -> dict[str, str]:
    tables = project_type_named(summary.selection().project_type).tables
    chosen = [fmt for fmt in FILE_FORMATS if fmt in summary.selection().metrics]
    described = {
        table_member(table, fmt): f"{table.description} ({fmt})"
        for table in tables
        if not table.hidden
        for fmt in chosen
    }
    for table in tables:
        if table.chart is not None:
            described[table.chart_member] = f"chart of `{table.name}`"
        described.update(dict(table.member_folders))
    return described


def _readme_lines(summary: Any) -> list[str]:
    project_type = project_type_named(summary.selection().project_type)
    if not project_type.readme:
        return []
    return [f"### {project_type.name} tables", "", project_type.readme, "",
            "Every formula is in `documentation/metrics_guide.md`.", ""]  # fmt: skip


def _members(selection: Any) -> tuple[str, ...]:
    kind = project_type_named(selection.project_type)
    files = [table_member(t, fmt) for t in kind.visible_tables() for fmt in FILE_FORMATS if fmt in selection.metrics]
    charts = [table.chart_member for table in kind.tables if table.chart is not None]
    folders = [folder for table in kind.tables for folder, _ in table.member_folders]
    return tuple(files + charts + folders)


FORMAT = OutputFormat(
    name="type_tables",
    chosen_by="type_tables",
    open_writer=TypeTablesWriter,
    part=PART,
    selected_members=_members,
    describe=_describe,
    readme=(ReadmeSection("schema", 35, _readme_lines),),
)
