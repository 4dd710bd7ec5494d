"""``documentation/metrics_guide.md``: every metric's formula and unit (see :mod:`ray_export.metrics`)."""

from __future__ import annotations

from typing import Any

from ..metrics import metrics_guide_markdown
from ..project_types.registry import project_type_named
from .base import NoImageWriter, OutputFormat, WriterContext

MEMBER = "documentation/metrics_guide.md"


class MetricsGuideWriter(NoImageWriter):
    """Writes the metrics guide for the export's scale."""

    def __init__(self, ctx: WriterContext) -> None:
        self.ctx = ctx

    def finish(self, summary: Any) -> None:
        """Write the guide."""
        text = metrics_guide_markdown(self.ctx.scale_um_per_px)
        formulas = project_type_named(self.ctx.selection.project_type).formulas
        if formulas:  # the project type's tables, after the per-object metrics
            text = text.rstrip("\n") + "\n\n" + formulas.strip("\n") + "\n"
        self.ctx.zip.add_bytes(MEMBER, text.encode("utf-8"))


FORMAT = OutputFormat(
    name="metrics_guide",
    chosen_by="docs",
    open_writer=MetricsGuideWriter,
    members=(MEMBER,),
    describe=lambda summary: {MEMBER: "the formula and unit of every metric"},
)
