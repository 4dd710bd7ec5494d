"""Problem codes recorded in ``export_report.json``.

Every per-image problem carries one of the fixed codes below, the stage that found it and a
human-readable message. Per-image problems never fail an export.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

#: code -> one-line description (documented in the ZIP's README and export_report.json docs).
PROBLEM_CODES: dict[str, str] = {
    # polygon JSON (stage "parse")
    "polygons_invalid_json": "segmentations.polygons is not valid JSON; the image is exported without objects",
    "polygons_unexpected_shape": "the polygon JSON is neither an array nor an object with a 'polygons' array",
    "element_not_object": "an element of the polygon array is not a JSON object; it was dropped",
    "element_unknown_type": "an element has a missing or unknown 'type' (and is not a polyline); it was dropped",
    "points_not_finite": "points with missing or non-finite coordinates were dropped from an element",
    "polygon_too_few_points": "a closed polygon kept fewer than 3 points (a polyline fewer than 2); it was dropped",
    "hole_parent_invalid": "a hole's parent_id names no valid external polygon; ownership was decided by containment",
    "hole_orphan": "a hole lies inside no external polygon; it is kept in the JSON export only",
    "polygon_id_duplicate": "several external polygons share one id; holes naming it were given by containment",
    "text_invalid_unicode": "a text attribute held invalid Unicode (a lone surrogate); it was replaced by U+FFFD",
    "polyline_not_in_yolo": "the image has polylines, which YOLO-seg cannot hold; they were left out of its labels",
    "polyline_not_in_coco": "the image has polylines, which are not instance masks; they were left out of COCO",
    # image size and files (stages "read", "copy", "annotate")
    "image_size_unknown": "no width/height in the database and the image could not be decoded; no masks or labels",
    "image_size_mismatch": "the size stored in the database differs from the decoded image; the database wins",
    "file_missing": "the original file does not exist under the images root",
    "file_unreadable": "the original file exists but could not be read",
    "path_outside_root": "originalPath escapes the images root (directly or through a symlink); not read",
    "file_not_regular": "originalPath names a named pipe, socket, device or folder, not a regular file; not read",
    "file_too_large": "the original file is larger than the file size limit (max_file_bytes); not read",
    "file_read_timeout": "reading the original file took longer than the time limit (read_timeout_s); given up",
    "image_decode_failed": "the original file could not be decoded as an image",
    "image_too_large": "the image header's width x height exceeds the pixel limit (max_image_pixels); the file is "
    "kept but not decoded, so it has no visualization",
    "text_invalid_utf8": "a database text value (name, originalPath or polygons) held invalid UTF-8; the bad bytes "
    "were replaced by U+FFFD",
    # naming
    "member_renamed": "the file name was changed (made safe, or given a `_N` suffix to keep stems unique); "
    "the message names both",
    # metrics and rendering
    "metric_undefined": "a metric is undefined for this object (zero area, perimeter or Feret width); left empty",
    "annotation_failed": "an object could not be converted to an annotation and was left out of it",
    "render_failed": "the visualization could not be drawn or encoded",
    "stage_failed": "a stage raised an unexpected error for this image; its outputs of that stage are missing",
}


#: code -> description of the codes only project types produce (registered by
#: :mod:`ray_export.project_types.registry`); an export's report lists those of its own type.
TYPE_PROBLEM_CODES: dict[str, str] = {}


def register_problem_codes(codes: dict[str, str] | Any) -> None:
    """Accept a project type's own problem codes."""
    for code, description in dict(codes).items():
        if code not in PROBLEM_CODES:
            TYPE_PROBLEM_CODES[code] = str(description)


#: codes that mean a stage could not do its work for an image (counted as "failed" in the progress);
#: the others are warnings about the data.
FAILURE_CODES: frozenset[str] = frozenset(
    {
        "file_missing",
        "file_unreadable",
        "file_not_regular",
        "file_too_large",
        "file_read_timeout",
        "path_outside_root",
        "image_decode_failed",
        "polygons_invalid_json",
        "polygons_unexpected_shape",
        "annotation_failed",
        "render_failed",
        "stage_failed",
    }
)


_OBJECT_REPR = re.compile(r"<([^<>]*?) at 0x[0-9A-Fa-f]+>")
_ADDRESS = re.compile(r"\s(?:at\s)?0x[0-9A-Fa-f]{6,}\b")


def clean_message(text: str) -> str:
    """``text`` without memory addresses: ``<_io.BytesIO object at 0x7f…>`` -> ``<_io.BytesIO object>``,
    any other ``at 0x…`` / `` 0x…`` address of six or more hex digits dropped. The same failure then
    always gives the same message."""
    return _ADDRESS.sub("", _OBJECT_REPR.sub(r"<\1>", str(text)))


@dataclass(frozen=True)
class Problem:
    """One problem found for one image; its message is cleaned by :func:`clean_message`."""

    code: str
    stage: str
    message: str

    def __post_init__(self) -> None:
        if self.code not in PROBLEM_CODES and self.code not in TYPE_PROBLEM_CODES:
            raise ValueError(f"unknown problem code {self.code!r}")
        object.__setattr__(self, "message", clean_message(self.message))

    def to_dict(self) -> dict[str, str]:
        """JSON form used in export_report.json."""
        return {"code": self.code, "stage": self.stage, "message": self.message}


#: Arrow type of one image's problems in the stage results.
PROBLEM_TYPE = pa.struct([("code", pa.string()), ("stage", pa.string()), ("message", pa.string())])
PROBLEMS_TYPE = pa.list_(PROBLEM_TYPE)
