"""What a project type declares: its tables (columns with their kind, a per-image row function, an
optional whole-table step), the columns its read needs, its formulas, problem codes and labels.

A type module (``sperm.py``, ``microcapsule.py``, ...) declares one :class:`ProjectType` as ``TYPE``;
:mod:`ray_export.project_types.registry` lists them, one line each. Everything here is pure: the metrics
stage calls :meth:`TypeTable.rows` per image (:func:`image_type_rows`), the writers put each table in
every chosen metrics format (:mod:`ray_export.formats.type_tables`, and sheets of ``metrics.xlsx``).

Column kinds say how a value scales and which unit its header carries: ``length`` (× scale; ``px`` or
``um``), ``area`` (× scale²; ``px^2`` or ``um^2``), and the unitless kinds ``unitless``, ``percent``,
``fraction``, ``intensity`` (floats), ``int``, ``count`` (integers) and ``text``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..polygons import ImagePolygons
from ..problems import Problem

#: Kinds whose values scale with the export's scale, and by which power.
SCALED_KINDS: dict[str, int] = {"length": 1, "area": 2}
FLOAT_KINDS = frozenset({"length", "area", "unitless", "percent", "fraction", "intensity"})
INT_KINDS = frozenset({"int", "count"})
TEXT_KINDS = frozenset({"text"})
#: values kept as they are (lists, mappings): only in tables that are not written as files (``hidden``)
JSON_KINDS = frozenset({"json"})
KINDS = FLOAT_KINDS | INT_KINDS | TEXT_KINDS | JSON_KINDS
#: The key columns every type table starts with.
KEY_COLUMNS: tuple[tuple[str, str], ...] = (("image_id", "text"), ("image_name", "text"))


@dataclass(frozen=True)
class TypeImage:
    """What a table's row function is given for one image: its ids, size, parsed polygons, the extra
    columns the type's read fetched (``fields``, e.g. ``seg_model``, ``created_at``), what the export
    knows about the project (``context``: see ``ProjectType.read_context``) and, for a type that measures
    pixels, the original file's bytes (None when they could not be read)."""

    index: int
    image_id: str
    file_name: str
    width: int
    height: int
    parsed: ImagePolygons
    fields: Mapping[str, Any] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)
    original: bytes | None = None


@dataclass(frozen=True)
class TypeTable:
    """One table of a project type: ``metrics/<name>.csv|json|parquet`` and the XLSX sheet ``sheet``.

    ``columns`` follow the key columns, ``(name, kind)`` each. ``rows`` gives an image's rows (values in
    pixels, without the key columns) and its problems; ``series`` (optional) turns the rows of every
    image, in export order, into the final rows (a time series needs the first image's value);
    ``summary_sheet`` adds an XLSX sheet of count, mean, std, min, median and max per float column.
    A table whose ``columns`` name ``image_id`` and ``image_name`` itself keeps that order (a time
    series starts with its ``order``); one with ``keys`` false has no key columns (a summary per video).
    ``chart`` draws the final rows as a PNG, written as ``chart_member`` and embedded in the table's XLSX
    sheet. ``derived_from`` names an earlier table with a whole-table step whose final rows ``series``
    turns into this table's rows. A ``hidden`` table is not written as a table: its final rows feed
    ``members``, which gives ZIP members (name, bytes) from them and the export's context.
    """

    name: str
    sheet: str
    columns: tuple[tuple[str, str], ...]
    rows: Callable[[TypeImage], tuple[list[dict[str, Any]], list[Problem]]]
    description: str
    series: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None
    summary_sheet: str | None = None
    chart: Callable[[list[dict[str, Any]]], bytes] | None = None
    chart_member: str = ""
    keys: bool = True
    derived_from: str = ""
    hidden: bool = False
    members: Callable[[list[dict[str, Any]], Mapping[str, Any]], list[tuple[str, bytes]]] | None = None
    #: the folders ``members`` writes into, with the README's description of each
    member_folders: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.chart is not None and self.series is None:
            raise ValueError(f"table {self.name}: a chart draws the final rows of a table with a whole-table step")
        for name, kind in self.columns:
            if kind not in KINDS:
                raise ValueError(f"table {self.name}: column {name} has an unknown kind {kind!r}")

    @property
    def all_columns(self) -> tuple[tuple[str, str], ...]:
        """Key columns, then the table's own (or the table's own order when it names the keys)."""
        names = {name for name, _ in self.columns}
        if not self.keys or {"image_id", "image_name"} <= names:
            return self.columns
        return KEY_COLUMNS + self.columns

    def units(self, scaled: bool) -> dict[str, str | None]:
        """Each column's unit (None when unitless)."""
        return {name: column_unit(kind, scaled) for name, kind in self.all_columns}

    def header(self, scaled: bool) -> list[str]:
        """Column headers with units, as CSV and XLSX write them."""
        units = self.units(scaled)
        return [name if units[name] is None else f"{name} ({units[name]})" for name, _ in self.all_columns]


@dataclass(frozen=True)
class ProjectType:
    """One SpheroSeg project type (``projects.type``) and what it adds to the ZIP."""

    name: str
    tables: tuple[TypeTable, ...] = ()
    #: heavy-read columns the type needs beyond the default ones (see ``sources.TYPE_READ_COLUMNS``)
    read_columns: tuple[str, ...] = ()
    #: markdown appended to ``documentation/metrics_guide.md``
    formulas: str = ""
    problem_codes: Mapping[str, str] = field(default_factory=dict)
    #: the README's paragraph on what the type adds
    readme: str = ""
    #: the per-object table of SPEC 5 is written
    object_metrics: bool = True
    #: the label prefix of polyline instances on the visualizations (``S``, ``MT``, ``P``)
    polyline_label: str = "P"
    #: the row functions measure the original pixels (the files are read even without originals)
    needs_pixels: bool = False
    #: reads what the type needs to know about the project (``(target, project id) -> dict``, JSON values)
    read_context: Callable[[Any, str], dict[str, Any]] | None = None
    #: the options the type's outputs depend on (option keys; their values join the context)
    options: tuple[str, ...] = ()

    def visible_tables(self) -> tuple[TypeTable, ...]:
        """The tables written as files and sheets."""
        return tuple(table for table in self.tables if not table.hidden)

def column_unit(kind: str, scaled: bool) -> str | None:
    """The unit of a column of ``kind``: ``px``/``um`` for lengths, ``px^2``/``um^2`` for areas."""
    power = SCALED_KINDS.get(kind)
    if power is None:
        return None
    base = "um" if scaled else "px"
    return base if power == 1 else f"{base}^{power}"


def scaled_value(value: Any, kind: str, scale_um_per_px: float | None) -> Any:
    """A row value as the table holds it: floats finite or None, lengths and areas × the scale."""
    if value is None:
        return None
    if kind in JSON_KINDS:
        return value
    if kind in TEXT_KINDS:
        return str(value)
    if kind in INT_KINDS:
        return int(value)
    number = float(value)
    if not math.isfinite(number):
        return None
    power = SCALED_KINDS.get(kind)
    if power is not None and scale_um_per_px is not None:
        number *= float(scale_um_per_px) ** power
    return number


def table_row(table: TypeTable, image_id: str, image_name: str, values: Mapping[str, Any],
              scale_um_per_px: float | None) -> dict[str, Any]:
    """One final row of ``table``: the key columns, then every column scaled by its kind."""
    keys = {"image_id": str(image_id), "image_name": str(image_name)}
    return {
        name: keys[name] if name in keys else scaled_value(values.get(name), kind, scale_um_per_px)
        for name, kind in table.all_columns
    }


def image_type_rows(
    project_type: ProjectType, image: TypeImage, scale_um_per_px: float | None
) -> tuple[str | None, list[Problem]]:
    """Every table's rows of one image as the ``type_rows`` part (JSON text ``{table: [rows]}``, None
    when the type has no tables) and the problems found. A table that fails for an image gets a
    ``stage_failed`` problem and no rows; the other tables are kept."""
    if not project_type.tables:
        return None, []
    out: dict[str, list[dict[str, Any]]] = {}
    problems: list[Problem] = []
    for table in project_type.tables:
        if table.derived_from:  # made from another table's final rows at the end
            continue
        try:
            values, found = table.rows(image)
            out[table.name] = [
                table_row(table, image.image_id, image.file_name, v, scale_um_per_px) for v in values
            ]
            problems.extend(found)
        except Exception as exc:
            out[table.name] = []
            problems.append(Problem("stage_failed", "metrics", f"{table.name}: {type(exc).__name__}: {exc}"))
    return encode_type_rows(out), problems


def encode_type_rows(rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """The ``type_rows`` part as text (floats keep every bit: JSON numbers as Python writes them)."""
    return json.dumps(rows, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def decode_type_rows(text: str | None) -> dict[str, list[dict[str, Any]]]:
    """The ``type_rows`` part back as rows per table (empty for None)."""
    return json.loads(text) if text else {}


def holds_rows(table: TypeTable) -> bool:
    """Whether a writer keeps the table's rows until the end (a whole-table step, or a hidden table)."""
    return not table.derived_from and (table.series is not None or table.hidden)


def final_rows(
    tables: Sequence[TypeTable], held: Mapping[str, list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """The final rows of every table whose rows were held (:func:`holds_rows`) or are derived, in table
    order: the whole-table step applied, derived tables made from their source's final rows."""
    finals: dict[str, list[dict[str, Any]]] = {}
    for table in tables:
        if table.derived_from:
            if table.derived_from not in finals or table.series is None:
                raise ValueError(f"table {table.name} derives from {table.derived_from}, which has no final rows")
            finals[table.name] = table.series(finals[table.derived_from])
        elif holds_rows(table):
            rows = list(held.get(table.name, []))
            finals[table.name] = table.series(rows) if table.series is not None else rows
    return finals
