"""``documentation/metadata.json``: project, export time, options, counts and software versions."""

from __future__ import annotations

from typing import Any

from .base import NoImageWriter, OutputFormat, WriterContext

MEMBER = "documentation/metadata.json"


class MetadataWriter(NoImageWriter):
    """Writes metadata.json from the final summary."""

    def __init__(self, ctx: WriterContext) -> None:
        self.ctx = ctx

    def finish(self, summary: Any) -> None:
        """Write metadata.json."""
        self.ctx.zip.add_bytes(MEMBER, summary.metadata_json())


FORMAT = OutputFormat(
    name="metadata",
    chosen_by="docs",
    open_writer=MetadataWriter,
    members=(MEMBER,),
    describe=lambda summary: {
        MEMBER: "project, export time, content options, counts and software versions (machine-readable)"
    },
)
