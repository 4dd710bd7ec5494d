"""``documentation/export_report.json``, always written: every per-image problem and export-level note."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..problems import Problem
from .base import OutputFormat, WriterContext

MEMBER = "documentation/export_report.json"


class ExportReportFormatWriter:
    """Collects each image's problems and writes the report at the end."""

    def __init__(self, ctx: WriterContext) -> None:
        from ..documents import ExportReportWriter

        self.ctx = ctx
        self.report = ExportReportWriter()
        self.report.add_unknown_image_ids(list(ctx.unknown_image_ids))
        for note in ctx.notes:
            self.report.add_note(note)

    def add(self, row: Mapping[str, Any]) -> None:
        """Record the image's problems (nothing when it has none)."""
        if row["problems"]:
            found = [Problem(p["code"], p["stage"], p["message"]) for p in row["problems"]]
            self.report.add_image(row["index"], row["image_id"], row["file_name"], found)

    def finish(self, summary: Any) -> None:
        """Write the report."""
        self.ctx.spool_member(MEMBER, lambda fh: self.report.write(fh, summary.counts))

    def abort(self) -> None:
        """Nothing to remove."""


FORMAT = OutputFormat(
    name="export_report",
    chosen_by="always",
    open_writer=ExportReportFormatWriter,
    members=(MEMBER,),
    describe=lambda summary: {MEMBER: "every problem found, per image, and export-level notes (always present)"},
)
