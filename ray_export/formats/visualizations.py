"""Each image with its objects drawn and numbered: ``visualizations/<stem>_viz.<ext>``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from .base import ImagePart, OutputFormat, WriterContext, reused_entry

FORMAT_NAME = "visualizations"
FOLDER = "visualizations/"

#: Filled by the visualize stage: the encoded overlay (null when nothing to draw or it failed).
PART = ImagePart(stage="visualize", column="visualization", type=pa.binary())

#: File extension of each visualization format.
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def visualization_member(stem: str, extension: str) -> str:
    """ZIP path of a visualization; ``extension`` includes the dot (``.png``, ``.jpg``, ``.webp``)."""
    return f"{FOLDER}{stem}_viz{extension}"


class VisualizationsWriter:
    """Stores each drawn visualization."""

    def __init__(self, ctx: WriterContext) -> None:
        self.ctx = ctx

    def add(self, row: Mapping[str, Any]) -> None:
        """Store the visualization when one was drawn (copied as stored in a previous export when the
        image did not change)."""
        member = visualization_member(row["stem"], self.ctx.viz_extension)
        previous = reused_entry(row, FORMAT_NAME)
        if previous is not None:
            self.ctx.zip.add_stored_entry(member, previous)
            self.ctx.counts["visualizations"] += 1
        elif row["visualization"] is not None:
            self.ctx.zip.add_bytes(member, row["visualization"])
            self.ctx.counts["visualizations"] += 1

    def finish(self, summary: Any) -> None:
        """Nothing after the last image."""

    def abort(self) -> None:
        """Nothing to remove."""


def _describe(summary: Any) -> dict[str, str]:
    kinds = summary.members if isinstance(summary.members, Mapping) else {}
    viz = summary.content_options.get("visualization")
    viz_format = str(kinds.get("visualization_format") or (viz or {}).get("format") or "png")
    extension = EXTENSIONS.get(viz_format, viz_format)
    return {
        FOLDER: (
            f"`<stem>_viz.{extension}`: each image with its objects drawn and numbered"
            + summary.files_note("visualizations")
            + "; images without objects or polylines, or that did not decode, have none"
        )
    }


FORMAT = OutputFormat(
    name=FORMAT_NAME,
    chosen_by="visualizations",
    open_writer=VisualizationsWriter,
    folder=FOLDER,
    folder_count="visualizations",
    part=PART,
    describe=_describe,
    counts=("visualizations",),
)
