"""What one output format declares: its members, its per-image part, its writer and its README text.

Every output of the ZIP (originals, visualizations, each annotation format, each metrics file, each
document) is one :class:`OutputFormat`, declared in its own module of :mod:`ray_export.formats` and listed
in :mod:`ray_export.formats.registry`. The stages compute the per-image parts, the assembler opens one
:class:`FormatWriter` per selected format and drives it through one lifecycle, and the README is put
together from the formats' own sections.

Writer lifecycle (as a streaming sink): ``open`` (the format's ``open_writer``) -> ``add`` once per image
in index order -> ``finish`` once after the last image; ``abort`` instead of ``finish`` when the export
fails or is cancelled (it must never raise).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import pyarrow as pa

from ..output_files import spool_file
from ..polygons import ImagePolygons
from ..problems import Problem

#: The map stages, in the order they run. ``copy`` and ``annotate`` always run.
STAGE_ORDER: tuple[str, ...] = ("copy", "visualize", "annotate", "metrics")

#: How a format is chosen: by a flag (``originals``, ``visualizations``, ``docs``), by a value in a list
#: option (``annotations``, ``metrics``), by the project type's tables (``type_tables``: some metrics
#: format is chosen and the type has tables), or ``always``.
CHOSEN_BY = ("originals", "visualizations", "annotations", "metrics", "docs", "type_tables", "always")


@dataclass(frozen=True)
class Selection:
    """The content options that decide which formats an export writes."""

    originals: bool = True
    visualizations: bool = True
    annotations: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    docs: bool = True
    #: the project type (``projects.type``, a known one: see :mod:`ray_export.project_types`)
    project_type: str = "spheroid"

    @classmethod
    def of(cls, source: Any, project_type: str | None = None) -> Selection:
        """From an object with ``include_originals``, ``include_visualizations``, ``annotations``,
        ``metrics`` and ``include_docs`` (export options, an assembly plan) and the project type (given,
        or the source's ``project_type``)."""
        return cls(
            originals=bool(source.include_originals),
            visualizations=bool(source.include_visualizations),
            annotations=tuple(source.annotations),
            metrics=tuple(source.metrics),
            docs=bool(source.include_docs),
            project_type=project_type or getattr(source, "project_type", None) or "spheroid",
        )

    @classmethod
    def from_kinds(cls, kinds: Mapping[str, Any]) -> Selection:
        """From a mapping with those keys (missing flags default to on, missing lists to empty)."""
        return cls(
            originals=bool(kinds.get("originals", True)),
            visualizations=bool(kinds.get("visualizations", True)),
            annotations=tuple(kinds.get("annotations") or ()),
            metrics=tuple(kinds.get("metrics") or ()),
            docs=bool(kinds.get("docs", True)),
            project_type=str(kinds.get("project_type") or "spheroid"),
        )

    @property
    def object_metrics(self) -> bool:
        """Whether the project type keeps the per-object metrics table (every type but microtubules)."""
        from ..project_types.registry import project_type_named

        return project_type_named(self.project_type).object_metrics

    @property
    def type_tables(self) -> bool:
        """Whether the export writes its project type's tables (a metrics format is chosen and the type
        has tables)."""
        from ..project_types.registry import project_type_named

        return bool(self.metrics) and bool(project_type_named(self.project_type).tables)


@dataclass(frozen=True)
class ImageInput:
    """What a per-image part computed in the annotate or metrics stage may use."""

    index: int
    image_id: str
    file_name: str
    width: int
    height: int
    parsed: ImagePolygons
    #: content options a part depends on, keyed as in an options file (``coco_holes``)
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImagePart:
    """The per-image result of a format: the stage that computes it and the result column it fills.

    ``compute`` is given for parts made by the generic annotate stage: it returns the column value and
    the problems found. When it raises, the image gets a ``stage_failed`` problem naming ``label`` and
    the value ``on_failure`` gives (``None`` when not set).
    """

    stage: str
    column: str
    type: pa.DataType
    compute: Callable[[ImageInput], tuple[Any, list[Problem]]] | None = None
    label: str = ""
    on_failure: Callable[[ImageInput], Any] | None = None


class ZipOutput(Protocol):
    """The part of the ZIP writer a format writer uses."""

    def add_bytes(self, name: str, data: bytes | memoryview) -> None: ...

    def add_file(self, name: str, source: Path | BinaryIO) -> None: ...

    def add_stored_entry(self, name: str, entry: Mapping[str, Any]) -> None: ...


def reused_entry(row: Mapping[str, Any], format_name: str) -> Mapping[str, Any] | None:
    """The entry of ``format_name`` read back from a previous export for this image (see
    :mod:`ray_export.reuse`), or ``None`` when the image's member is made by this export."""
    for entry in row.get("reused_entries") or ():
        if entry["format"] == format_name:
            return entry
    return None


@dataclass
class WriterContext:
    """What a writer is opened with: the plan's settings, the ZIP, a spool folder and the shared counts."""

    zip: ZipOutput
    spool: Path
    export_time: datetime
    export_time_text: str
    scale_um_per_px: float | None
    viz_extension: str
    coco_info: dict
    #: export totals; writers add to the counts they own (see ``OutputFormat.counts``)
    counts: dict[str, int]
    #: the content options that chose the formats
    selection: Selection = field(default_factory=Selection)
    #: export-level data for the report: requested ids that are unknown, notes
    unknown_image_ids: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: what the manifest records about the export as a whole (project, fingerprints), as text
    manifest_metadata: dict[str, str] = field(default_factory=dict)
    #: the formats the export writes, in table order (those that make members from the others' parts)
    formats: tuple[OutputFormat, ...] = ()
    #: what the project type's outputs need to know about the project and the options (JSON values)
    type_context: Mapping[str, Any] = field(default_factory=dict)

    def in_dataset(self, row: Mapping[str, Any]) -> bool:
        """Whether the dataset formats (COCO, YOLO) reference this image: with originals exported only
        when its file is stored under ``images/`` (read and decodable)."""
        return bool(row["decodable"]) if self.selection.originals else True

    def spool_member(self, member: str, write: Callable[[Any], None]) -> None:
        """Write ``member`` through an unnamed spool file (``write`` gets a binary file object) and add it."""
        with spool_file(self.spool) as fh:
            write(fh)
            self.zip.add_file(member, fh)


class FormatWriter(Protocol):
    """One format's writer for one export."""

    def add(self, row: Mapping[str, Any]) -> None:
        """One image's results (in index order); ``row["problems"]`` holds every problem of the image."""

    def finish(self, summary: Any) -> None:
        """Write the format's aggregated members; ``summary`` is the export's final ExportSummary."""

    def abort(self) -> None:
        """Give up: close and remove whatever the writer holds; never raises."""


class SpooledDocumentWriter:
    """Base of writers that build one aggregated member in a spooled document (``write(fh)``, ``close()``)."""

    ctx: WriterContext
    member: str
    document: Any

    def finish(self, summary: Any) -> None:
        """Stream the spooled document into the ZIP as :attr:`member`."""
        self.ctx.spool_member(self.member, self.document.write)
        self.document.close()

    def abort(self) -> None:
        """Remove the spools."""
        self.document.close()


class NoImageWriter:
    """Base of writers with nothing to do per image or on abort."""

    def add(self, row: Mapping[str, Any]) -> None:
        """Nothing per image."""

    def abort(self) -> None:
        """Nothing to remove."""


@dataclass(frozen=True)
class ReadmeGroup:
    """Lines put around consecutive README sections of one group (e.g. the metrics files' code block)."""

    head: Callable[[Any], list[str]]
    tail: Callable[[Any], list[str]]


@dataclass(frozen=True)
class ReadmeSection:
    """Text a format puts in the ZIP's README.

    ``part`` is ``loading`` (under "Loading the data") or ``schema`` (after it); sections are ordered
    by ``order``; ``lines`` gets the ExportSummary.
    """

    part: str
    order: float
    lines: Callable[[Any], list[str]]
    group: ReadmeGroup | None = None


@dataclass(frozen=True)
class OutputFormat:
    """One output of the ZIP.

    ``name`` is unique; ``choice`` is the value naming the format in its list option (``annotations``,
    ``metrics``); ``members`` are the fixed member paths ``finish`` writes, in ZIP order; ``folder`` is the
    per-image folder ``add`` writes into, listed in the README when the count ``folder_count`` is not 0.
    ``describe`` gives the README's one-line description of each member and folder. ``counts`` names the
    export counts the writer adds to.
    """

    name: str
    chosen_by: str
    open_writer: Callable[[WriterContext], FormatWriter]
    choice: str = ""
    members: tuple[str, ...] = ()
    folder: str = ""
    folder_count: str = ""
    #: whether the folder is listed when ``folder_count`` was not recorded (it usually gets files)
    folder_expected: bool = True
    part: ImagePart | None = None
    describe: Callable[[Any], Mapping[str, str]] = field(default=lambda summary: {})
    readme: Sequence[ReadmeSection] = ()
    counts: tuple[str, ...] = ()
    #: position among the formats of its list option (the order the option values are listed in)
    option_rank: int = 0
    #: members that depend on the selection (e.g. the project type's tables), after ``members``
    selected_members: Callable[[Selection], tuple[str, ...]] | None = None
    #: a further condition on the selection (e.g. the project type keeps the per-object metrics)
    requires: Callable[[Selection], bool] | None = None

    def __post_init__(self) -> None:
        if self.chosen_by not in CHOSEN_BY:
            raise ValueError(f"format {self.name}: chosen_by must be one of {CHOSEN_BY}")
        if self.chosen_by in ("annotations", "metrics") and not self.choice:
            raise ValueError(f"format {self.name}: a format chosen by a list option needs a choice")
        if self.part is not None and self.part.stage not in STAGE_ORDER:
            raise ValueError(f"format {self.name}: unknown stage {self.part.stage!r}")

    def members_for(self, selection: Selection) -> tuple[str, ...]:
        """The fixed member paths ``finish`` writes for an export with these content options."""
        extra = self.selected_members(selection) if self.selected_members is not None else ()
        return self.members + tuple(extra)

    def is_selected(self, selection: Selection) -> bool:
        """Whether an export with these content options writes this format."""
        if self.requires is not None and not self.requires(selection):
            return False
        if self.chosen_by == "always":
            return True
        if self.chosen_by in ("annotations", "metrics"):
            return self.choice in getattr(selection, self.chosen_by)
        return bool(getattr(selection, self.chosen_by))
