"""The original image files, byte for byte: ``images/<file name>`` (only files that decode; see
:mod:`.unreadable` for the others)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from .base import ImagePart, OutputFormat, WriterContext, reused_entry

FOLDER = "images/"

#: Filled by the copy stage: the file's bytes (null when not read or not kept).
PART = ImagePart(stage="copy", column="original", type=pa.binary())


def image_member(file_name: str) -> str:
    """ZIP path of an original image."""
    return f"{FOLDER}{file_name}"


class StoredFileWriter:
    """Stores each original that was read under ``folder`` when whether it decodes is ``decodable``."""

    def __init__(self, ctx: WriterContext, name: str, folder: str, decodable: bool, count: str) -> None:
        self.ctx = ctx
        self.name = name
        self.folder = folder
        self.decodable = decodable
        self.count = count

    def add(self, row: Mapping[str, Any]) -> None:
        """Store the original when it was read and its decoding matches (copied as stored in a previous
        export when the image did not change)."""
        if bool(row["decodable"]) != self.decodable:
            return
        previous = reused_entry(row, self.name)
        if previous is not None:
            self.ctx.counts[self.count] += 1
            self.ctx.zip.add_stored_entry(f"{self.folder}{row['file_name']}", previous)
        elif row["original"] is not None:
            self.ctx.counts[self.count] += 1
            self.ctx.zip.add_bytes(f"{self.folder}{row['file_name']}", row["original"])

    def finish(self, summary: Any) -> None:
        """Nothing after the last image."""

    def abort(self) -> None:
        """Nothing to remove."""


def stored_files_format(name: str, folder: str, decodable: bool, count: str, description: str,
                        expected: bool) -> OutputFormat:  # fmt: skip
    """The declaration of a folder of originals: those that decode (``images/``) or those that do not."""

    def describe(summary: Any) -> dict[str, str]:
        return {folder: description.format(files=summary.files_note(count))}

    return OutputFormat(
        name=name,
        chosen_by="originals",
        open_writer=lambda ctx: StoredFileWriter(ctx, name, folder, decodable=decodable, count=count),
        folder=folder,
        folder_count=count,
        folder_expected=expected,
        part=PART,
        describe=describe,
        counts=(count,),
    )


FORMAT = stored_files_format(
    "originals", FOLDER, decodable=True, count="images_with_files", expected=True,
    description="the original image files, byte for byte{files}; COCO and `labels/` reference exactly these images",
)  # fmt: skip
