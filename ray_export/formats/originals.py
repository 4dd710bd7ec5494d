"""The original image files, byte for byte: ``images/<file name>`` (only files that decode; see
:mod:`.unreadable` for the others)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from .base import ImagePart, OutputFormat, WriterContext

FOLDER = "images/"

#: Filled by the copy stage: the file's bytes (null when not read or not kept).
PART = ImagePart(stage="copy", column="original", type=pa.binary())


def image_member(file_name: str) -> str:
    """ZIP path of an original image."""
    return f"{FOLDER}{file_name}"


class StoredFileWriter:
    """Stores each original that was read under ``folder`` when whether it decodes is ``decodable``."""

    def __init__(self, ctx: WriterContext, folder: str, decodable: bool, count: str) -> None:
        self.ctx = ctx
        self.folder = folder
        self.decodable = decodable
        self.count = count

    def add(self, row: Mapping[str, Any]) -> None:
        """Store the original when it was read and its decoding matches."""
        if row["original"] is not None and bool(row["decodable"]) == self.decodable:
            self.ctx.counts[self.count] += 1
            self.ctx.zip.add_bytes(f"{self.folder}{row['file_name']}", row["original"])

    def finish(self, summary: Any) -> None:
        """Nothing after the last image."""

    def abort(self) -> None:
        """Nothing to remove."""


def _describe(summary: Any) -> dict[str, str]:
    return {
        FOLDER: "the original image files, byte for byte" + summary.files_note("images_with_files")
        + "; COCO and `labels/` reference exactly these images"
    }


FORMAT = OutputFormat(
    name="originals",
    chosen_by="originals",
    open_writer=lambda ctx: StoredFileWriter(ctx, FOLDER, decodable=True, count="images_with_files"),
    folder=FOLDER,
    folder_count="images_with_files",
    part=PART,
    describe=_describe,
    counts=("images_with_files",),
)
