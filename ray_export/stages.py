"""Batch stages of the export: functions ``pyarrow.Table -> pyarrow.Table``.

Each stage takes a batch of many images, reads only the columns it needs and returns the batch with its
own columns added. Image bytes stay encoded; every per-image failure becomes a problem in the
``problems`` column (``list<struct<code, stage, message>>``) and never an exception. The copy stage
reads the original files; the others are pure. Nothing here knows about Ray: :func:`stage_chain` gives
the ordered stages that :mod:`ray_export.dataset` wires into ``map_batches`` (and the benchmark runs in
one process). The columns each format's part fills are declared in :mod:`ray_export.formats`.

Columns read from the source: ``index, image_id, file_name, stem, original_path, db_width, db_height,
seg_width, seg_height, polygons``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import posixpath
import stat as stat_module
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from PIL import Image

from .file_read import FileTooLarge, NotRegularFile, ReadTimedOut, read_file
from .formats.base import STAGE_ORDER, ImageInput, OutputFormat, Selection
from .formats.metrics_files import PART as METRIC_ROWS_PART
from .formats.originals import PART as ORIGINAL_PART
from .formats.registry import format_named, selected_formats
from .formats.type_tables import PART as TYPE_ROWS_PART
from .formats.visualizations import PART as VISUALIZATION_PART
from .locations import is_remote_uri, local_path
from .metrics import image_metric_rows
from .options import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_READ_TIMEOUT_S,
    ExportOptions,
    VisualizationSettings,
)
from .polygons import ImagePolygons, parse_polygons
from .problems import FAILURE_CODES, PROBLEMS_TYPE, Problem
from .reuse import (
    ALL_REUSED,
    COMPUTED,
    FILE_FINGERPRINTS,
    MEMBERS_REUSED,
    REUSED_ENTRIES_TYPE,
    DamagedEntry,
    FileIdentity,
    ReuseSource,
    copy_stored_entry,
    file_fingerprint_of,
    identity_of,
    member_fingerprint,
    open_binary,
    parts_fingerprint,
    reused_entry_value,
)
from .sources import TYPE_READ_EXPRESSIONS
from .visualize import image_size_from_header, render_visualization


def _values(table: pa.Table, name: str) -> list[Any]:
    """One column as Python values."""
    return table.column(name).to_pylist()


def _problem_lists(table: pa.Table) -> list[list[dict]]:
    """Each image's problems so far (as dicts); empty lists before the first stage."""
    if "problems" not in table.column_names:
        return [[] for _ in range(table.num_rows)]
    return [value or [] for value in _values(table, "problems")]


def _problems_array(existing: list[list[dict]], new: list[list[Problem]]) -> pa.Array:
    merged = [old + [p.to_dict() for p in found] for old, found in zip(existing, new, strict=True)]
    return pa.array(merged, type=PROBLEMS_TYPE)


def _replace_columns(table: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    for name, values in columns.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values)
        else:
            table = table.append_column(name, values)
    return table


def _drop(table: pa.Table, names: list[str]) -> pa.Table:
    present = [n for n in names if n in table.column_names]
    return table.drop_columns(present) if present else table


def _reuse_levels(table: pa.Table) -> list[int]:
    """Each image's reuse level (see :mod:`ray_export.reuse`); 0 before the copy stage set it."""
    if "reuse_level" not in table.column_names:
        return [COMPUTED] * table.num_rows
    return [int(level or 0) for level in _values(table, "reuse_level")]


@functools.lru_cache(maxsize=128)
def _parse_text(text: str) -> ImagePolygons:
    # Fused stages run in one task: visualize, annotate and metrics then share one parse per image.
    # The result is only read, never changed, so sharing it is safe.
    return parse_polygons(text)


def _polygon_texts(table: pa.Table) -> list[Any]:
    return _values(table, "polygons") if "polygons" in table.column_names else [None] * table.num_rows


def _parse(raw: Any, stage: str) -> ImagePolygons:
    """The image's polygons; an unexpected parser error becomes a problem, never an exception."""
    try:
        return _parse_text(raw) if isinstance(raw, str) else parse_polygons(raw)
    except Exception as exc:
        return ImagePolygons(problems=[Problem("stage_failed", stage, f"polygons: {type(exc).__name__}: {exc}")])


# --------------------------------------------------------------------------------------------- copy


@dataclass(frozen=True)
class ImagesRoot:
    """Where ``originalPath`` values are resolved: a local folder or a ``pyarrow.fs`` URI."""

    root: str

    def open_filesystem(self) -> tuple[pafs.FileSystem, str, bool]:
        """(filesystem, base path, is_local)."""
        if is_remote_uri(self.root):
            fs, base = pafs.FileSystem.from_uri(self.root)
            return fs, base.rstrip("/"), False
        return pafs.LocalFileSystem(), os.path.realpath(local_path(self.root)), True


class PathOutsideRoot(ValueError):
    """``originalPath`` escapes the images root."""


def resolve_original_path(base: str, relative: str, is_local: bool) -> str:
    """Join ``relative`` under ``base``, refusing absolute paths, ``..`` escapes and symlink escapes."""
    rel = (relative or "").replace("\\", "/")
    if not rel or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise PathOutsideRoot(f"{relative!r} is not a relative path")
    normal = posixpath.normpath(rel)
    if normal == ".." or normal.startswith("../") or normal == ".":
        raise PathOutsideRoot(f"{relative!r} escapes the images root")
    if not is_local:
        return f"{base}/{normal}"
    joined = os.path.realpath(os.path.join(base, normal))
    if os.path.commonpath([joined, base]) != base:
        raise PathOutsideRoot(f"{relative!r} escapes the images root through a link")
    return joined


@dataclass(frozen=True)
class ReadLimits:
    """Bounds of one original's read (bytes, seconds) and of the images decoded (width x height)."""

    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


#: read errors -> problem code (checked in this order; the rest are ``file_unreadable``)
_READ_ERROR_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (NotRegularFile, "file_not_regular"),
    (FileTooLarge, "file_too_large"),
    (ReadTimedOut, "file_read_timeout"),
)


def _read_problem(rel: str, base: str, exc: Exception) -> Problem:
    """The problem of an original that could not be read."""
    for kind, code in _READ_ERROR_CODES:
        if isinstance(exc, kind):
            return Problem(code, "copy", f"{rel!r}: {exc}".replace(base, "<images root>"))
    if isinstance(exc, FileNotFoundError):
        return Problem("file_missing", "copy", f"{rel!r} not found under the images root")
    text = str(exc).lower()
    code = "file_missing" if "not found" in text or "no such" in text else "file_unreadable"
    return Problem(code, "copy", f"{rel!r}: {type(exc).__name__}: {exc}".replace(base, "<images root>"))


def _size_or_none(value: Any) -> int | None:
    return int(value) if value is not None and int(value) > 0 else None


#: How the copy stage checks that a file it read decodes (``decodable``): not at all, by its header
#: (a real decode follows in the visualize stage, and when the header cannot be read), or by a decode.
CHECKS = ("none", "header", "decode")


def image_decodes(data: bytes) -> bool:
    """Whether OpenCV (reduced-size decode, cheap for JPEG) or Pillow (full load) decodes the data."""
    try:
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
        if decoded is not None and decoded.size > 0:
            return True
    except cv2.error:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return img.width > 0 and img.height > 0
    except Exception:
        return False


def copy_stage(
    table: pa.Table,
    images_root: str,
    read_files: bool,
    check: str = "none",
    limits: ReadLimits | None = None,
    reuse: ReuseSource | None = None,
    file_fingerprint: str = "sha256",
    scale_um_per_px: float | None = None,
) -> pa.Table:
    """Read each original once (``original`` bytes), settle the image size (``width``, ``height``) and
    whether the file decodes (``decodable``; null when not read or ``check`` is ``none``).

    Size: segmentations.imageWidth/Height, else images.width/height, else the file's header;
    unknown -> 0 x 0 and an ``image_size_unknown`` problem. Files are read when ``read_files`` is set
    (originals or visualizations requested) or when the size is only in the file. Only regular files are
    read, bounded in size and time (``limits``): a FIFO, socket or device, a file over the size limit or
    a read over the time limit is a problem of its image, never a hang. A file found not to decode gets
    an ``image_decode_failed`` problem. A file whose header gives more pixels than the limit is never
    decoded: it gets ``image_too_large``, counts as decodable (its header is a valid image's) and keeps
    its original.

    Each image also gets its fingerprints (``member_fingerprint``, ``parts_fingerprint``; see
    :mod:`ray_export.reuse`). With ``reuse`` (a previous ZIP), an image whose member fingerprint matches
    the previous one is not read further: its stored members are read back from the previous ZIP, CRC
    checked (``reused_entries``), and its size and decodability are the stored ones (``reuse_level``
    1, or 2 when the parts fingerprint matches too). An image computed instead gets a ``reuse_reason``.
    """
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}")
    limits = limits or ReadLimits()
    if file_fingerprint not in FILE_FINGERPRINTS:
        raise ValueError(f"file_fingerprint must be one of {FILE_FINGERPRINTS}")
    n = table.num_rows
    seg_widths, seg_heights = _values(table, "seg_width"), _values(table, "seg_height")
    db_widths, db_heights = _values(table, "db_width"), _values(table, "db_height")
    paths = _values(table, "original_path")
    image_ids, file_names = _values(table, "image_id"), _values(table, "file_name")
    indices, stems = _values(table, "index"), _values(table, "stem")
    row_fields = _fingerprint_fields(table)
    fs, base, is_local = ImagesRoot(images_root).open_filesystem()
    originals: list[bytes | None] = []
    decodable: list[bool | None] = []
    widths: list[int] = []
    heights: list[int] = []
    new_problems: list[list[Problem]] = []
    member_prints: list[str] = []
    parts_prints: list[str] = []
    levels: list[int] = []
    reasons: list[str | None] = []
    entries_out: list[list[dict] | None] = []
    with contextlib.ExitStack() as previous_zip:
        opened: list[tuple[Any, FileIdentity]] = []

        def previous() -> tuple[Any, FileIdentity]:
            """The previous ZIP, opened once per batch, and its identity as its entries are checked."""
            if not opened:
                assert reuse is not None
                fh = previous_zip.enter_context(open_binary(reuse.location))
                opened.append((fh, identity_of(reuse.location, fh)))
            return opened[0]

        for i in range(n):
            seg_size = (_size_or_none(seg_widths[i]), _size_or_none(seg_heights[i]))
            db_size = (_size_or_none(db_widths[i]), _size_or_none(db_heights[i]))
            stored = seg_size if None not in seg_size else db_size if None not in db_size else None
            rel = paths[i]
            wants_file = (read_files or stored is None) and bool(rel)
            candidate = reuse.candidates.get(str(image_ids[i])) if reuse is not None else None
            path: str | None = None
            path_problem: Problem | None = None
            if wants_file:
                try:
                    path = resolve_original_path(base, rel, is_local)
                except PathOutsideRoot as exc:
                    path_problem = Problem("path_outside_root", "copy", str(exc))
                except Exception as exc:
                    path_problem = _read_problem(rel, base, exc)
            stat = _file_stat(fs, path, is_local) if path is not None and file_fingerprint == "mtime" else None
            data: bytes | None = None
            read_error: Problem | None = path_problem
            if path is not None and file_fingerprint == "sha256":
                data, read_error = _read_original(fs, path, is_local, rel, base, limits)
            file_print = file_fingerprint_of(data, *(stat or (None, None)), mode=file_fingerprint)
            member_print = member_fingerprint(row_fields[i], file_print, str(file_names[i]))
            parts_print = parts_fingerprint(member_print, indices[i], file_names[i], stems[i], scale_um_per_px)
            member_prints.append(member_print)
            parts_prints.append(parts_print)
            reason: str | None = None
            if reuse is not None:
                reason = "new" if candidate is None else "damaged" if candidate.broken else "changed"
            if candidate is not None and not candidate.broken and candidate.member_fingerprint == member_print:
                level = ALL_REUSED if candidate.parts_fingerprint == parts_print else MEMBERS_REUSED
                copied = [e for e in candidate.entries if e.level <= level]
                try:
                    # the writer copies the data of each entry from the previous ZIP without reading it:
                    # this is the one check of its local header, size and CRC-32
                    checked = []
                    for e in copied:
                        fh, identity = previous()
                        checked.append(reused_entry_value(e, copy_stored_entry(fh, e), identity))
                except (DamagedEntry, OSError):
                    reason = "damaged"
                else:
                    originals.append(None)
                    decodable.append(candidate.decodable)
                    widths.append(candidate.width)
                    heights.append(candidate.height)
                    new_problems.append([])
                    levels.append(level)
                    reasons.append(None)
                    entries_out.append(checked)
                    continue
            if path is not None and file_fingerprint == "mtime":
                data, read_error = _read_original(fs, path, is_local, rel, base, limits)
            found: list[Problem] = []
            if (read_files or stored is None) and not rel:
                found.append(Problem("file_missing", "copy", "the image row has no originalPath"))
            elif read_error is not None:
                found.append(read_error)
            decodes, size = _settle_image(data, stored, check, limits, found)
            originals.append(data if read_files else None)
            decodable.append(decodes)
            widths.append(size[0])
            heights.append(size[1])
            new_problems.append(found)
            levels.append(COMPUTED)
            reasons.append(reason)
            entries_out.append(None)
    problems = _problems_array(_problem_lists(table), new_problems)
    table = _drop(table, ["original_path", "db_width", "db_height", "seg_width", "seg_height", "updated_at"])
    return _replace_columns(
        table,
        {
            ORIGINAL_PART.column: pa.array(originals, type=ORIGINAL_PART.type),
            "width": pa.array(widths, type=pa.int64()),
            "height": pa.array(heights, type=pa.int64()),
            "decodable": pa.array(decodable, type=pa.bool_()),
            "problems": problems,
            "member_fingerprint": pa.array(member_prints, type=pa.string()),
            "parts_fingerprint": pa.array(parts_prints, type=pa.string()),
            "reuse_level": pa.array(levels, type=pa.int8()),
            "reuse_reason": pa.array(reasons, type=pa.string()),
            "reused_entries": pa.array(entries_out, type=REUSED_ENTRIES_TYPE),
        },
    )


#: Source columns that are not part of an image's member fingerprint (names and index enter the parts one).
_NOT_FINGERPRINTED = frozenset({"index", "file_name", "stem", "problems"})


def _fingerprint_fields(table: pa.Table) -> list[dict[str, Any]]:
    """Per row, the source fields its member fingerprint covers (the polygon text by its SHA-256)."""
    names = [name for name in table.column_names if name not in _NOT_FINGERPRINTED]
    columns = {name: _values(table, name) for name in names}
    rows: list[dict[str, Any]] = []
    for i in range(table.num_rows):
        row = {name: columns[name][i] for name in names}
        text = row.get("polygons")
        if isinstance(text, str):
            row["polygons"] = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        rows.append(row)
    return rows


def _file_stat(fs: pafs.FileSystem, path: str, is_local: bool) -> tuple[int, int] | None:
    """(size, modification time in ns) of a regular file, ``None`` when it cannot be looked at."""
    try:
        if is_local:
            st = os.stat(path)
            return (st.st_size, st.st_mtime_ns) if stat_module.S_ISREG(st.st_mode) else None
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File or info.mtime_ns is None:
            return None
        return int(info.size), int(info.mtime_ns)
    except Exception:
        return None


def _read_original(
    fs: pafs.FileSystem, path: str, is_local: bool, rel: str, base: str, limits: ReadLimits
) -> tuple[bytes | None, Problem | None]:
    """The file's bytes, or the problem that kept it from being read."""
    try:
        return read_file(fs, path, is_local, limits.max_file_bytes, limits.read_timeout_s), None
    except Exception as exc:  # OSError, pyarrow errors, a NUL in the path ...
        return None, _read_problem(rel, base, exc)


def _settle_image(
    data: bytes | None, stored: tuple[int, int] | None, check: str, limits: ReadLimits, found: list[Problem]
) -> tuple[bool | None, tuple[int, int]]:
    """Whether a read original decodes (``None``: not read or not checked) and the image size; the
    problems found are appended to ``found``."""
    header = image_size_from_header(data) if data is not None else None
    too_large = header is not None and header[0] * header[1] > limits.max_image_pixels
    if too_large:
        assert header is not None
        message = (
            f"{header[0]}x{header[1]} is {header[0] * header[1]} pixels, over the limit of "
            f"{limits.max_image_pixels}; not decoded, no visualization"
        )
        found.append(Problem("image_too_large", "copy", message))
    if stored is None and header is not None:
        size = header
    elif stored is None:
        size = (0, 0)
        found.append(Problem("image_size_unknown", "copy", "no size in the database or the file header"))
    else:
        size = stored
        if header is not None and header != stored:
            found.append(
                Problem(
                    "image_size_mismatch",
                    "copy",
                    f"database says {stored[0]}x{stored[1]}, the file is {header[0]}x{header[1]}",
                )
            )
    decodes: bool | None = None
    if data is not None and check != "none":
        decodes = (check == "header" and header is not None) or too_large or image_decodes(data)
        if not decodes:
            message = "the file is not a decodable image; it is kept under unreadable/, not in COCO or YOLO"
            found.append(Problem("image_decode_failed", "copy", message))
    return decodes, size


# ---------------------------------------------------------------------------------------- visualize


def visualize_stage(
    table: pa.Table, settings: VisualizationSettings, keep_originals: bool, polyline_label: str = "P"
) -> pa.Table:
    """Draw each image's overlay (``visualization`` bytes; null when nothing to draw or it failed).

    An image already known not to decode, or over the pixel limit (``image_too_large``), is skipped; one
    that fails to decode here is marked so in ``decodable``. ``polyline_label``: the project type's
    prefix of the polyline instances' labels (``S``, ``MT`` or ``P``).
    """
    originals = _values(table, ORIGINAL_PART.column)
    texts = _polygon_texts(table)
    known = _values(table, "decodable") if "decodable" in table.column_names else [None] * table.num_rows
    earlier = _problem_lists(table)
    levels = _reuse_levels(table)
    out: list[bytes | None] = []
    decodable: list[bool | None] = []
    new_problems: list[list[Problem]] = []
    for data, text, decodes, before, level in zip(originals, texts, known, earlier, levels, strict=True):
        found: list[Problem] = []
        encoded = None
        too_large = any(p["code"] == "image_too_large" for p in before)
        # an image whose members are copied from a previous export is not drawn again
        if data is not None and decodes is not False and not too_large and level == COMPUTED:
            parsed = _parse(text, "visualize")  # its problems are reported once, by the annotate stage
            try:
                encoded, _size, found = render_visualization(data, parsed, settings, polyline_label)
            except Exception as exc:  # a renderer bug must not sink the export
                found = [Problem("render_failed", "visualize", f"{type(exc).__name__}: {exc}")]
            if any(p.code == "image_decode_failed" for p in found):
                decodes = False
        out.append(encoded)
        decodable.append(decodes)
        new_problems.append(found)
    table = _replace_columns(
        table,
        {
            VISUALIZATION_PART.column: pa.array(out, type=VISUALIZATION_PART.type),
            "decodable": pa.array(decodable, type=pa.bool_()),
            "problems": _problems_array(earlier, new_problems),
        },
    )
    return table if keep_originals else _drop(table, [ORIGINAL_PART.column])


# ----------------------------------------------------------------------------------------- annotate


def annotate_stage(table: pa.Table, formats: tuple[str, ...], settings: Mapping[str, Any] | None = None) -> pa.Table:
    """Object counts, the polygon problems, and the per-image part of each named format made here.

    ``formats`` names registered formats whose part is computed by this stage, in the order their
    problems are reported. One format failing for an image does not take the others with it.
    ``settings``: the content options the parts depend on (``ImageInput.settings``).
    """
    settings = dict(settings or {})
    parts = [format_named(name).part for name in formats]
    parts = [part for part in parts if part is not None and part.compute is not None]
    indices, image_ids = _values(table, "index"), _values(table, "image_id")
    file_names, widths, heights = _values(table, "file_name"), _values(table, "width"), _values(table, "height")
    texts = _polygon_texts(table)
    levels = _reuse_levels(table)
    values: list[list[Any]] = [[] for _ in parts]
    n_objects: list[int] = []
    n_polylines: list[int] = []
    new_problems: list[list[Problem]] = []
    for i in range(table.num_rows):
        if levels[i] == ALL_REUSED:  # its parts come from the previous export's manifest
            for column in values:
                column.append(None)
            n_objects.append(0)
            n_polylines.append(0)
            new_problems.append([])
            continue
        parsed = _parse(texts[i], "annotate")
        found = list(parsed.problems)
        image = ImageInput(
            int(indices[i]), image_ids[i], file_names[i], int(widths[i]), int(heights[i]), parsed, settings
        )
        for part, column in zip(parts, values, strict=True):
            try:
                value, part_problems = part.compute(image)
                found.extend(part_problems)
            except Exception as exc:
                found.append(Problem("stage_failed", "annotate", f"{part.label}: {type(exc).__name__}: {exc}"))
                value = part.on_failure(image) if part.on_failure is not None else None
            column.append(value)
        n_objects.append(len(parsed.objects))
        n_polylines.append(len(parsed.polylines))
        new_problems.append(found)
    columns = {part.column: pa.array(column, type=part.type) for part, column in zip(parts, values, strict=True)}
    columns["n_objects"] = pa.array(n_objects, type=pa.int64())
    columns["n_polylines"] = pa.array(n_polylines, type=pa.int64())
    columns["problems"] = _problems_array(_problem_lists(table), new_problems)
    return _replace_columns(table, columns)


# ------------------------------------------------------------------------------------------ metrics


def metrics_stage(
    table: pa.Table,
    scale_um_per_px: float | None,
    project_type: str = "spheroid",
    type_tables: bool = False,
    type_context: Mapping[str, Any] | None = None,
) -> pa.Table:
    """Per-object metric rows of each image (``metric_rows``: a list of structs, exact floats) and, with
    ``type_tables``, the rows of every table of the project type (``type_rows``, see
    :mod:`ray_export.project_types.base`)."""
    from .project_types.base import TypeImage, image_type_rows
    from .project_types.registry import project_type_named

    kind = project_type_named(project_type)
    image_ids, file_names, texts = _values(table, "image_id"), _values(table, "file_name"), _polygon_texts(table)
    indices, widths, heights = _values(table, "index"), _values(table, "width"), _values(table, "height")
    levels = _reuse_levels(table)
    # the columns the project type added to the read (segmentation model, frame, creation time)
    read_fields = {name: _values(table, name) for name in TYPE_READ_EXPRESSIONS if name in table.column_names}
    originals = table.column("original") if kind.needs_pixels and "original" in table.column_names else None
    context = dict(type_context or {})
    rows_out: list[list[dict] | None] = []
    type_out: list[str | None] = []
    new_problems: list[list[Problem]] = []
    for i, (image_id, file_name, text, level) in enumerate(zip(image_ids, file_names, texts, levels, strict=True)):
        if level == ALL_REUSED:  # its rows come from the previous export's manifest
            rows_out.append(None)
            type_out.append(None)
            new_problems.append([])
            continue
        parsed = _parse(text, "metrics")  # its problems are reported once, by the annotate stage
        try:
            rows, found = image_metric_rows(image_id, file_name, parsed, scale_um_per_px)
            pa.array([rows], type=METRIC_ROWS_PART.type)  # a value Arrow cannot hold fails this image only
        except Exception as exc:
            rows, found = [], [Problem("stage_failed", "metrics", f"{type(exc).__name__}: {exc}")]
        rows_out.append(rows)
        if type_tables:
            fields = {name: values[i] for name, values in read_fields.items()}
            original = originals[i] if originals is not None else None
            image = TypeImage(
                int(indices[i]), image_id, file_name, int(widths[i] or 0), int(heights[i] or 0), parsed, fields,
                context, original.as_py() if original is not None and original.is_valid else None,
            )  # fmt: skip
            type_rows, type_problems = image_type_rows(kind, image, scale_um_per_px)
            type_out.append(type_rows)
            found = [*found, *type_problems]
        new_problems.append(found)
    columns = {
        METRIC_ROWS_PART.column: pa.array(rows_out, type=METRIC_ROWS_PART.type),
        "problems": _problems_array(_problem_lists(table), new_problems),
    }
    if type_tables:
        columns[TYPE_ROWS_PART.column] = pa.array(type_out, type=TYPE_ROWS_PART.type)
    return _replace_columns(table, columns)


def failed_indices(before: pa.Table, after: pa.Table) -> list[int]:
    """Export indices of the images that gained a failure problem (see ``FAILURE_CODES``) in a stage."""
    if "problems" in before.column_names:
        old = pc.fill_null(pc.list_value_length(before.column("problems")), 0).to_pylist()
    else:
        old = [0] * after.num_rows
    return [
        index
        for index, known, current in zip(_values(after, "index"), old, _values(after, "problems"), strict=True)
        if any(p["code"] in FAILURE_CODES for p in (current or [])[known:])
    ]


def finish_stage(table: pa.Table) -> pa.Table:
    """Drop the polygon text once every stage that needs it has run."""
    return _drop(table, ["polygons"])


# --------------------------------------------------------------------------------------- the chain


@dataclass(frozen=True)
class StageStep:
    """One stage of the chain: its name, its batch function and the keyword arguments it is called with."""

    name: str
    fn: Callable[..., pa.Table]
    kwargs: dict[str, Any]


def _annotate_formats(formats: list[OutputFormat]) -> tuple[str, ...]:
    made_here = [fmt for fmt in formats if fmt.part is not None and fmt.part.stage == "annotate"]
    return tuple(fmt.name for fmt in sorted(made_here, key=lambda fmt: fmt.option_rank))


def stage_chain(
    options: ExportOptions,
    images_root: str,
    scale_um_per_px: float | None,
    reuse: ReuseSource | None = None,
    project_type: str = "spheroid",
    type_context: Mapping[str, Any] | None = None,
) -> list[StageStep]:
    """The ordered stages an export runs for its options and project type: copy and annotate always,
    visualize and metrics when a selected format has its part made there. ``reuse``: the trusted
    previous ZIP. ``type_context``: what the project type's tables need to know (``ExportPlan.type_context``).
    """
    from .project_types.registry import project_type_named

    selection = Selection.of(options, project_type)
    formats = selected_formats(selection)
    # a type that measures the originals' pixels needs their bytes in the metrics stage
    needs_pixels = selection.type_tables and project_type_named(project_type).needs_pixels
    needed = {"copy", "annotate"} | {fmt.part.stage for fmt in formats if fmt.part is not None}
    arguments: dict[str, tuple[Callable[..., pa.Table], dict[str, Any]]] = {
        "copy": (
            copy_stage,
            {
                "images_root": images_root,
                "read_files": options.include_originals or options.include_visualizations or needs_pixels,
                # with originals exported, COCO and YOLO reference only files that decode
                "check": ("header" if "visualize" in needed else "decode") if options.include_originals else "none",
                "limits": ReadLimits(options.max_file_bytes, options.read_timeout_s, options.max_image_pixels),
                "reuse": reuse,
                "file_fingerprint": options.file_fingerprint,
                "scale_um_per_px": scale_um_per_px,
            },
        ),
        "visualize": (
            visualize_stage,
            {
                "settings": options.visualization,
                # a type that measures pixels reads the originals' bytes after the overlays are drawn
                "keep_originals": options.include_originals or needs_pixels,
                "polyline_label": project_type_named(project_type).polyline_label,
            },
        ),
        "annotate": (
            annotate_stage,
            {"formats": _annotate_formats(formats), "settings": {"coco_holes": options.coco_holes}},
        ),
        "metrics": (
            metrics_stage,
            {"scale_um_per_px": scale_um_per_px, "project_type": project_type, "type_tables": selection.type_tables,
             **({"type_context": dict(type_context or {})} if selection.type_tables else {})},
        ),
    }
    return [StageStep(name, *arguments[name]) for name in STAGE_ORDER if name in needed]
