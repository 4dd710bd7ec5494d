"""Planning an export without Ray: options -> :class:`ExportPlan` (light query, member names, scale,
export time, output checks) and what the ZIP writer must know before its first entry."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .documents import ExportSummary, format_export_time, software_versions
from .errors import ExportError, error_line
from .formats.base import Selection
from .formats.registry import member_reuse_levels, selected_formats
from .locations import is_remote_uri, is_uri, local_path, uri_for_display
from .naming import assign_member_names, default_output_name
from .options import (
    MAX_SCALE_UM_PER_PX,
    MIN_SCALE_UM_PER_PX,
    ExportOptions,
    OptionError,
)
from .problems import Problem
from .project_types.registry import project_type_for
from .ray_address import running_under_job_submit
from .reuse import PreviousExport, open_previous_export, reuse_location_exists
from .sources import DbTarget, SourceError, list_images, parse_db_target, resolve_project


@dataclass
class ExportPlan:
    """Everything the driver settles before the first ZIP entry (the light query)."""

    target: DbTarget
    project: Any
    rows: list[dict]
    output: Path | str
    images_root: str
    export_time: datetime
    scale_um_per_px: float | None
    scale_source: str
    driver_problems: dict[int, list[dict]] = field(default_factory=dict)
    unknown_image_ids: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: the heavy read fetches the polygon text (see :func:`read_projection`)
    need_polygons: bool = True
    #: the heavy read fetches ``originalPath`` (see :func:`read_projection`)
    need_path: bool = True
    #: the project type the export uses (``projects.type``; an unknown one is exported as ``spheroid``)
    project_type: str = "spheroid"
    #: the columns the project type adds to the heavy read (only when its tables are written)
    read_columns: tuple[str, ...] = ()
    #: what the project type's outputs need to know about the project and the options (JSON values)
    type_context: dict[str, Any] = field(default_factory=dict)


def _check_uri_output(uri: str, force: bool) -> str:
    import pyarrow.fs as pafs

    shown = uri_for_display(uri)
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
    except Exception as exc:
        raise ExportError(f"output {shown}: {type(exc).__name__}: {error_line(exc)}", 2) from exc
    if info.type == pafs.FileType.Directory:
        raise ExportError(f"output {shown} is a folder", 2)
    if info.type != pafs.FileType.NotFound and not force:
        raise ExportError(f"output {shown} exists; use --force to overwrite it", 2)
    if isinstance(fs, pafs.LocalFileSystem):
        parent = fs.get_file_info(path.rsplit("/", 1)[0] or "/")
        if parent.type != pafs.FileType.Directory:
            raise ExportError(f"output folder of {shown} does not exist", 2)
    return uri


def local_output_path(options: ExportOptions) -> Path | None:
    """The local output file named by the options (None: a URI, or the default name from the title)."""
    if not options.output or is_uri(options.output):
        return None
    return Path(options.output).expanduser().absolute()


def _check_output(options: ExportOptions, title: str) -> Path | str:
    if options.output and is_uri(options.output):
        return _check_uri_output(options.output, options.force)
    out = local_output_path(options) or Path.cwd() / default_output_name(title, datetime.now())
    if out.is_dir():
        raise ExportError(f"output {out} is a folder", 2)
    if out.exists() and not options.force:
        raise ExportError(f"output {out} exists; use --force to overwrite it", 2)
    if not out.parent.is_dir():
        raise ExportError(f"output folder {out.parent} does not exist", 2)
    if not os.access(out.parent, os.W_OK):
        raise ExportError(f"output folder {out.parent} is not writable", 2)
    return out


def _images_root(options: ExportOptions, target: DbTarget) -> str:
    root = options.images_root
    if root is None:
        if target.kind != "sqlite":
            raise ExportError("invalid option images_root: required with a PostgreSQL database", 2)
        root = str(Path(target.sqlite_path).parent)
    if is_remote_uri(root):
        return root
    local = Path(local_path(root)).expanduser().absolute()
    if not local.is_dir():
        raise ExportError(f"images root {local} does not exist or is not a folder", 2)
    return str(local)


def _decide_scale(options: ExportOptions, entries: list[Any]) -> tuple[float | None, str, tuple[str, ...]]:
    if options.scale_um_per_px is not None:
        return float(options.scale_um_per_px), "option", ()
    values = {e.pixel_size_um for e in entries}
    if len(values) == 1:
        (value,) = values
        if value is not None and MIN_SCALE_UM_PER_PX <= float(value) <= MAX_SCALE_UM_PER_PX:
            return float(value), "database", ()
    return None, "pixels", ("scale_pixels",)


def read_projection(options: ExportOptions, sizes_in_database: bool) -> tuple[bool, bool]:
    """``(need_polygons, need_path)``: which heavy columns the chosen outputs need.

    Polygon text feeds the visualizations, annotations and metrics; without any of them it is not read
    (and the report then counts no objects and lists no polygon problems). ``originalPath`` is needed to
    read the files: for the originals and visualizations, and for the image size when the database lacks
    it for any selected image (``sizes_in_database`` false).
    """
    need_polygons = options.include_visualizations or bool(options.annotations) or bool(options.metrics)
    need_path = options.include_originals or options.include_visualizations or not sizes_in_database
    return need_polygons, need_path


def plan_export(export: ExportOptions | CheckedExport, on_checked: Callable[[], None] | None = None) -> ExportPlan:
    """Run the light driver-side query and settle names, scale, export time and the output path.

    ``on_checked`` is called once the checks that can fail an export as a usage error passed (project,
    image ids, output), before the rest of the plan is made.
    """
    checked = check_export(export)
    options, target, images_root = checked.options, checked.target, checked.images_root
    project = resolve_project(target, options.project)
    listing = list_images(target, project.id, list(options.image_ids) if options.image_ids else None)
    entries = listing.entries
    output = checked.output if checked.output is not None else _check_output(options, project.title)
    if on_checked is not None:
        on_checked()
    names = assign_member_names([e.name or "" for e in entries])
    rows: list[dict] = []
    driver_problems: dict[int, list[dict]] = {}
    for entry, member in zip(entries, names, strict=True):
        updated = entry.updated_at.isoformat() if entry.updated_at is not None else None
        rows.append(
            {
                "index": entry.index,
                "image_id": entry.image_id,
                "file_name": member.file_name,
                "stem": member.stem,
                # newest updatedAt of the image and segmentation rows: part of the image's fingerprint
                "updated_at": updated,
            }
        )
        found = list(entry.problems)
        if member.renamed:
            problem = Problem("member_renamed", "naming", f"{entry.name!r} is stored as {member.file_name!r}")
            found.append(problem.to_dict())
        if found:
            driver_problems[entry.index] = found
    scale, scale_source, notes = _decide_scale(options, entries)
    if listing.unknown_image_ids:
        notes = (*notes, "unknown_image_ids")
    project_type, type_note = project_type_for(project.type)
    if type_note:
        notes = (*notes, type_note)
    writes_type_tables = Selection.of(options, project_type.name).type_tables
    type_context: dict[str, Any] = {}
    if writes_type_tables:
        if project_type.read_context is not None:
            type_context.update(project_type.read_context(target, project.id))
        type_context.update({key: getattr(options, key) for key in project_type.options})
    export_time = listing.newest_updated_at or datetime(1980, 1, 1, tzinfo=timezone.utc)
    need_polygons, need_path = read_projection(options, all(e.size_in_database for e in entries))
    return ExportPlan(
        target=target,
        project=project,
        rows=rows,
        output=output,
        images_root=images_root,
        export_time=export_time,
        scale_um_per_px=scale,
        scale_source=scale_source,
        driver_problems=driver_problems,
        unknown_image_ids=tuple(listing.unknown_image_ids),
        notes=notes,
        project_type=project_type.name,
        read_columns=project_type.read_columns if writes_type_tables else (),
        type_context=type_context,
        need_polygons=need_polygons,
        need_path=need_path,
    )


@dataclass(frozen=True)
class CheckedExport:
    """One export's options, checked once before any start-up, with what the checks settled: the
    database target, the images root and a named output (a local path or a URI; None: the default name,
    known once the project's title is). The later layers read it and check nothing of it again."""

    options: ExportOptions
    target: DbTarget
    images_root: str
    output: Path | str | None


def check_export(options: ExportOptions | CheckedExport) -> CheckedExport:
    """Check the options with everything that needs neither Ray nor the database (usage errors come
    before any start-up); an already checked export is returned as it is."""
    if isinstance(options, CheckedExport):
        return options
    try:
        options.validate(under_job=running_under_job_submit())
        target = parse_db_target(options.db)
    except OptionError as exc:
        raise ExportError(str(exc), 2) from exc
    except SourceError as exc:
        raise ExportError(str(exc), exc.exit_code) from exc
    images_root = _images_root(options, target)
    output = _check_output(options, "") if options.output else None
    if options.reuse and not reuse_location_exists(options.reuse):
        raise ExportError(
            f"invalid option reuse: {uri_for_display(options.reuse)} does not exist or is not a file", 2
        )
    return CheckedExport(options, target, images_root, output)


def open_reuse(options: ExportOptions, plan: ExportPlan) -> PreviousExport | None:
    """The previous export given by ``reuse``, checked against this export (None when not given)."""
    if not options.reuse:
        return None
    formats = selected_formats(Selection.of(options))
    return open_previous_export(
        options.reuse, plan.project.id, options.content_options(), software_versions(), member_reuse_levels(formats)
    )


def assembly_plan(
    options: ExportOptions,
    plan: ExportPlan,
    spool_dir: Path,
    export_id: str | None = None,
    previous: PreviousExport | None = None,
) -> Any:
    """What the ZIP writer needs to know before the first entry (an :class:`actors.zip_writer.AssemblyPlan`);
    a local output is written to the export's own partial file, spool files are made in ``spool_dir``.
    ``previous``: the previous export given
    to reuse (its manifest is read by the writer when it is trusted)."""
    from actors.zip_writer import AssemblyPlan

    from .output_files import partial_path

    summary = ExportSummary(
        project_id=plan.project.id,
        project_title=plan.project.title,
        project_type=plan.project.type,
        export_time=format_export_time(plan.export_time),
        content_options=options.content_options(),
        counts={},
        scale_um_per_px=plan.scale_um_per_px,
        scale_source=plan.scale_source,
        members=_member_kinds(options),
        software_versions=software_versions(),
    )
    return AssemblyPlan(
        output=str(plan.output),
        export_time=plan.export_time,
        total_images=len(plan.rows),
        include_originals=options.include_originals,
        include_visualizations=options.include_visualizations,
        annotations=tuple(options.annotations),
        metrics=tuple(options.metrics),
        include_docs=options.include_docs,
        viz_extension=options.visualization.extension,
        scale_um_per_px=plan.scale_um_per_px,
        summary=summary,
        coco_info=_coco_info(plan, summary),
        driver_problems=plan.driver_problems,
        unknown_image_ids=plan.unknown_image_ids,
        notes=plan.notes,
        max_buffered_images=options.max_buffered_images,
        spool_dir=str(spool_dir),
        partial_path=str(partial_path(plan.output, export_id)) if export_id and isinstance(plan.output, Path) else None,
        replace=options.force,
        reuse_location=previous.location if previous is not None and previous.source is not None else None,
        project_type=plan.project_type,
        type_context=dict(plan.type_context),
    )


def _member_kinds(options: ExportOptions) -> dict[str, Any]:
    return {
        "originals": options.include_originals,
        "visualizations": options.include_visualizations,
        "visualization_format": options.visualization.format,
        "annotations": list(options.annotations),
        "metrics": list(options.metrics),
        "docs": options.include_docs,
    }


def _coco_info(plan: ExportPlan, summary: ExportSummary) -> dict:
    return {
        "description": f"{plan.project.title} (ray_export)",
        "version": __version__,
        "year": plan.export_time.astimezone(timezone.utc).year,
        "date_created": summary.export_time,
        "project_id": plan.project.id,
    }
