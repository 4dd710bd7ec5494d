"""What the metrics files share: the per-image metric rows, header names, value rules and the README block.

The four files (``metrics/metrics.csv|xlsx|json|parquet``) are declared in :mod:`.metrics_csv`,
:mod:`.metrics_xlsx`, :mod:`.metrics_json` and :mod:`.metrics_parquet`. Each streaming writer takes a
binary file object, writes its header when constructed, accepts rows with ``write_rows`` (dicts keyed
by ``KEY_COLUMNS + METRIC_COLUMNS``, as made by :func:`ray_export.metrics.image_metric_rows`) and finishes
the file with ``close``, which leaves the file object open; ``abort`` gives up instead and removes any
temporary files. The bytes depend only on the rows (not on how they were split into calls), the scale
and the given creation time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, Protocol

import pyarrow as pa

from ..metrics import INTEGER_METRICS, KEY_COLUMNS, METRIC_COLUMNS, header_name, metric_units
from ..output_files import spool_file
from ..project_types.base import decode_type_rows
from ..statistics import metric_float, summary_statistics  # noqa: F401 - the metrics files' value rules
from .base import ImagePart, OutputFormat, ReadmeGroup, ReadmeSection, WriterContext

ALL_COLUMNS: list[str] = KEY_COLUMNS + METRIC_COLUMNS
METRICS_FOLDER = "metrics/"

#: One metric row: the key columns, then every metric (``holes`` an integer, the others float64).
METRIC_ROW_TYPE = pa.struct(
    [("image_id", pa.string()), ("image_name", pa.string()), ("number", pa.int64())]
    + [(name, pa.int64() if name in INTEGER_METRICS else pa.float64()) for name in METRIC_COLUMNS]
)

#: Filled by the metrics stage: the image's metric rows; shared by every metrics file.
PART = ImagePart(stage="metrics", column="metric_rows", type=pa.list_(METRIC_ROW_TYPE))


def header_names(scaled: bool) -> list[str]:
    """Column headers with units (CSV and XLSX)."""
    units = metric_units(scaled)
    return KEY_COLUMNS + [header_name(name, units[name]) for name in METRIC_COLUMNS]


def metric_int(value: Any) -> int | None:
    """An integer metric value, or ``None``."""
    return None if value is None else int(value)


def scale_value(scale_um_per_px: float | None) -> float | None:
    """The scale as a float, or ``None``."""
    return None if scale_um_per_px is None else float(scale_um_per_px)


class RowsWriter(Protocol):
    """A streaming metrics-file writer."""

    def write_rows(self, rows: list[dict]) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class MetricsFileWriter:
    """The lifecycle around one streaming metrics-file writer: a spool file, rows per image, the member."""

    def __init__(self, ctx: WriterContext, member: str, make: Callable[[BinaryIO, WriterContext], RowsWriter]) -> None:
        self.ctx = ctx
        self.member = member
        self.file = spool_file(ctx.spool)
        try:
            self.rows = make(self.file, ctx)
        except BaseException:
            self.file.close()
            raise

    def add(self, row: Mapping[str, Any]) -> None:
        """Append the image's metric rows (and, for a writer that holds them too, its type tables' rows)."""
        if row["metric_rows"]:
            self.rows.write_rows(row["metric_rows"])
        type_rows = row.get("type_rows")
        if type_rows and hasattr(self.rows, "write_type_rows"):
            self.rows.write_type_rows(decode_type_rows(type_rows))

    def finish(self, summary: Any) -> None:
        """Finish the file and add it to the ZIP."""
        self.rows.close()
        self.ctx.zip.add_file(self.member, self.file)
        self.file.close()

    def abort(self) -> None:
        """Give up the file."""
        with contextlib.suppress(Exception):
            self.rows.abort()
        with contextlib.suppress(Exception):
            self.file.close()


def _readme_head(summary: Any) -> list[str]:
    return ["### Metrics", "", "```python", "import pandas as pd", ""]


def _readme_tail(summary: Any) -> list[str]:
    return [
        "```",
        "",
        "One row per closed object whose `complete` is not `false`, in (image index, object number) "
        "order, keyed by `image_id`, `image_name` (= the COCO `file_name`) and `number`. Values are "
        "unrounded float64 computed from the exact polygons. CSV and XLSX headers carry the unit, e.g. "
        f"`area ({summary.area_unit})`; JSON and Parquet use the bare column names and give the units "
        "beside them. A value that is undefined (zero area, perimeter or Feret width) is empty in CSV "
        "and XLSX and null in JSON and Parquet. `metrics_guide.md` gives every formula.",
        "",
    ]


#: The metrics files' loading hints share one code block.
README_GROUP = ReadmeGroup(head=_readme_head, tail=_readme_tail)


def metrics_file_format(
    choice: str,
    make: Callable[[BinaryIO, WriterContext], RowsWriter],
    description: str,
    load_lines: Callable[[str], list[str]],
    readme_order: float,
    option_rank: int,
) -> OutputFormat:
    """The declaration of one metrics file ``metrics/metrics.<choice>``.

    ``load_lines`` gets the member path and gives the lines of the shared pandas code block.
    """
    member = f"{METRICS_FOLDER}metrics.{choice}"
    return OutputFormat(
        name=f"metrics_{choice}",
        chosen_by="metrics",
        choice=choice,
        open_writer=lambda ctx: MetricsFileWriter(ctx, member, make),
        members=(member,),
        part=PART,
        describe=lambda summary: {member: description},
        readme=(ReadmeSection("loading", readme_order, lambda summary: load_lines(member), README_GROUP),),
        option_rank=option_rank,
        # the workbook also holds the project type's sheets; the other files only the per-object table
        requires=None if choice == "xlsx" else _keeps_object_metrics,
    )


def _keeps_object_metrics(selection: Any) -> bool:
    return bool(selection.object_metrics)
