"""Batch stages of the export: pure functions ``pyarrow.Table -> pyarrow.Table``.

Each stage takes a batch of many images and returns it with its own columns added. Image bytes stay
encoded; every per-image failure becomes a problem in the ``problems`` column (JSON text) and never an
exception. Nothing here knows about Ray: :mod:`ray_export.pipeline` wires these into ``map_batches``.

Columns read from the source: ``index, image_id, file_name, stem, original_path, db_width, db_height,
seg_width, seg_height, polygons``.
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from .formats.coco import coco_annotations_for_image, dumps_compact
from .formats.json_export import json_image_entry
from .formats.yolo import yolo_label_text
from .metrics import image_metric_rows
from .options import VisualizationSettings, is_remote_uri, local_path
from .polygons import ImagePolygons, parse_polygons
from .problems import FAILURE_CODES, Problem
from .visualize import image_size_from_header, render_visualization


def _problems_in(batch: dict[str, list], i: int) -> list[dict]:
    text = batch.get("problems", [None] * (i + 1))[i]
    return json.loads(text) if text else []


def _with_problems(existing: list[dict], new: list[Problem]) -> str:
    return dumps_compact(existing + [p.to_dict() for p in new])


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


@functools.lru_cache(maxsize=128)
def _parse_text(text: str) -> ImagePolygons:
    # Fused stages run in one task: visualize, annotate and metrics then share one parse per image.
    # The result is only read, never changed, so sharing it is safe.
    return parse_polygons(text)


def _parse(batch: dict[str, list], i: int, stage: str) -> ImagePolygons:
    """The image's polygons; an unexpected parser error becomes a problem, never an exception."""
    if "polygons" not in batch:
        return ImagePolygons()
    raw = batch["polygons"][i]
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


def _read_original(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _size_or_none(value: Any) -> int | None:
    return int(value) if value is not None and int(value) > 0 else None


def copy_stage(table: pa.Table, images_root: str, read_files: bool) -> pa.Table:
    """Read each original once (``original`` bytes) and settle the image size (``width``, ``height``).

    Size: segmentations.imageWidth/Height, else images.width/height, else the file's header;
    unknown -> 0 x 0 and an ``image_size_unknown`` problem. Files are read when ``read_files`` is set
    (originals or visualizations requested) or when the size is only in the file.
    """
    batch = table.to_pydict()
    n = table.num_rows
    fs, base, is_local = ImagesRoot(images_root).open_filesystem()
    originals: list[bytes | None] = []
    widths: list[int] = []
    heights: list[int] = []
    problems: list[str] = []
    for i in range(n):
        found: list[Problem] = []
        seg_size = (_size_or_none(batch["seg_width"][i]), _size_or_none(batch["seg_height"][i]))
        db_size = (_size_or_none(batch["db_width"][i]), _size_or_none(batch["db_height"][i]))
        stored = seg_size if None not in seg_size else db_size if None not in db_size else None
        data: bytes | None = None
        rel = batch["original_path"][i]
        if (read_files or stored is None) and not rel:
            found.append(Problem("file_missing", "copy", "the image row has no originalPath"))
        elif read_files or stored is None:
            try:
                data = _read_original(fs, resolve_original_path(base, rel, is_local))
            except PathOutsideRoot as exc:
                found.append(Problem("path_outside_root", "copy", str(exc)))
            except FileNotFoundError:
                found.append(Problem("file_missing", "copy", f"{rel!r} not found under the images root"))
            except Exception as exc:  # OSError, pyarrow errors, a NUL in the path ...
                text = str(exc).lower()
                code = "file_missing" if "not found" in text or "no such" in text else "file_unreadable"
                msg = f"{rel!r}: {type(exc).__name__}: {exc}"
                found.append(Problem(code, "copy", msg.replace(base, "<images root>")))
        header = image_size_from_header(data) if data is not None else None
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
        originals.append(data if read_files else None)
        widths.append(size[0])
        heights.append(size[1])
        problems.append(_with_problems(_problems_in(batch, i), found))
    table = _drop(table, ["original_path", "db_width", "db_height", "seg_width", "seg_height"])
    return _replace_columns(
        table,
        {
            "original": pa.array(originals, type=pa.binary()),
            "width": pa.array(widths, type=pa.int64()),
            "height": pa.array(heights, type=pa.int64()),
            "problems": pa.array(problems, type=pa.string()),
        },
    )


# ---------------------------------------------------------------------------------------- visualize


def visualize_stage(table: pa.Table, settings: VisualizationSettings, keep_originals: bool) -> pa.Table:
    """Draw each image's overlay (``visualization`` bytes; null when nothing to draw or it failed)."""
    batch = table.to_pydict()
    out: list[bytes | None] = []
    problems: list[str] = []
    for i in range(table.num_rows):
        data = batch["original"][i]
        found: list[Problem] = []
        encoded = None
        if data is not None:
            parsed = _parse(batch, i, "visualize")  # its problems are reported once, by the annotate stage
            try:
                encoded, _size, found = render_visualization(data, parsed, settings)
            except Exception as exc:  # a renderer bug must not sink the export
                found = [Problem("render_failed", "visualize", f"{type(exc).__name__}: {exc}")]
        out.append(encoded)
        problems.append(_with_problems(_problems_in(batch, i), found))
    table = _replace_columns(
        table,
        {"visualization": pa.array(out, type=pa.binary()), "problems": pa.array(problems, type=pa.string())},
    )
    return table if keep_originals else _drop(table, ["original"])


# ----------------------------------------------------------------------------------------- annotate


def annotate_stage(table: pa.Table, formats: tuple[str, ...]) -> pa.Table:
    """Per-image annotation parts: COCO annotations (JSON, ids added by the writer), YOLO text, JSON entry."""
    batch = table.to_pydict()
    coco: list[str | None] = []
    yolo: list[str | None] = []
    entries: list[str | None] = []
    n_objects: list[int] = []
    n_polylines: list[int] = []
    problems: list[str] = []
    for i in range(table.num_rows):
        parsed = _parse(batch, i, "annotate")
        found = list(parsed.problems)
        width, height = int(batch["width"][i]), int(batch["height"][i])
        coco_text = yolo_text = entry_text = None
        # one format failing for an image must not take the others with it
        if "coco" in formats and width > 0 and height > 0:
            try:
                annotations, coco_problems = coco_annotations_for_image(batch["index"][i], parsed, width, height)
                found.extend(coco_problems)
                coco_text = dumps_compact(annotations)
            except Exception as exc:
                found.append(Problem("stage_failed", "annotate", f"COCO: {type(exc).__name__}: {exc}"))
        if "yolo" in formats:
            try:
                yolo_text = yolo_label_text(parsed, width, height)
            except Exception as exc:
                yolo_text = ""
                found.append(Problem("stage_failed", "annotate", f"YOLO: {type(exc).__name__}: {exc}"))
            if parsed.polylines:
                found.append(
                    Problem(
                        "polyline_not_in_yolo",
                        "annotate",
                        f"{len(parsed.polylines)} polyline(s) not in the YOLO labels",
                    )
                )
        if "json" in formats:
            index, image_id, file_name = batch["index"][i], batch["image_id"][i], batch["file_name"][i]
            try:
                entry_text = dumps_compact(json_image_entry(index, image_id, file_name, width, height, parsed))
            except Exception as exc:
                found.append(Problem("stage_failed", "annotate", f"JSON export: {type(exc).__name__}: {exc}"))
                # the image is still listed, without its objects
                empty = ImagePolygons(orphan_holes=[])
                entry_text = dumps_compact(json_image_entry(index, image_id, file_name, width, height, empty))
        coco.append(coco_text)
        yolo.append(yolo_text)
        entries.append(entry_text)
        n_objects.append(len(parsed.objects))
        n_polylines.append(len(parsed.polylines))
        problems.append(_with_problems(_problems_in(batch, i), found))
    return _replace_columns(
        table,
        {
            "coco_annotations": pa.array(coco, type=pa.string()),
            "yolo_label": pa.array(yolo, type=pa.string()),
            "json_entry": pa.array(entries, type=pa.string()),
            "n_objects": pa.array(n_objects, type=pa.int64()),
            "n_polylines": pa.array(n_polylines, type=pa.int64()),
            "problems": pa.array(problems, type=pa.string()),
        },
    )


# ------------------------------------------------------------------------------------------ metrics


def metrics_stage(table: pa.Table, scale_um_per_px: float | None) -> pa.Table:
    """Per-object metric rows of each image (``metric_rows``: JSON list, exact floats)."""
    batch = table.to_pydict()
    rows_out: list[str] = []
    problems: list[str] = []
    for i in range(table.num_rows):
        parsed = _parse(batch, i, "metrics")  # its problems are reported once, by the annotate stage
        try:
            rows, found = image_metric_rows(batch["image_id"][i], batch["file_name"][i], parsed, scale_um_per_px)
            text = dumps_compact(rows)
        except Exception as exc:
            text, found = "[]", [Problem("stage_failed", "metrics", f"{type(exc).__name__}: {exc}")]
        rows_out.append(text)
        problems.append(_with_problems(_problems_in(batch, i), found))
    return _replace_columns(
        table,
        {"metric_rows": pa.array(rows_out, type=pa.string()), "problems": pa.array(problems, type=pa.string())},
    )


def failed_in_stage(before: pa.Table, after: pa.Table) -> int:
    """Images that gained a failure problem (see ``FAILURE_CODES``) between two batches of a stage."""
    old = before.column("problems").to_pylist() if "problems" in before.column_names else [None] * after.num_rows
    failed = 0
    for previous, current in zip(old, after.column("problems").to_pylist(), strict=True):
        new = (json.loads(current) if current else [])[len(json.loads(previous)) if previous else 0 :]
        failed += any(p["code"] in FAILURE_CODES for p in new)
    return failed


def finish_stage(table: pa.Table) -> pa.Table:
    """Drop the polygon text once every stage that needs it has run."""
    return _drop(table, ["polygons"])
