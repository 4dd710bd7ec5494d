"""Originals that were read but do not decode, kept byte for byte outside ``images/``: ``unreadable/<file name>``.

Dataset loaders open every file under ``images/``; an undecodable one would stop them. It is kept here
instead, and left out of COCO and YOLO (the JSON export still lists its row).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import OutputFormat, WriterContext
from .originals import PART

FOLDER = "unreadable/"


def unreadable_member(file_name: str) -> str:
    """ZIP path of an original that does not decode."""
    return f"{FOLDER}{file_name}"


class UnreadableWriter:
    """Stores each original that was read but does not decode."""

    def __init__(self, ctx: WriterContext) -> None:
        self.ctx = ctx

    def add(self, row: Mapping[str, Any]) -> None:
        """Store the original when it was read and does not decode."""
        if row["original"] is not None and not row["decodable"]:
            self.ctx.counts["unreadable_files"] += 1
            self.ctx.zip.add_bytes(unreadable_member(row["file_name"]), row["original"])

    def finish(self, summary: Any) -> None:
        """Nothing after the last image."""

    def abort(self) -> None:
        """Nothing to remove."""


def _describe(summary: Any) -> dict[str, str]:
    return {
        FOLDER: "original files that could not be decoded as images, byte for byte"
        + summary.files_note("unreadable_files")
        + "; not in COCO or `labels/`, listed in the JSON export and the report (`image_decode_failed`)"
    }


FORMAT = OutputFormat(
    name="unreadable",
    chosen_by="originals",
    open_writer=UnreadableWriter,
    folder=FOLDER,
    folder_count="unreadable_files",
    folder_expected=False,
    part=PART,
    describe=_describe,
    counts=("unreadable_files",),
)
