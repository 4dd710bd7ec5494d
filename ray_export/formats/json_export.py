"""The JSON export (``annotations/json/segmentation_data.json``).

:func:`json_image_entry` is the per-image part (exact polygon geometry, image pixels);
:class:`JsonExportWriter` streams ``{"export_time", "images"}`` from a spool in the order images were added.
"""

from __future__ import annotations

from typing import IO, Any

import numpy as np

from ..geometry import region_area, region_moments, ring_bbox, ring_length
from ..polygons import ImagePolygons, PolygonObject, Polyline
from .coco import JsonLineSpool, dumps_compact, write_text


def _points(ring: np.ndarray) -> list[list[float]]:
    return np.asarray(ring, dtype=np.float64).reshape(-1, 2).tolist()


def region_area_centroid(outer: np.ndarray, holes: list[np.ndarray]) -> tuple[float, list[float] | None]:
    """Area of ``outer`` minus ``holes`` and its area centroid (``None`` unless area > 0).

    The same functions as the metrics, so the JSON export and the metrics files agree bit for bit.
    """
    area = region_area(outer, holes)
    if not area > 0.0:
        return area, None
    moments = region_moments(outer, holes)
    centroid = [float(moments.centroid_x), float(moments.centroid_y)]
    return area, centroid if all(np.isfinite(centroid)) else None


def _object_entry(obj: PolygonObject) -> dict:
    area, centroid = region_area_centroid(obj.outer, obj.holes)
    return {
        "number": int(obj.number),
        "outer": _points(obj.outer),
        "holes": [_points(h) for h in obj.holes],
        "area": float(area),
        "perimeter": ring_length(obj.outer, closed=True),
        "bbox": list(ring_bbox(obj.outer)),
        "centroid": centroid,
        "confidence": obj.confidence,
        "complete": bool(obj.complete),
    }


def _polyline_entry(line: Polyline) -> dict:
    return {
        "number": int(line.number),
        "points": _points(line.points),
        "length": ring_length(line.points, closed=False),
        "part_class": line.part_class,
        "instance_id": line.instance_id,
    }


def json_image_entry(index: int, image_id: str, file_name: str, width: int, height: int, parsed: ImagePolygons) -> dict:
    """One ``images[]`` entry: the image's identity and size, its objects, polylines and orphan holes."""
    return {
        "index": int(index),
        "image_id": str(image_id),
        "file_name": str(file_name),
        "width": int(width or 0),
        "height": int(height or 0),
        "objects": [_object_entry(obj) for obj in parsed.objects],
        "polylines": [_polyline_entry(line) for line in parsed.polylines],
        "orphan_holes": [_points(h) for h in parsed.orphan_holes],
    }


class JsonExportWriter:
    """Collects image entries in index order and writes the JSON export in one stream."""

    def __init__(self, export_time: str, spool_dir: str | None = None) -> None:
        self.export_time = export_time
        self._images = JsonLineSpool(spool_dir)

    @property
    def image_count(self) -> int:
        """Images added so far."""
        return self._images.count

    def add_image(self, entry: dict) -> None:
        """Add one image entry (calls in index order)."""
        self._images.append(entry)

    def write(self, fileobj: IO[Any]) -> None:
        """Write ``{"export_time": ..., "images": [...]}`` to a binary (UTF-8) or text file object."""
        write_text(fileobj, '{"export_time":' + dumps_compact(self.export_time) + ',"images":[')
        self._images.write_array_items(fileobj)
        write_text(fileobj, "]}")

    def close(self) -> None:
        """Remove the spool."""
        self._images.close()

    def __enter__(self) -> JsonExportWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
