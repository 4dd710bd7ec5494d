"""Originals that were read but do not decode, kept byte for byte outside ``images/``: ``unreadable/<file name>``.

Dataset loaders open every file under ``images/``; an undecodable one would stop them. It is kept here
instead, and left out of COCO and YOLO (the JSON export still lists its row).
"""

from __future__ import annotations

from typing import Any

from .base import OutputFormat
from .originals import PART, StoredFileWriter

FOLDER = "unreadable/"


def _describe(summary: Any) -> dict[str, str]:
    return {
        FOLDER: "original files that could not be decoded as images, byte for byte"
        + summary.files_note("unreadable_files")
        + "; not in COCO or `labels/`, listed in the JSON export and the report (`image_decode_failed`)"
    }


FORMAT = OutputFormat(
    name="unreadable",
    chosen_by="originals",
    open_writer=lambda ctx: StoredFileWriter(ctx, FOLDER, decodable=False, count="unreadable_files"),
    folder=FOLDER,
    folder_count="unreadable_files",
    folder_expected=False,
    part=PART,
    describe=_describe,
    counts=("unreadable_files",),
)
