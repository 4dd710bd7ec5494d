"""Exact polygon geometry on numpy arrays.

A *ring* is an ``(n, 2)`` float64 array of vertices in image pixels (x to the right, y downwards),
not closed (the last vertex is joined to the first implicitly).
"""

from __future__ import annotations

import numpy as np


def ring_signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a ring; positive when the vertices run clockwise on screen (y down)."""
    x = ring[:, 0]
    y = ring[:, 1]
    # Shifted-origin shoelace: subtracting the first vertex keeps precision for large coordinates.
    x = x - x[0]
    y = y - y[0]
    return float(0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def ring_length(ring: np.ndarray, closed: bool = True) -> float:
    """Sum of the edge lengths of a ring (``closed``) or an open polyline."""
    if len(ring) < 2:
        return 0.0
    d = np.diff(ring, axis=0)
    total = float(np.sum(np.hypot(d[:, 0], d[:, 1])))
    if closed:
        total += float(np.hypot(*(ring[0] - ring[-1])))
    return total


def points_in_ring(points: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Even-odd test of ``(m, 2)`` points against a ring; returns a boolean array of length m.

    Points exactly on an edge count as inside.
    """
    px = points[:, 0][:, None]
    py = points[:, 1][:, None]
    x0 = ring[:, 0][None, :]
    y0 = ring[:, 1][None, :]
    x1 = np.roll(ring[:, 0], -1)[None, :]
    y1 = np.roll(ring[:, 1], -1)[None, :]
    crosses = (y0 > py) != (y1 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    inside = np.logical_xor.reduce(crosses & (px < x_at), axis=1)
    # Boundary: the point lies on a segment (collinear and within its box).
    cross = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
    scale = np.maximum(np.abs(x1 - x0) + np.abs(y1 - y0), 1.0)
    on_edge = (
        (np.abs(cross) <= 1e-9 * scale)
        & (px >= np.minimum(x0, x1))
        & (px <= np.maximum(x0, x1))
        & (py >= np.minimum(y0, y1))
        & (py <= np.maximum(y0, y1))
    )
    return inside | np.any(on_edge, axis=1)


def ring_bbox(ring: np.ndarray) -> tuple[float, float, float, float]:
    """``(min_x, min_y, width, height)`` of a ring's vertices."""
    lo = ring.min(axis=0)
    hi = ring.max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])
