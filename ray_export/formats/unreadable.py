"""Originals that were read but do not decode, kept byte for byte outside ``images/``: ``unreadable/<file name>``.

Dataset loaders open every file under ``images/``; an undecodable one would stop them. It is kept here
instead, and left out of COCO and YOLO (the JSON export still lists its row).
"""

from __future__ import annotations

from .originals import stored_files_format

FOLDER = "unreadable/"


FORMAT = stored_files_format(
    "unreadable", FOLDER, decodable=False, count="unreadable_files", expected=False,
    description="original files that could not be decoded as images, byte for byte{files}; not in COCO or "
    "`labels/`, listed in the JSON export and the report (`image_decode_failed`)",
)  # fmt: skip
