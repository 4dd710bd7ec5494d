"""The table of output formats, in ZIP order, and the result schema between the stages and the writer.

Per image the writers run in table order (``images/``, ``visualizations/``, ``labels/``); after the last
image each writer finishes in table order, so the aggregated members follow it too. The annotate stage,
the ZIP assembler and the README iterate this table; the option lists of annotation and metrics formats
are read from it (:func:`annotation_format_names`, :func:`metric_format_names`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import pyarrow as pa

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


def manifest_part_fields(formats: Iterable[OutputFormat]) -> list[pa.Field]:
    """The per-image parts the manifest keeps: those of formats without a per-image folder that are made
    by the annotate or metrics stage (they feed aggregated members), each column once."""
    fields: dict[str, pa.Field] = {}
    for fmt in formats:
        part = fmt.part
        if part is not None and not fmt.folder and part.stage in ("annotate", "metrics"):
            fields.setdefault(part.column, pa.field(part.column, part.type))
    return list(fields.values())


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
    try:
        yield fmt
    finally:
        FORMATS.remove(fmt)
