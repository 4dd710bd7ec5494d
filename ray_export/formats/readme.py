"""``documentation/README.md``: what the ZIP holds and how to load each format."""

from __future__ import annotations

from typing import Any

from .base import NoImageWriter, OutputFormat, WriterContext

MEMBER = "documentation/README.md"


class ReadmeWriter(NoImageWriter):
    """Writes the README from the final summary."""

    def __init__(self, ctx: WriterContext) -> None:
        self.ctx = ctx

    def finish(self, summary: Any) -> None:
        """Write the README."""
        self.ctx.zip.add_bytes(MEMBER, summary.readme_markdown().encode("utf-8"))


FORMAT = OutputFormat(
    name="readme",
    chosen_by="docs",
    open_writer=ReadmeWriter,
    members=(MEMBER,),
    describe=lambda summary: {MEMBER: "this file"},
)
