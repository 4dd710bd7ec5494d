"""The table of output formats, in ZIP order, and the result schema between the stages and the writer.

Per image the writers run in table order (``images/``, ``visualizations/``, ``labels/``); after the last
image each writer finishes in table order, so the aggregated members follow it too. The annotate stage,
the ZIP assembler and the README iterate this table; the option lists of annotation and metrics formats
offered match the names the options declare (:mod:`ray_export.format_names`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import pyarrow as pa

from ..format_names import ANNOTATION_FORMATS, METRIC_FORMATS, add_format_choice, remove_format_choice
from ..problems import PROBLEMS_TYPE
from ..reuse import ALL_REUSED, MEMBERS_REUSED, REUSED_ENTRIES_TYPE
from . import (
    coco,
    export_report,
    json_export,
    manifest,
    metadata,
    metrics_csv,
    metrics_guide,
    metrics_json,
    metrics_parquet,
    metrics_xlsx,
    originals,
    readme,
    type_tables,
    unreadable,
    visualizations,
    yolo,
)
from .base import OutputFormat, Selection

FORMATS: list[OutputFormat] = [
    originals.FORMAT,
    unreadable.FORMAT,
    visualizations.FORMAT,
    coco.FORMAT,
    json_export.FORMAT,
    yolo.FORMAT,
    metrics_csv.FORMAT,
    metrics_xlsx.FORMAT,
    metrics_json.FORMAT,
    metrics_parquet.FORMAT,
    type_tables.FORMAT,
    readme.FORMAT,
    metrics_guide.FORMAT,
    metadata.FORMAT,
    export_report.FORMAT,
    manifest.FORMAT,
]

#: Columns every result row carries to the writer, whatever the formats.
BASE_RESULT_FIELDS: tuple[pa.Field, ...] = (
    pa.field("index", pa.int64()),
    pa.field("image_id", pa.string()),
    pa.field("file_name", pa.string()),
    pa.field("stem", pa.string()),
    pa.field("width", pa.int64()),
    pa.field("height", pa.int64()),
    # true when the original was read and decodes; null when it was not read
    pa.field("decodable", pa.bool_()),
    pa.field("n_objects", pa.int64()),
    pa.field("n_polylines", pa.int64()),
    pa.field("problems", PROBLEMS_TYPE),
    # incremental export (see ray_export.reuse): the image's fingerprints, how much of it was taken from
    # a previous export, why it was computed instead, and the stored entries read back from that export
    pa.field("member_fingerprint", pa.string()),
    pa.field("parts_fingerprint", pa.string()),
    pa.field("reuse_level", pa.int8()),
    pa.field("reuse_reason", pa.string()),
    pa.field("reused_entries", REUSED_ENTRIES_TYPE),
)


def _check_declared_names() -> None:
    """The table offers exactly the format names the options declare (ray_export.format_names)."""
    for option, declared in (("annotations", ANNOTATION_FORMATS), ("metrics", METRIC_FORMATS)):
        if _option_names(option) != declared:
            raise RuntimeError(f"the {option} formats of the table, {_option_names(option)}, are not {declared}")


def format_named(name: str) -> OutputFormat:
    """The registered format called ``name``."""
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise KeyError(f"no output format {name!r}")


def _option_names(chosen_by: str) -> tuple[str, ...]:
    listed = [fmt for fmt in FORMATS if fmt.chosen_by == chosen_by]
    return tuple(fmt.choice for fmt in sorted(listed, key=lambda fmt: fmt.option_rank))


def annotation_format_names() -> tuple[str, ...]:
    """The values of the ``annotations`` option, in their listed order."""
    return _option_names("annotations")


def metric_format_names() -> tuple[str, ...]:
    """The values of the ``metrics`` option, in their listed order."""
    return _option_names("metrics")


def selected_formats(selection: Selection) -> list[OutputFormat]:
    """The formats an export with these content options writes, in table order."""
    return [fmt for fmt in FORMATS if fmt.is_selected(selection)]


def result_schema(formats: Iterable[OutputFormat]) -> pa.Schema:
    """The columns the writer needs from the stages for these formats (each part's column once)."""
    fields = list(BASE_RESULT_FIELDS)
    for fmt in formats:
        if fmt.part is not None and fmt.part.column not in {f.name for f in fields}:
            fields.append(pa.field(fmt.part.column, fmt.part.type))
    return pa.schema(fields)


def member_reuse_levels(formats: Iterable[OutputFormat]) -> dict[str, int]:
    """For each format with a per-image folder, the reuse level at which its member is copied from a
    previous export: originals and visualizations with the image's members, members made from
    annotation parts only when those are reused too."""
    return {
        fmt.name: MEMBERS_REUSED if fmt.part.stage in ("copy", "visualize") else ALL_REUSED
        for fmt in formats
        if fmt.folder and fmt.part is not None
    }


class ResultSchemaError(ValueError):
    """A result batch lacks a column the writer needs, or has it with another type."""


def check_result_schema(schema: pa.Schema, expected: pa.Schema) -> None:
    """Raise :class:`ResultSchemaError` naming the first missing or mistyped column."""
    for field in expected:
        index = schema.get_field_index(field.name)
        if index < 0:
            raise ResultSchemaError(f"result column {field.name!r} is missing (columns: {', '.join(schema.names)})")
        if not schema.field(index).type.equals(field.type):
            raise ResultSchemaError(
                f"result column {field.name!r} has type {schema.field(index).type}, expected {field.type}"
            )


@contextlib.contextmanager
def registered(fmt: OutputFormat, after: str | None = None) -> Iterator[OutputFormat]:
    """Add ``fmt`` to the table (after the format named ``after``, else before the documents) while inside."""
    if any(existing.name == fmt.name for existing in FORMATS):
        raise ValueError(f"an output format {fmt.name!r} is already registered")
    position = FORMATS.index(format_named(after)) + 1 if after else FORMATS.index(readme.FORMAT)
    FORMATS.insert(position, fmt)
    if fmt.choice:
        add_format_choice(fmt.chosen_by, fmt.choice)
    try:
        yield fmt
    finally:
        FORMATS.remove(fmt)
        if fmt.choice:
            remove_format_choice(fmt.chosen_by, fmt.choice)


_check_declared_names()
