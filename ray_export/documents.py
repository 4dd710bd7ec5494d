"""The documents the ZIP carries about itself: ``documentation/README.md`` and ``metadata.json``.

Everything here is a pure function of an :class:`ExportSummary`: no clock, host, path or version look-up
happens inside, so the same export gives the same bytes. This module stands above the format table
(:mod:`ray_export.formats.registry`): the README lists what every selected format wrote. The formats
reach these documents only through the summary they are given (:meth:`ExportSummary.readme_markdown`,
:meth:`ExportSummary.metadata_json`). :func:`software_versions` and :func:`format_export_time` are separate helpers for
the caller.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import __version__
from .formats import export_report, registry
from .formats.base import OutputFormat, ReadmeGroup, Selection
from .formats.export_report import NOTE_CODES
from .json_text import document_bytes, json_safe
from .options import VISUALIZATION_KEYS
from .problems import PROBLEM_CODES
from .project_types.registry import project_type_named


def aggregated_member_names(selection: Selection) -> list[str]:
    """The aggregated members an export writes, in ZIP order (after all per-image members)."""
    return [member for fmt in registry.selected_formats(selection) for member in fmt.members_for(selection)]


# ---------------------------------------------------------------------------------------------------------
# The summary the documents are made from
# ---------------------------------------------------------------------------------------------------------

COUNT_DESCRIPTIONS: dict[str, str] = {
    "images": "selected images (rows in the JSON export)",
    "images_with_files": "original files read, decodable and stored under `images/`",
    "unreadable_files": "original files read but not decodable, stored under `unreadable/`",
    "coco_images": "images listed in COCO `images`",
    "visualizations": "visualizations drawn",
    "objects": "closed objects (external polygons), incomplete ones included",
    "polylines": "open polylines",
    "polylines_not_in_yolo": "polylines left out of the YOLO labels",
    "polylines_not_in_coco": "polylines left out of the COCO annotations (they are in the JSON export)",
    "metric_rows": "rows in the metrics tables",
    "problems": "per-image problems in `export_report.json`",
}


@dataclass(frozen=True)
class ExportSummary:
    """What README.md and metadata.json say about one export.

    ``content_options`` is ``ExportOptions.content_options()`` (any other key in it is ignored, so a
    path or DSN passed by mistake never reaches a document). ``counts`` maps count names (see
    :data:`COUNT_DESCRIPTIONS`) to ints. ``members`` says what the ZIP holds: either the member paths and
    per-image folders (``images/``, ...), or a mapping of kinds (``originals``, ``visualizations``,
    ``visualization_format``, ``annotations``, ``metrics``, ``docs``), or empty to derive it from
    ``content_options``.
    ``software_versions`` maps package names to versions (see :func:`software_versions`).
    """

    project_id: str
    project_title: str
    project_type: str
    export_time: str
    content_options: Mapping[str, Any]
    counts: Mapping[str, int]
    scale_um_per_px: float | None
    scale_source: str
    members: Sequence[str] | Mapping[str, Any] = ()
    software_versions: Mapping[str, str] = field(default_factory=dict)

    @property
    def length_unit(self) -> str:
        """Unit of metric lengths: ``um`` with a scale, else ``px``."""
        return "um" if self.scale_um_per_px is not None else "px"

    @property
    def area_unit(self) -> str:
        """Unit of metric areas."""
        return f"{self.length_unit}^2"

    def count(self, name: str) -> int:
        """One count (0 when not recorded)."""
        return int(self.counts.get(name, 0) or 0)

    def files_note(self, count_name: str) -> str:
        """`` (N files)`` when the count is recorded, else empty."""
        return f" ({self.count(count_name)} files)" if count_name in self.counts else ""

    def selection(self) -> Selection:
        """The content options that chose the formats."""
        kinds = self.members if isinstance(self.members, Mapping) else self.content_options
        return Selection.from_kinds({**kinds, "project_type": self.project_type})

    def formats(self) -> list[OutputFormat]:
        """The formats the export writes."""
        return registry.selected_formats(self.selection())

    def readme_markdown(self) -> str:
        """``documentation/README.md`` of this export."""
        return readme_markdown(self)

    def metadata_json(self) -> bytes:
        """``documentation/metadata.json`` of this export."""
        return metadata_json(self)

    def member_list(self) -> tuple[str, ...]:
        """Member paths and per-image folders present in the ZIP, in ZIP order."""
        if self.members and not isinstance(self.members, Mapping):
            return tuple(self.members)
        return _members_from_kinds(self.selection(), self.counts)


def _members_from_kinds(selection: Selection, counts: Mapping[str, int]) -> tuple[str, ...]:
    """Member list from include flags and formats; a folder whose count is known to be 0 is left out."""
    formats = registry.selected_formats(selection)
    folders = [
        fmt.folder
        for fmt in formats
        if fmt.folder and int(counts.get(fmt.folder_count, int(fmt.folder_expected)) or 0) > 0
    ]
    return tuple(folders + [member for fmt in formats for member in fmt.members_for(selection)])


def format_export_time(moment: datetime) -> str:
    """ISO 8601 UTC with microseconds and ``Z`` (``2026-01-02T03:04:05.123000Z``); naive values are UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def software_versions() -> dict[str, str]:
    """Versions of the software that shapes the ZIP's bytes (looked up now; missing packages are left out)."""
    import zlib
    from importlib import metadata

    versions = {"ray_export": __version__, "python": platform.python_version(), "zlib": zlib.ZLIB_RUNTIME_VERSION}
    for key, distribution in (
        ("numpy", "numpy"),
        ("pyarrow", "pyarrow"),
        ("opencv", "opencv-python-headless"),
        ("pycocotools", "pycocotools"),
        ("xlsxwriter", "XlsxWriter"),
        ("pillow", "Pillow"),
        ("isal", "isal"),
    ):
        try:
            versions[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            if key == "opencv" and "cv2" in sys.modules:
                versions[key] = str(sys.modules["cv2"].__version__)
    return versions


# ---------------------------------------------------------------------------------------------------------
# JSON helpers
# ---------------------------------------------------------------------------------------------------------


_CONTENT_OPTION_KEYS = (
    "image_ids", "originals", "visualizations", "annotations", "coco_holes", "metrics", "docs", "scale",
    "mt_thickness", "mt_margin",
)  # fmt: skip


def _content_options_only(options: Mapping[str, Any]) -> dict[str, Any]:
    """Keep only the options that shape content; paths, DSNs, addresses or anything unknown are dropped."""
    kept = {key: options[key] for key in _CONTENT_OPTION_KEYS if key in options}
    viz = options.get("visualization")
    if isinstance(viz, Mapping):
        kept["visualization"] = {key: viz[key] for key in VISUALIZATION_KEYS if key in viz}
    return kept


# ---------------------------------------------------------------------------------------------------------
# metadata.json
# ---------------------------------------------------------------------------------------------------------

METADATA_FORMAT_VERSION = 1


def metadata_document(summary: ExportSummary) -> dict[str, Any]:
    """The metadata.json content as a mapping (no paths, addresses, export ids or credentials)."""
    return {
        "metadata_version": METADATA_FORMAT_VERSION,
        "project": {"id": summary.project_id, "title": summary.project_title, "type": summary.project_type},
        "export_time": summary.export_time,
        "options": _content_options_only(summary.content_options),
        "counts": {str(k): int(v) for k, v in summary.counts.items()},
        # member paths and per-image folders in ZIP order, as the README's contents table lists them
        "members": list(summary.member_list()),
        "scale": {
            "um_per_px": None if summary.scale_um_per_px is None else float(summary.scale_um_per_px),
            "source": summary.scale_source,
            "length_unit": summary.length_unit,
            "area_unit": summary.area_unit,
        },
        "software": {str(k): str(v) for k, v in summary.software_versions.items()},
    }


def metadata_json(summary: ExportSummary) -> bytes:
    """``documentation/metadata.json``: sorted keys, indent 2, UTF-8, trailing newline."""
    return document_bytes(metadata_document(summary), sort_keys=True)


# ---------------------------------------------------------------------------------------------------------
# export_report.json
# ---------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------
# README.md
# ---------------------------------------------------------------------------------------------------------

_MARKDOWN_SPECIAL = "\\`*_[]<>|#"


def _md(text: Any) -> str:
    """Escape text for Markdown prose and table cells."""
    out = str(text).replace("\r", " ").replace("\n", " ")
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIAL else ch for ch in out)


def _format_number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(float(value))


def _member_descriptions(summary: ExportSummary) -> dict[str, str]:
    descriptions: dict[str, str] = {}
    for fmt in registry.FORMATS:
        descriptions.update(fmt.describe(summary))
    return descriptions


def _contents_section(summary: ExportSummary) -> list[str]:
    descriptions = _member_descriptions(summary)
    lines = ["## Contents", "", "| member | what it holds |", "|---|---|"]
    for member in summary.member_list():
        lines.append(f"| `{member}` | {descriptions.get(member, '')} |")
    lines += [
        "",
        "Per-image members (`images/`, `visualizations/`, `labels/`) share one *stem* per image, so "
        "`images/cell_01.tif`, `visualizations/cell_01_viz.png` and `labels/cell_01.txt` belong together. "
        "File names are made safe for every operating system: folder parts are dropped, control characters "
        'and `<>:"|?*` become `_`, leading and trailing dots and spaces are removed, Windows device names '
        "(`CON`, `NUL`, `COM1`, ...) get `_` appended and stems are cut to 100 characters. Stems that would "
        "collide (compared case-insensitively, Unicode-normalised) get `_2`, `_3`, ... in export order. A "
        "changed name is listed in `export_report.json` (code `member_renamed`); the COCO `file_name` and "
        "the JSON export's `file_name` always give the name used here.",
        "",
    ]
    return lines


def _counts_section(summary: ExportSummary) -> list[str]:
    lines = ["## Counts", "", "| count | value | meaning |", "|---|---:|---|"]
    names = [name for name in COUNT_DESCRIPTIONS if name in summary.counts]
    names += sorted(name for name in summary.counts if name not in COUNT_DESCRIPTIONS)
    for name in names:
        value = summary.count(name)
        lines.append(f"| {name} | {value} | {COUNT_DESCRIPTIONS.get(name, '')} |")
    return [*lines, ""]


def _units_section(summary: ExportSummary) -> list[str]:
    lines = ["## Units and scale", ""]
    if summary.scale_um_per_px is not None:
        source = {
            "option": "given in the export options",
            "database": "the `pixelSizeUm` shared by every selected image",
        }.get(summary.scale_source, summary.scale_source)
        lines.append(
            f"Scale: **{_format_number(summary.scale_um_per_px)} µm per pixel** ({source}). In the metrics "
            "files lengths are in µm (`um`) and areas in µm² (`um^2`)."
        )
    else:
        lines.append(
            "Scale: **none** — the selected images do not share one valid `pixelSizeUm` and no scale was "
            "given, so metric lengths are in pixels (`px`) and areas in pixels² (`px^2`)."
        )
    lines += [
        "",
        "Always in image pixels, whatever the scale: polygon coordinates, COCO `bbox`/`area`/`segmentation`, "
        "everything in the JSON export, and the metric columns `centroid_x`/`centroid_y`. Coordinates use the "
        "original image's pixel grid with x to the right and y downwards; YOLO coordinates are normalised "
        "to 0..1 by the image width and height. Angles (`feret_angle`) are in degrees.",
        "",
    ]
    return lines


def _options_section(summary: ExportSummary) -> list[str]:
    options = _content_options_only(summary.content_options)
    viz = options.get("visualization", {})

    def formats(key: str) -> str:
        values = options.get(key)
        if values is None:
            return "(not recorded)"
        return ", ".join(values) if values else "none"

    def on_off(key: str) -> str:
        value = options.get(key)
        return "(not recorded)" if value is None else ("yes" if value else "no")

    image_ids = options.get("image_ids")
    selection = "all images of the project" if image_ids is None else f"{len(image_ids)} selected image ids"
    scale = options.get("scale")
    lines = [
        "## Options used",
        "",
        f"- images: {selection}",
        f"- originals: {on_off('originals')}",
        f"- visualizations: {on_off('visualizations')}",
        f"- annotation formats: {formats('annotations')}",
        *([f"- COCO objects with holes (`coco_holes`): {options['coco_holes']}"] if "coco_holes" in options else []),
        f"- metrics formats: {formats('metrics')}",
        f"- documentation: {on_off('docs')}",
        f"- scale option: {'not given' if scale is None else _format_number(scale) + ' µm/px'}",
    ]
    if viz:
        lines.append(
            "- visualization: "
            + ", ".join(f"`{key}` = `{json.dumps(json_safe(viz[key]))}`" for key in VISUALIZATION_KEYS if key in viz)
        )
    lines += ["", "The same options are in `metadata.json` under `options`.", ""]
    return lines


def _format_sections(summary: ExportSummary, part: str) -> list[str]:
    """The README sections of ``part`` of the formats written, by order; a group's head and tail go around
    its consecutive sections."""
    sections = sorted(
        (section for fmt in summary.formats() for section in fmt.readme if section.part == part),
        key=lambda section: section.order,
    )
    lines: list[str] = []
    open_group: ReadmeGroup | None = None
    for section in sections:
        if section.group is not open_group:
            if open_group is not None:
                lines += open_group.tail(summary)
            if section.group is not None:
                lines += section.group.head(summary)
            open_group = section.group
        lines += section.lines(summary)
    if open_group is not None:
        lines += open_group.tail(summary)
    return lines


def _loading_section(summary: ExportSummary) -> list[str]:
    lines = ["## Loading the data", "", "Unzip the archive and run these from its top folder.", ""]
    return lines + _format_sections(summary, "loading")


def _numbering_section() -> list[str]:
    return [
        "## Object numbers",
        "",
        "The valid closed external polygons of an image are numbered 1, 2, ... in the order the segmentation "
        "stores them. The same number is drawn on the visualization, stored in COCO `attributes.number`, "
        "used in the JSON export and the metrics `number` column, and is the line number in the YOLO label "
        "file. Objects cut by the image border (`complete: false`) are numbered, drawn and annotated but have "
        "no metrics row, so metrics numbers can have gaps. Dropped elements (too few points, unknown type) "
        "get no number and are listed in the report. Holes belong to the object named by their `parent_id`, "
        "else to the smallest object containing them.",
        "",
    ]


def _report_section(summary: ExportSummary) -> list[str]:
    lines = [
        "## Export report",
        "",
        f"`{export_report.MEMBER}` is always written:",
        "",
        "```json",
        '{"images": [{"index": 3, "image_id": "...", "image_name": "...",',
        '             "problems": [{"code": "...", "stage": "...", "message": "..."}]}],',
        ' "unknown_image_ids": [], "notes": [{"code": "...", "message": "..."}],',
        ' "counts": {"images": 0, "objects": 0, "polylines_not_in_yolo": 0, "polylines_not_in_coco": 0,',
        '            "problems": 0},',
        ' "problem_codes": {"code": "description"}}',
        "```",
        "",
        "Only images with at least one problem are listed, in index order. A problem never stops the "
        "export: the image keeps its index and stays in the JSON export with whatever could be read. When "
        "the originals are exported, an image whose file is missing (`file_missing`), outside the images "
        "root (`path_outside_root`), unreadable (`file_unreadable`) or not decodable (`image_decode_failed`) "
        "is left out of COCO and `labels/`. Paths in messages are relative to the images root. Problem codes:",
        "",
        "| code | meaning |",
        "|---|---|",
    ]
    codes = {**PROBLEM_CODES, **project_type_named(summary.selection().project_type).problem_codes}
    lines += [f"| `{code}` | {_md(description)} |" for code, description in codes.items()]
    lines += ["", "Export-level note codes:", "", "| code | meaning |", "|---|---|"]
    lines += [f"| `{code}` | {_md(description)} |" for code, description in NOTE_CODES.items()]
    return [*lines, ""]


def _determinism_section(summary: ExportSummary) -> list[str]:
    return [
        "## Export time and reproducibility",
        "",
        f"Export time: **{_md(summary.export_time)}** (UTC). It is not the moment the export ran but the "
        "newest `updatedAt` of the exported project, image and segmentation rows; it is used in "
        "`metadata.json`, the COCO `info` block, the workbook properties and the ZIP entry timestamps. "
        "Every member depends only on the database rows, the image files, the content options and the "
        "software versions in `metadata.json`, so exporting unchanged data with the same options gives a "
        "byte-identical archive, whatever the parallelism or the day. Only the default output *file name* "
        "uses the wall clock.",
        "",
    ]


def readme_markdown(summary: ExportSummary) -> str:
    """``documentation/README.md`` for one export (only members present are described)."""
    title = _md(summary.project_title) or "(untitled)"
    lines = [
        f"# Segmentation export: {title}",
        "",
        f"Project `{_md(summary.project_id)}` (type {_md(summary.project_type)}), "
        f"{summary.count('images')} images, {summary.count('objects')} objects, exported with ray_export "
        f"{_md(summary.software_versions.get('ray_export', __version__))}.",
        "",
    ]
    lines += _contents_section(summary)
    lines += _counts_section(summary)
    lines += _units_section(summary)
    lines += _options_section(summary)
    lines += _loading_section(summary)
    lines += _format_sections(summary, "schema")
    lines += _numbering_section()
    lines += _report_section(summary)
    lines += _determinism_section(summary)
    return "\n".join(lines).rstrip("\n") + "\n"
