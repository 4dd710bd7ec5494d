"""``documentation/export_report.json``, always written: every per-image problem and export-level note."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import IO, Any

from ..json_text import document_bytes
from ..problems import PROBLEM_CODES, Problem
from ..project_types.registry import project_type_named
from .base import OutputFormat, WriterContext

MEMBER = "documentation/export_report.json"

#: Export-level note codes of ``export_report.json`` (``notes``); other codes are allowed as well.
NOTE_CODES: dict[str, str] = {
    "scale_pixels": "no usable common pixelSizeUm (missing, differing or out of range): metrics are in pixels",
    "unknown_image_ids": "some requested image ids do not exist or belong to another project (see `unknown_image_ids`)",
    "note": "any other export-level remark (free text)",
}


class ExportReportWriter:
    """Collects per-image problems and export-level notes; writes ``export_report.json``.

    Only images with at least one problem are listed. Images come out in index order whatever the
    order they were added in; the problems of an image keep the order they were added in (adding the
    same index twice appends).
    """

    def __init__(self, type_codes: Mapping[str, str] | None = None) -> None:
        #: the problem codes of the export's project type, listed after the common ones
        self._type_codes = dict(type_codes or {})
        self._images: dict[int, dict[str, Any]] = {}
        self._unknown_ids: dict[str, None] = {}
        self._notes: list[dict[str, str]] = []

    @property
    def problem_count(self) -> int:
        """Per-image problems added so far."""
        return sum(len(entry["problems"]) for entry in self._images.values())

    @property
    def image_count(self) -> int:
        """Images with at least one problem."""
        return len(self._images)

    def add_image(self, index: int, image_id: str, image_name: str, problems: Iterable[Problem]) -> None:
        """Record the problems of the image with export ``index`` (nothing is recorded without problems)."""
        problem_dicts = [problem.to_dict() for problem in problems]
        if not problem_dicts:
            return
        entry = self._images.get(int(index))
        if entry is None:
            entry = {"index": int(index), "image_id": str(image_id), "image_name": str(image_name), "problems": []}
            self._images[int(index)] = entry
        entry["problems"].extend(problem_dicts)

    def add_unknown_image_ids(self, ids: Iterable[str]) -> None:
        """Record requested image ids that are unknown or belong to another project (listed sorted)."""
        for image_id in ids:
            self._unknown_ids[str(image_id)] = None

    def add_note(self, code_or_text: str, message: str | None = None) -> None:
        """Record an export-level note, kept in added order.

        ``add_note("scale_pixels", "...")`` records a code (see :data:`NOTE_CODES`) and a message;
        ``add_note("scale_pixels")`` uses the code's standard description; a single free text that is
        no known code is recorded with code ``note``.
        """
        text = str(code_or_text)
        if message is not None:
            self._notes.append({"code": text, "message": str(message)})
        elif text in NOTE_CODES:
            self._notes.append({"code": text, "message": NOTE_CODES[text]})
        else:
            self._notes.append({"code": "note", "message": text})

    def report(self, counts: Mapping[str, Any]) -> dict[str, Any]:
        """The report as a mapping; ``counts`` gives images, objects and polylines_not_in_yolo.

        ``counts.problems`` is always the number of problems listed in the report.
        """
        return {
            "images": [self._images[index] for index in sorted(self._images)],
            "unknown_image_ids": sorted(self._unknown_ids),
            "notes": list(self._notes),
            "counts": {
                "images": int(counts.get("images", 0)),
                "objects": int(counts.get("objects", 0)),
                "polylines_not_in_yolo": int(counts.get("polylines_not_in_yolo", 0)),
                "polylines_not_in_coco": int(counts.get("polylines_not_in_coco", 0)),
                "problems": self.problem_count,
            },
            "problem_codes": {**PROBLEM_CODES, **self._type_codes},
        }

    def write(self, fileobj: IO[bytes], counts: Mapping[str, Any]) -> dict[str, Any]:
        """Write the report to a binary file object and return it as a mapping."""
        report = self.report(counts)
        fileobj.write(document_bytes(report, sort_keys=False))
        return report


class ExportReportFormatWriter:
    """Collects each image's problems and writes the report at the end."""

    def __init__(self, ctx: WriterContext) -> None:
        self.ctx = ctx
        self.report = ExportReportWriter(project_type_named(ctx.selection.project_type).problem_codes)
        self.report.add_unknown_image_ids(list(ctx.unknown_image_ids))
        for note in ctx.notes:
            self.report.add_note(note)

    def add(self, row: Mapping[str, Any]) -> None:
        """Record the image's problems (nothing when it has none)."""
        if row["problems"]:
            found = [Problem(p["code"], p["stage"], p["message"]) for p in row["problems"]]
            self.report.add_image(row["index"], row["image_id"], row["file_name"], found)

    def finish(self, summary: Any) -> None:
        """Write the report."""
        self.ctx.spool_member(MEMBER, lambda fh: self.report.write(fh, summary.counts))

    def abort(self) -> None:
        """Nothing to remove."""


FORMAT = OutputFormat(
    name="export_report",
    chosen_by="always",
    open_writer=ExportReportFormatWriter,
    members=(MEMBER,),
    describe=lambda summary: {MEMBER: "every problem found, per image, and export-level notes (always present)"},
)
