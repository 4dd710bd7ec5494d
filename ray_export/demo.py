"""A self-contained demo project: a SQLite database with the SpheroSeg schema and synthetic images.

:func:`build_demo_project` writes ``<workdir>/spheroseg-demo.db`` and image files under
``<workdir>/uploads/<project id>/``; ``originalPath`` values are relative to ``workdir`` (the images
root, which is also the SQLite file's folder). Everything is a deterministic function of
``(project type, n_images, seed, size)``; an existing matching build is reused.

The data exercises the exporter's rules: 8- and 16-bit grayscale PNG/TIFF, RGB JPEG and TIFF, objects
with holes (``parent_id``), a polyline, an object cut by the border (``complete: false``), an image
without segmentation, an image with ``displayOrder`` null, a ``displayOrder`` tie decided by
``createdAt``, two images with the same file name in different folders and a video container row
that must never be exported. The other project types (``spheroid_invasive``, ``wound``, ``sperm``,
``microcapsule``, ``microtubules``) come from :mod:`ray_export.demo_types`.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .demo_types import DEFAULT_TYPE, PROJECT_TYPES, build_type_demo, default_image_count, write_image
from .sources import POSTGRES, SQLITE, parse_timestamp, sqlite_readonly_uri

DEMO_DB_NAME = "spheroseg-demo.db"
DEMO_TITLE = "Demo spheroids"
DEMO_VERSION = "1"
_MARKER_TABLE = "ray_export_demo"

_SIZES = [(1280, 960), (1600, 1200), (1024, 1024)]
#: (kind, file extension, MIME type)
_FORMATS = [
    ("gray8", ".png", "image/png"),
    ("gray16", ".png", "image/png"),
    ("gray16", ".tif", "image/tiff"),
    ("rgb", ".jpg", "image/jpeg"),
    ("rgb", ".tif", "image/tiff"),
]
_PIXEL_SIZE_UM = 0.645


@dataclass(frozen=True)
class DemoProject:
    """Where the demo lives."""

    db_path: Path
    images_root: Path
    project_id: str
    title: str
    project_type: str = DEFAULT_TYPE


# --------------------------------------------------------------------------------------------------
# schema


def schema_statements(kind: str) -> list[str]:
    """``CREATE TABLE``/``INDEX`` statements of the SpheroSeg tables for ``kind`` (sqlite or postgres)."""
    ts = "TIMESTAMP(3)" if kind == POSTGRES else "DATETIME"
    real = "DOUBLE PRECISION" if kind == POSTGRES else "REAL"
    return [
        f"""CREATE TABLE IF NOT EXISTS projects (
            id TEXT PRIMARY KEY NOT NULL,
            title TEXT NOT NULL,
            description TEXT,
            type TEXT NOT NULL DEFAULT 'spheroid',
            "userId" TEXT,
            "mtTypeLabels" TEXT,
            "createdAt" {ts} NOT NULL DEFAULT CURRENT_TIMESTAMP,
            "updatedAt" {ts} NOT NULL DEFAULT CURRENT_TIMESTAMP
        )""",
        f"""CREATE TABLE IF NOT EXISTS images (
            id TEXT PRIMARY KEY NOT NULL,
            name TEXT NOT NULL,
            "originalPath" TEXT NOT NULL,
            "thumbnailPath" TEXT,
            "projectId" TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            width INTEGER,
            height INTEGER,
            "fileSize" INTEGER,
            "mimeType" TEXT,
            "segmentationStatus" TEXT NOT NULL DEFAULT 'no_segmentation',
            "displayOrder" INTEGER,
            "isVideoContainer" BOOLEAN NOT NULL DEFAULT FALSE,
            "parentVideoId" TEXT,
            "frameIndex" INTEGER,
            "frameIntervalMs" {real},
            "pixelSizeUm" {real},
            "createdAt" {ts} NOT NULL DEFAULT CURRENT_TIMESTAMP,
            "updatedAt" {ts} NOT NULL DEFAULT CURRENT_TIMESTAMP
        )""",
        'CREATE INDEX IF NOT EXISTS "images_projectId_idx" ON images ("projectId")',
        f"""CREATE TABLE IF NOT EXISTS segmentations (
            id TEXT PRIMARY KEY NOT NULL,
            "imageId" TEXT NOT NULL UNIQUE REFERENCES images(id) ON DELETE CASCADE,
            polygons TEXT NOT NULL,
            model TEXT NOT NULL DEFAULT 'hrnet',
            threshold {real} NOT NULL DEFAULT 0.5,
            confidence {real},
            "processingTime" INTEGER,
            "imageWidth" INTEGER,
            "imageHeight" INTEGER,
            "createdAt" {ts} NOT NULL DEFAULT CURRENT_TIMESTAMP,
            "updatedAt" {ts} NOT NULL DEFAULT CURRENT_TIMESTAMP
        )""",
    ] + ([  # tables made by an earlier version of these statements gain the newer columns
        'ALTER TABLE projects ADD COLUMN IF NOT EXISTS "mtTypeLabels" TEXT',
        'ALTER TABLE images ADD COLUMN IF NOT EXISTS "frameIntervalMs" DOUBLE PRECISION',
    ] if kind == POSTGRES else [])


def write_schema(conn: Any, kind: str) -> None:
    """Create the SpheroSeg tables (if missing) on an open sqlite3 or psycopg connection."""
    cur = conn.cursor()
    try:
        for statement in schema_statements(kind):
            cur.execute(statement)
    finally:
        cur.close()
    conn.commit()


#: table -> (column, value kind) for copying; kinds: text, int, float, bool, ts
TABLE_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "projects": [
        ("id", "text"), ("title", "text"), ("description", "text"), ("type", "text"), ("userId", "text"),
        ("mtTypeLabels", "text"), ("createdAt", "ts"), ("updatedAt", "ts"),
    ],
    "images": [
        ("id", "text"), ("name", "text"), ("originalPath", "text"), ("thumbnailPath", "text"),
        ("projectId", "text"), ("width", "int"), ("height", "int"), ("fileSize", "int"), ("mimeType", "text"),
        ("segmentationStatus", "text"), ("displayOrder", "int"), ("isVideoContainer", "bool"),
        ("parentVideoId", "text"), ("frameIndex", "int"), ("frameIntervalMs", "float"), ("pixelSizeUm", "float"),
        ("createdAt", "ts"), ("updatedAt", "ts"),
    ],
    "segmentations": [
        ("id", "text"), ("imageId", "text"), ("polygons", "text"), ("model", "text"), ("threshold", "float"),
        ("confidence", "float"), ("processingTime", "int"), ("imageWidth", "int"), ("imageHeight", "int"),
        ("createdAt", "ts"), ("updatedAt", "ts"),
    ],
}


def insert_rows(conn: Any, kind: str, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert dict rows (keys = column names) with bound parameters; missing keys take the defaults."""
    if not rows:
        return
    known = [c for c, _ in TABLE_COLUMNS[table]]
    columns = [c for c in known if any(c in r for r in rows)]
    mark = "%s" if kind == POSTGRES else "?"
    names = ", ".join(f'"{c}"' for c in columns)
    sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join([mark] * len(columns))})"
    cur = conn.cursor()
    try:
        cur.executemany(sql, [tuple(r.get(c) for c in columns) for r in rows])
    finally:
        cur.close()


def copy_project_to_postgres(sqlite_path: Path | str, dsn: str) -> None:
    """Copy every project, image and segmentation of a SQLite SpheroSeg file into PostgreSQL.

    Creates the tables if needed and replaces rows with the same ids; epoch-ms and text timestamps
    become ``timestamp(3)`` values (UTC), integer booleans become booleans.
    """
    import psycopg

    src = sqlite3.connect(sqlite_readonly_uri(sqlite_path), uri=True)
    try:
        tables: dict[str, list[dict[str, Any]]] = {}
        for table, spec in TABLE_COLUMNS.items():
            present = {r[1] for r in src.execute(f"PRAGMA table_info({table})")}
            columns = [(c, k) for c, k in spec if c in present]
            select = ", ".join(f'"{c}"' for c, _ in columns)
            rows = []
            for raw in src.execute(f"SELECT {select} FROM {table}"):
                rows.append({c: _to_postgres(v, k) for (c, k), v in zip(columns, raw, strict=True)})
            tables[table] = rows
    finally:
        src.close()

    with psycopg.connect(dsn) as conn:
        write_schema(conn, POSTGRES)
        with conn.cursor() as cur:
            project_ids = [r["id"] for r in tables["projects"]]
            image_ids = [r["id"] for r in tables["images"]]
            seg_ids = [r["id"] for r in tables["segmentations"]]
            cur.execute("DELETE FROM segmentations WHERE id = ANY(%s)", (seg_ids,))
            cur.execute('DELETE FROM segmentations WHERE "imageId" = ANY(%s)', (image_ids,))
            cur.execute("DELETE FROM images WHERE id = ANY(%s)", (image_ids,))
            cur.execute("DELETE FROM projects WHERE id = ANY(%s)", (project_ids,))
        for table in ("projects", "images", "segmentations"):
            insert_rows(conn, POSTGRES, table, tables[table])
        conn.commit()


def _to_postgres(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "ts":
        stamp = parse_timestamp(value)
        return None if stamp is None else stamp.replace(tzinfo=None)
    if kind == "bool":
        if isinstance(value, str):
            return value.strip().lower() in ("1", "t", "true", "yes")
        return bool(value)
    return value


# --------------------------------------------------------------------------------------------------
# synthetic content


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _radius_profile(rng: np.random.Generator, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Fourier coefficients of a wobbly closed outline: r(θ) = R (1 + Σ a_k cos(kθ + φ_k))."""
    amplitudes = rng.uniform(0.0, 0.07, size=3)
    phases = rng.uniform(0.0, 2 * math.pi, size=3)
    return amplitudes * radius, phases


def _radius(theta: np.ndarray, radius: float, amplitudes: np.ndarray, phases: np.ndarray) -> np.ndarray:
    orders = np.arange(2, 2 + len(amplitudes))
    wobble = np.cos(theta[..., None] * orders + phases) @ amplitudes
    return radius + wobble


@dataclass
class _Blob:
    cx: float
    cy: float
    radius: float
    amplitudes: np.ndarray
    phases: np.ndarray
    hole: tuple[float, float, float] | None  # (cx, cy, radius)


def _place_blobs(rng: np.random.Generator, width: int, height: int, count: int, border_blob: bool) -> list[_Blob]:
    blobs: list[_Blob] = []
    short = min(width, height)
    tries = 0
    while len(blobs) < count and tries < 500:
        tries += 1
        radius = float(rng.uniform(0.05, 0.11) * short)
        if border_blob and not blobs:
            cx, cy = float(radius * 0.4), float(rng.uniform(0.3, 0.7) * height)
        else:
            cx = float(rng.uniform(radius * 1.3, width - radius * 1.3))
            cy = float(rng.uniform(radius * 1.3, height - radius * 1.3))
        if any(math.hypot(cx - b.cx, cy - b.cy) < 1.25 * (radius + b.radius) for b in blobs):
            continue
        amplitudes, phases = _radius_profile(rng, radius)
        blobs.append(_Blob(cx, cy, radius, amplitudes, phases, None))
    return blobs


def _render(rng: np.random.Generator, width: int, height: int, blobs: list[_Blob]) -> np.ndarray:
    """Float image in 0..1: bright noisy background, darker soft-edged spheroids, brighter lumens."""
    import cv2

    yy = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    image = 0.78 - 0.06 * (xx * xx + yy * yy)  # vignetting
    image = np.broadcast_to(image, (height, width)).astype(np.float32)
    for blob in blobs:
        reach = blob.radius * 1.3
        x0, x1 = max(0, int(blob.cx - reach)), min(width, int(blob.cx + reach) + 1)
        y0, y1 = max(0, int(blob.cy - reach)), min(height, int(blob.cy + reach) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - blob.cx
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - blob.cy
        rho = np.hypot(dx, dy)
        edge = _radius(np.arctan2(dy, dx), blob.radius, blob.amplitudes, blob.phases).astype(np.float32)
        inside = np.clip((edge - rho) / (0.12 * blob.radius), 0.0, 1.0)
        texture = 0.05 * np.cos(rho / (0.09 * blob.radius))
        image[y0:y1, x0:x1] -= inside * (0.42 + texture)
        if blob.hole is not None:
            hx, hy, hr = blob.hole
            hole_rho = np.hypot(np.arange(x0, x1, dtype=np.float32)[None, :] - hx,
                                np.arange(y0, y1, dtype=np.float32)[:, None] - hy)
            image[y0:y1, x0:x1] += np.clip((hr - hole_rho) / (0.15 * hr), 0.0, 1.0) * 0.35
    image = cv2.GaussianBlur(image, (0, 0), 2.0)
    image += rng.normal(0.0, 0.025, size=(height, width)).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def _ring(cx: float, cy: float, radius: float, amplitudes: np.ndarray, phases: np.ndarray, n: int,
          width: int, height: int) -> tuple[list[dict[str, float]], bool]:
    """Outline points (2 decimals) and whether the outline had to be clipped to the image."""
    theta = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    r = _radius(theta, radius, amplitudes, phases)
    xs = cx + r * np.cos(theta)
    ys = cy + r * np.sin(theta)
    clipped = bool((xs < 0).any() or (ys < 0).any() or (xs > width - 1).any() or (ys > height - 1).any())
    xs = np.clip(xs, 0, width - 1)
    ys = np.clip(ys, 0, height - 1)
    return [{"x": round(float(x), 2), "y": round(float(y), 2)} for x, y in zip(xs, ys, strict=True)], clipped


def _polygons(rng: np.random.Generator, ids: random.Random, blobs: list[_Blob], width: int, height: int,
              with_polyline: bool) -> list[dict[str, Any]]:
    elements: list[dict[str, Any]] = []
    for blob in blobs:
        n_points = int(np.clip(round(blob.radius * 1.2), 60, 200))
        points, clipped = _ring(blob.cx, blob.cy, blob.radius, blob.amplitudes, blob.phases, n_points, width, height)
        element_id = _uuid(ids)
        external: dict[str, Any] = {
            "id": element_id,
            "points": points,
            "type": "external",
            "class": "spheroid",
            "confidence": round(float(rng.uniform(0.8, 0.99)), 3),
        }
        if clipped:
            external["complete"] = False
        elements.append(external)
        if blob.hole is not None:
            hx, hy, hr = blob.hole
            zeros = np.zeros(3)
            hole_points, _ = _ring(hx, hy, hr, zeros, zeros, 40, width, height)
            elements.append(
                {"id": _uuid(ids), "points": hole_points, "type": "internal", "parent_id": element_id,
                 "confidence": external["confidence"]}
            )
    if with_polyline:
        t = np.linspace(0.0, 1.0, 30)
        x0, y0 = width * 0.15, height * 0.85
        xs = x0 + t * width * 0.5
        ys = y0 - t * height * 0.1 + np.sin(t * 6.0) * height * 0.03
        elements.append(
            {"id": _uuid(ids), "geometry": "polyline", "type": "external", "partClass": "tail", "instanceId": 1,
             "points": [{"x": round(float(x), 2), "y": round(float(y), 2)} for x, y in zip(xs, ys, strict=True)]}
        )
    return elements


def _encode(image: np.ndarray, kind: str, path: Path) -> None:
    if kind == "gray8":
        data = (image * 255.0 + 0.5).astype(np.uint8)
    elif kind == "gray16":
        data = (image * 60000.0 + 0.5).astype(np.uint16)
    else:
        tint = np.array([0.92, 0.97, 1.0], dtype=np.float32)  # B, G, R: a warm brightfield cast
        data = (image[..., None] * tint * 255.0 + 0.5).astype(np.uint8)
    write_image(data, path)


# --------------------------------------------------------------------------------------------------
# the project


def _epoch_ms(year: int, month: int, day: int, hour: int = 9) -> int:
    return int(datetime(year, month, day, hour, tzinfo=timezone.utc).timestamp() * 1000)


def _plan(n_images: int, seed: int, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Rows (without pixel data) of the demo project."""
    ids = random.Random(f"ray-export-demo/{seed}")
    project_id = _uuid(ids)
    user_id = _uuid(ids)
    base_ms = _epoch_ms(2024, 3, 1) + seed * 86_400_000
    images: list[dict[str, Any]] = []
    for k in range(n_images):
        fmt_kind, ext, mime = _FORMATS[k % len(_FORMATS)]
        width, height = size or _SIZES[k % len(_SIZES)]
        folder = f"day{1 + k % 2}"
        file_name = f"spheroid_{k + 1:03d}{ext}"
        if k in (3, 4):  # the same file name in two folders
            fmt_kind, ext, mime = "gray8", ".png", "image/png"
            folder, file_name = f"day{k - 2}", "spheroid.png"
        display_order: int | None = k
        created = base_ms + k * 60_000
        if k == 3:  # ties with image 2 on displayOrder, created earlier -> exported before it
            display_order = 2
            created = base_ms - 60_000
        if k == 4:
            display_order = None
        images.append(
            {
                "k": k,
                "kind": fmt_kind,
                "id": _uuid(ids),
                "name": file_name,
                "originalPath": f"uploads/{project_id}/{folder}/{file_name}",
                "projectId": project_id,
                "width": None if k == 6 else width,
                "height": None if k == 6 else height,
                "true_size": (width, height),
                "mimeType": mime,
                "segmentationStatus": "segmented",
                "displayOrder": display_order,
                "isVideoContainer": 0,
                "pixelSizeUm": _PIXEL_SIZE_UM,
                "createdAt": created,
                "updatedAt": created + 30_000,
                "segmented": k != 5,
                "holes": k % 4 == 1,
                "polyline": k == 2,
                "border_blob": k == 0,
            }
        )
    video = {
        "id": _uuid(ids),
        "name": "timelapse.mp4",
        "originalPath": f"uploads/{project_id}/timelapse.mp4",
        "projectId": project_id,
        "width": 1280,
        "height": 960,
        "mimeType": "video/mp4",
        "segmentationStatus": "no_segmentation",
        "displayOrder": 0,
        "isVideoContainer": 1,
        "pixelSizeUm": _PIXEL_SIZE_UM,
        "createdAt": base_ms - 120_000,
        "updatedAt": base_ms - 120_000,
    }
    project = {
        "id": project_id,
        "title": DEMO_TITLE,
        "description": "Synthetic spheroid images generated by ray-export demo",
        "type": "spheroid",
        "userId": user_id,
        "createdAt": base_ms - 3_600_000,
        "updatedAt": base_ms - 3_600_000,
    }
    return {"project": project, "images": images, "video": video, "ids": ids, "base_ms": base_ms}


def _marker(
    n_images: int, seed: int, size: tuple[int, int] | None, project_type: str = DEFAULT_TYPE
) -> dict[str, str]:
    """What identifies a build: a fixed image size is recorded only when one was asked for, the project
    type only when it is not the default."""
    marker = {"version": DEMO_VERSION, "n_images": str(n_images), "seed": str(seed)}
    if size is not None:
        marker["size"] = f"{size[0]}x{size[1]}"
    if project_type != DEFAULT_TYPE:
        marker["type"] = project_type
    return marker


def _existing_demo(
    db_path: Path,
    workdir: Path,
    n_images: int,
    seed: int,
    size: tuple[int, int] | None = None,
    project_type: str = DEFAULT_TYPE,
) -> DemoProject | None:
    if not db_path.is_file():
        return None
    try:
        conn = sqlite3.connect(sqlite_readonly_uri(db_path), uri=True)
        try:
            marker = dict(conn.execute(f"SELECT key, value FROM {_MARKER_TABLE}").fetchall())
            paths = [r[0] for r in conn.execute('SELECT "originalPath" FROM images WHERE NOT "isVideoContainer"')]
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    expected = _marker(n_images, seed, size, project_type)
    if any(marker.get(k) != v for k, v in expected.items()):
        return None
    if any((key in marker) != (key in expected) for key in ("size", "type")):
        return None
    if len(paths) != n_images or not all((workdir / p).is_file() for p in paths):
        return None
    return DemoProject(db_path, workdir, marker["project_id"], marker["title"], project_type)


def build_demo_project(
    workdir: Path,
    n_images: int | None = None,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    project_type: str = DEFAULT_TYPE,
) -> DemoProject:
    """Create (or reuse) the demo SQLite database and image files under ``workdir``.

    ``project_type`` is one of :data:`~ray_export.demo_types.PROJECT_TYPES`; ``n_images`` defaults to the
    type's count (12 spheroid images; see :data:`~ray_export.demo_types.DEFAULT_IMAGE_COUNTS`).
    ``size`` (width, height) gives every image that size; by default spheroid sizes cycle through a few
    camera sizes and the other types use 640×480.
    """
    if project_type not in PROJECT_TYPES:
        raise ValueError(f"project_type must be one of {', '.join(PROJECT_TYPES)}, not {project_type!r}")
    if n_images is None:
        n_images = default_image_count(project_type)
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, not {n_images!r}")
    if size is not None and not (len(size) == 2 and all(isinstance(v, int) and 16 <= v <= 20_000 for v in size)):
        raise ValueError(f"size must be (width, height) with each 16..20000, not {size!r}")
    workdir = Path(workdir).resolve()
    db_path = workdir / DEMO_DB_NAME
    existing = _existing_demo(db_path, workdir, n_images, seed, size, project_type)
    if existing is not None:
        return existing
    if project_type != DEFAULT_TYPE:
        return _build_typed_demo(workdir, db_path, n_images, seed, size, project_type)

    plan = _plan(n_images, seed, size)
    project = plan["project"]
    ids: random.Random = plan["ids"]
    workdir.mkdir(parents=True, exist_ok=True)
    project_dir = workdir / "uploads" / project["id"]
    if project_dir.exists():
        shutil.rmtree(project_dir)

    image_rows: list[dict[str, Any]] = []
    segmentation_rows: list[dict[str, Any]] = []
    for spec in plan["images"]:
        k = spec["k"]
        rng = np.random.default_rng([seed, k])
        width, height = spec["true_size"]
        blobs = _place_blobs(rng, width, height, int(rng.integers(3, 7)), spec["border_blob"])
        if spec["holes"]:
            for blob in blobs[:2]:
                blob.hole = (blob.cx + 0.1 * blob.radius, blob.cy - 0.05 * blob.radius, 0.3 * blob.radius)
        _encode(_render(rng, width, height, blobs), spec["kind"], workdir / spec["originalPath"])
        file_size = (workdir / spec["originalPath"]).stat().st_size
        image_rows.append(
            {key: spec[key] for key in (
                "id", "name", "originalPath", "projectId", "width", "height", "mimeType", "segmentationStatus",
                "displayOrder", "isVideoContainer", "pixelSizeUm", "createdAt", "updatedAt",
            )} | {"fileSize": file_size}
        )
        if not spec["segmented"]:
            image_rows[-1]["segmentationStatus"] = "no_segmentation"
            continue
        elements = _polygons(rng, ids, blobs, width, height, spec["polyline"])
        segmentation_rows.append(
            {
                "id": _uuid(ids),
                "imageId": spec["id"],
                "polygons": json.dumps(elements, separators=(",", ":")),
                "model": "hrnet",
                "threshold": 0.5,
                "confidence": round(float(rng.uniform(0.85, 0.97)), 3),
                "processingTime": int(rng.integers(300, 2000)),
                "imageWidth": width,
                "imageHeight": height,
                "createdAt": spec["updatedAt"] + 10_000,
                "updatedAt": spec["updatedAt"] + 20_000 + k * 1_000,
            }
        )
    image_rows.append(plan["video"])
    _store(db_path, project, image_rows, segmentation_rows, _marker(n_images, seed, size))
    return DemoProject(db_path, workdir, project["id"], project["title"])


def _build_typed_demo(
    workdir: Path, db_path: Path, n_images: int, seed: int, size: tuple[int, int] | None, project_type: str
) -> DemoProject:
    """Render and store the demo of a project type other than plain spheroids."""
    ids = random.Random(f"ray-export-demo/{project_type}/{seed}")
    project_dir = workdir / "uploads" / _uuid(ids)
    workdir.mkdir(parents=True, exist_ok=True)
    if project_dir.exists():
        shutil.rmtree(project_dir)
    typed = build_type_demo(project_type, workdir, n_images, seed, size)
    project = typed.project
    _store(db_path, project, typed.images, typed.segmentations, _marker(n_images, seed, size, project_type))
    return DemoProject(db_path, workdir, project["id"], project["title"], project_type)


def _store(
    db_path: Path,
    project: dict[str, Any],
    image_rows: list[dict[str, Any]],
    segmentation_rows: list[dict[str, Any]],
    marker: dict[str, str],
) -> None:
    """Write the demo's rows and its marker into a fresh SQLite file that then replaces ``db_path``."""
    # Store rows in an order unrelated to the export order.
    image_rows = sorted(image_rows, key=lambda r: r["id"])
    tmp_path = db_path.with_name(f".{db_path.name}.{os.getpid()}.tmp")
    tmp_path.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp_path)
    try:
        write_schema(conn, SQLITE)
        insert_rows(conn, SQLITE, "projects", [project])
        insert_rows(conn, SQLITE, "images", image_rows)
        insert_rows(conn, SQLITE, "segmentations", segmentation_rows)
        conn.execute(f"CREATE TABLE {_MARKER_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        marker = marker | {"project_id": project["id"], "title": project["title"]}
        conn.executemany(f"INSERT INTO {_MARKER_TABLE} (key, value) VALUES (?, ?)", sorted(marker.items()))
        conn.commit()
    finally:
        conn.close()
    os.replace(tmp_path, db_path)
