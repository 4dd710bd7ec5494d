"""Small SpheroSeg projects in SQLite files, written the way the tests need them."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ray_export.demo import insert_rows, write_schema

SQLITE = "sqlite"

#: size the tests' images are drawn at (width, height)
IMAGE_SIZE = (50, 40)

#: one image row: (id, name, originalPath) of an image of IMAGE_SIZE, or (id, name, originalPath, width, height)
ImageSpec = tuple[str, str, str] | tuple[str, str, str, int | None, int | None]


def segmentation_row(image_id: str, polygons: str, **fields: Any) -> dict[str, Any]:
    """A segmentation row of ``image_id``: id ``s<image id>``, created at 1, updated at 3000; ``fields`` override."""
    row: dict[str, Any] = {"id": f"s{image_id}", "imageId": image_id, "polygons": polygons, "createdAt": 1,
                           "updatedAt": 3000}  # fmt: skip
    row.update(fields)
    return row


def image_rows(project_id: str, images: Sequence[ImageSpec], updated_step: int = 1) -> list[dict[str, Any]]:
    """Image rows in list order: ``displayOrder`` k, created at 1, updated at ``2000 + k * updated_step``."""
    rows = []
    for k, (image_id, name, path, *size) in enumerate(images):
        width, height = size or IMAGE_SIZE
        rows.append({
            "id": image_id, "name": name, "originalPath": path, "projectId": project_id, "width": width,
            "height": height, "displayOrder": k, "isVideoContainer": 0, "createdAt": 1,
            "updatedAt": 2000 + k * updated_step,
        })  # fmt: skip
    return rows


def write_sqlite_rows(
    db_path: Path | str,
    projects: Iterable[dict[str, Any]],
    images: Iterable[dict[str, Any]],
    segmentations: Iterable[dict[str, Any]] = (),
) -> Path:
    """Create the SpheroSeg tables in the SQLite file ``db_path`` and insert the given rows, in order."""
    con = sqlite3.connect(db_path)
    try:
        write_schema(con, SQLITE)
        insert_rows(con, SQLITE, "projects", list(projects))
        insert_rows(con, SQLITE, "images", list(images))
        insert_rows(con, SQLITE, "segmentations", list(segmentations))
        con.commit()
    finally:
        con.close()
    return Path(db_path)


def write_sqlite_project(
    db_path: Path | str,
    project: tuple[str, str],
    images: Sequence[ImageSpec],
    segmentations: Iterable[dict[str, Any]] = (),
    *,
    updated_step: int = 1,
) -> Path:
    """Write one project ``(id, title)`` (created at 1, updated at 1000) with its images and segmentations.

    Images are ``(id, name, originalPath[, width, height])`` tuples (see :func:`image_rows`); segmentations
    are rows such as :func:`segmentation_row` makes.
    """
    project_id, title = project
    return write_sqlite_rows(
        db_path,
        [{"id": project_id, "title": title, "createdAt": 1, "updatedAt": 1000}],
        image_rows(project_id, images, updated_step),
        segmentations,
    )
