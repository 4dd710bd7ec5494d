"""Polygons on the pixel grid: the fixed-point coordinates OpenCV draws with and an object's fill mask.

Integer coordinates are pixel centres; rings are filled with ``cv2.fillPoly`` (8-connected edges, 4
fractional bits), so a pixel is filled when its centre is inside the ring or the ring's edge crosses it.
The visualizations and the raster metrics of project types share these rules.
"""

from __future__ import annotations

import cv2
import numpy as np

from .polygons import PolygonObject

#: Fractional bits of the fixed-point coordinates given to OpenCV (``shift``).
SHIFT = 4
ONE = 1 << SHIFT
COORD_LIMIT = float(1 << 22)  # keeps fixed-point coordinates far inside int32


def fixed_point(points: np.ndarray, offset_x: int = 0, offset_y: int = 0) -> np.ndarray:
    """Float pixel coordinates -> ``(n, 1, 2)`` int32 fixed point for OpenCV's ``shift``."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) - (offset_x, offset_y)
    pts = np.clip(pts, -COORD_LIMIT, COORD_LIMIT)
    return np.rint(pts * ONE).astype(np.int32).reshape(-1, 1, 2)


def object_mask(obj: PolygonObject, width: int, height: int) -> tuple[np.ndarray, int, int] | None:
    """The object's fill mask (outer minus holes) cut to its bounding box inside the image.

    Returns ``(mask, x0, y0)`` with a uint8 0/1 mask whose top-left pixel is image pixel ``(x0, y0)``,
    or None when the object covers no pixel of the image.
    """
    outer = obj.outer
    if len(outer) < 3 or width <= 0 or height <= 0:
        return None
    min_xy = np.floor(outer.min(axis=0))
    max_xy = np.ceil(outer.max(axis=0))
    x0 = int(max(min_xy[0], 0))
    y0 = int(max(min_xy[1], 0))
    x1 = int(min(max_xy[0] + 1, width))
    y1 = int(min(max_xy[1] + 1, height))
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    cv2.fillPoly(mask, [fixed_point(outer, x0, y0)], 1, cv2.LINE_8, SHIFT)
    holes = [fixed_point(hole, x0, y0) for hole in obj.holes if len(hole) >= 3]
    if holes:
        for hole in holes:
            cv2.fillPoly(mask, [hole], 0, cv2.LINE_8, SHIFT)
    if not mask.any():
        return None
    return mask, x0, y0
