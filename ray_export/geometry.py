"""Exact polygon geometry on numpy arrays.

A *ring* is an ``(n, 2)`` float64 array of vertices in image pixels (x to the right, y downwards),
not closed (the last vertex is joined to the first implicitly).
"""

from __future__ import annotations

from typing import NamedTuple

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


def region_area(outer: np.ndarray, holes: list[np.ndarray] | tuple[np.ndarray, ...] = ()) -> float:
    """Area of a region: ``|shoelace(outer)| - sum(|shoelace(hole)|)``."""
    return abs(ring_signed_area(outer)) - sum(abs(ring_signed_area(h)) for h in holes)


def _cross_sign_positive(xs: list[float], ys: list[float], o: int, a: int, b: int) -> bool:
    return (xs[a] - xs[o]) * (ys[b] - ys[o]) - (ys[a] - ys[o]) * (xs[b] - xs[o]) > 0


def _extreme_octagon_mask(local: np.ndarray) -> np.ndarray:
    """Mask of points that may lie on the hull: drops points strictly inside the octagon spanned
    by the extreme points in x, y, x+y and x-y (Akl-Toussaint filter)."""
    x = local[:, 0]
    y = local[:, 1]
    order = [
        int(np.argmin(x)),
        int(np.argmin(x + y)),
        int(np.argmin(y)),
        int(np.argmax(x - y)),
        int(np.argmax(x)),
        int(np.argmax(x + y)),
        int(np.argmax(y)),
        int(np.argmin(x - y)),
    ]
    corners: list[int] = []
    for i in order:
        if not corners or not np.array_equal(local[i], local[corners[-1]]):
            corners.append(i)
    while len(corners) > 1 and np.array_equal(local[corners[0]], local[corners[-1]]):
        corners.pop()
    keep = np.ones(len(local), dtype=bool)
    if len(corners) < 3:
        return keep
    poly = local[corners]
    edges = np.roll(poly, -1, axis=0) - poly
    span = float(np.max(np.ptp(local, axis=0)))
    margin = 1e-12 * span * span
    rel_x = local[:, 0][:, None] - poly[:, 0][None, :]
    rel_y = local[:, 1][:, None] - poly[:, 1][None, :]
    cross = edges[:, 0][None, :] * rel_y - edges[:, 1][None, :] * rel_x
    inside = np.all(cross > margin, axis=1)
    keep[inside] = False
    return keep


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull of ``(n, 2)`` points by Andrew's monotone chain.

    Returns the hull vertices (original coordinates, collinear vertices dropped) in the order that
    gives a positive :func:`ring_signed_area`; 1 or 2 rows when the points coincide or are collinear.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return pts.copy()
    order = np.lexsort((pts[:, 1], pts[:, 0]))
    pts = pts[order]
    distinct = np.ones(len(pts), dtype=bool)
    distinct[1:] = np.any(pts[1:] != pts[:-1], axis=1)
    pts = pts[distinct]
    if len(pts) < 3:
        return pts
    local = pts - pts[0]
    if len(pts) > 32:
        keep = _extreme_octagon_mask(local)
        pts = pts[keep]
        local = local[keep]
    xs = local[:, 0].tolist()
    ys = local[:, 1].tolist()
    n = len(xs)

    def chain(indices: range) -> list[int]:
        out: list[int] = []
        for i in indices:
            while len(out) >= 2 and not _cross_sign_positive(xs, ys, out[-2], out[-1], i):
                out.pop()
            out.append(i)
        return out

    lower = chain(range(n))
    upper = chain(range(n - 1, -1, -1))
    hull_idx = lower[:-1] + upper[:-1]
    return pts[hull_idx]


def convex_hull_area(hull: np.ndarray) -> float:
    """Area of a hull from :func:`convex_hull` (0 for fewer than 3 vertices)."""
    return abs(ring_signed_area(hull)) if len(hull) >= 3 else 0.0


def convex_hull_perimeter(hull: np.ndarray) -> float:
    """Perimeter of a hull from :func:`convex_hull` (twice the length for a 2-vertex hull)."""
    return ring_length(hull, closed=True) if len(hull) >= 2 else 0.0


#: Pairs whose squared length is within this relative distance of the largest count as tied diameters.
FERET_TIE_RELATIVE = 1e-9


def diameter_angle_degrees(dx: np.ndarray | float, dy: np.ndarray | float) -> np.ndarray:
    """Direction of a segment as ``atan2(-dy, dx)`` in degrees mod 180, in ``[0, 180)`` (y grows downwards)."""
    angle = np.mod(np.degrees(np.arctan2(-np.asarray(dy, dtype=np.float64), np.asarray(dx, dtype=np.float64))), 180.0)
    angle = np.where(angle >= 180.0, 0.0, angle)
    return angle + 0.0


def feret_diameters(hull: np.ndarray) -> tuple[float, float, float]:
    """``(feret_max, feret_angle, feret_min)`` of a convex hull from :func:`convex_hull` by rotating calipers.

    ``feret_max`` is the largest distance over antipodal vertex pairs (the hull diameter), ``feret_angle``
    its direction (:func:`diameter_angle_degrees`; the smallest angle among tied diameters) and
    ``feret_min`` the smallest distance between an edge's line and its farthest vertex.
    """
    h = len(hull)
    if h < 2:
        return 0.0, 0.0, 0.0
    if h == 2:
        d = hull[1] - hull[0]
        return float(np.hypot(d[0], d[1])), float(diameter_angle_degrees(d[0], d[1])), 0.0
    local = hull - hull[0]
    edges = np.roll(local, -1, axis=0) - local
    idx = np.arange(h)
    # Farthest vertex from each edge's line: the start of the first later edge turned by >= 180 degrees.
    # Edge directions turn monotonically, so a vectorised binary search over the offset finds it.
    lo = np.ones(h, dtype=np.int64)
    hi = np.full(h, h - 1, dtype=np.int64)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        k = (idx + mid) % h
        turned = edges[:, 0] * edges[k, 1] - edges[:, 1] * edges[k, 0] <= 0
        active = lo < hi
        hi = np.where(active & turned, mid, hi)
        lo = np.where(active & ~turned, mid + 1, lo)
    far = (idx + lo) % h
    rel = local[far] - local
    edge_len = np.hypot(edges[:, 0], edges[:, 1])
    widths = (edges[:, 0] * rel[:, 1] - edges[:, 1] * rel[:, 0]) / edge_len
    feret_min = float(max(np.min(widths), 0.0))
    # Antipodal vertices of vertex i run from far[i-1] to far[i] (cyclically).
    far_prev = np.roll(far, 1)
    counts = (far - far_prev) % h + 1
    first = np.repeat(far_prev, counts)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    a = np.repeat(idx, counts)
    b = (first + offsets) % h
    dx = local[b, 0] - local[a, 0]
    dy = local[b, 1] - local[a, 1]
    d2 = dx * dx + dy * dy
    best = float(np.max(d2))
    tied = d2 >= best * (1.0 - FERET_TIE_RELATIVE)
    angle = float(np.min(diameter_angle_degrees(dx[tied], dy[tied])))
    return float(np.sqrt(best)), angle, feret_min


class RegionMoments(NamedTuple):
    """Exact area moments of a region (outer ring minus holes); NaN fields when the area is not positive."""

    area: float
    centroid_x: float
    centroid_y: float
    mu20: float
    mu02: float
    mu11: float


def _ring_first_moments(ring: np.ndarray) -> tuple[float, float, float]:
    """Signed ``(m00, m10, m01)`` of a ring by Green's theorem."""
    x0 = ring[:, 0]
    y0 = ring[:, 1]
    x1 = np.roll(x0, -1)
    y1 = np.roll(y0, -1)
    c = x0 * y1 - x1 * y0
    return float(np.sum(c) / 2.0), float(np.sum((x0 + x1) * c) / 6.0), float(np.sum((y0 + y1) * c) / 6.0)


def _ring_second_moments(ring: np.ndarray) -> tuple[float, float, float, float, float]:
    """Signed ``(m10, m01, m20, m02, m11)`` of a ring by Green's theorem."""
    x0 = ring[:, 0]
    y0 = ring[:, 1]
    x1 = np.roll(x0, -1)
    y1 = np.roll(y0, -1)
    c = x0 * y1 - x1 * y0
    m10 = np.sum((x0 + x1) * c) / 6.0
    m01 = np.sum((y0 + y1) * c) / 6.0
    m20 = np.sum((x0 * x0 + x0 * x1 + x1 * x1) * c) / 12.0
    m02 = np.sum((y0 * y0 + y0 * y1 + y1 * y1) * c) / 12.0
    m11 = np.sum((x0 * y1 + 2.0 * x0 * y0 + 2.0 * x1 * y1 + x1 * y0) * c) / 24.0
    return float(m10), float(m01), float(m20), float(m02), float(m11)


def region_moments(outer: np.ndarray, holes: list[np.ndarray] | tuple[np.ndarray, ...] = ()) -> RegionMoments:
    """Area, centroid and area-normalised central second moments of ``outer`` minus ``holes``.

    Every ring counts with the sign that makes its own area positive (outer added, holes subtracted,
    whatever their orientation). Coordinates are shifted to the outer ring's bounding-box corner, and
    the second moments are taken about the centroid in a second pass, to keep precision.
    """
    origin = outer.min(axis=0)
    rings = [outer - origin] + [h - origin for h in holes]
    weights = [1.0] + [-1.0] * len(holes)
    m00 = m10 = m01 = 0.0
    signs = []
    for ring, weight in zip(rings, weights, strict=True):
        a, mx, my = _ring_first_moments(ring)
        sign = weight * (1.0 if a > 0 else -1.0 if a < 0 else 0.0)
        signs.append(sign)
        m00 += sign * a
        m10 += sign * mx
        m01 += sign * my
    if not m00 > 0:
        nan = float("nan")
        return RegionMoments(float(m00), nan, nan, nan, nan, nan)
    cx = m10 / m00
    cy = m01 / m00
    shift = np.array([cx, cy])
    s10 = s01 = s20 = s02 = s11 = 0.0
    for ring, sign in zip(rings, signs, strict=True):
        if sign == 0.0:
            continue
        r10, r01, r20, r02, r11 = _ring_second_moments(ring - shift)
        s10 += sign * r10
        s01 += sign * r01
        s20 += sign * r20
        s02 += sign * r02
        s11 += sign * r11
    # Residual first moments about the computed centroid are rounding noise; remove their contribution.
    dx = s10 / m00
    dy = s01 / m00
    mu20 = s20 / m00 - dx * dx
    mu02 = s02 / m00 - dy * dy
    mu11 = s11 / m00 - dx * dy
    return RegionMoments(
        float(m00), float(origin[0] + cx + dx), float(origin[1] + cy + dy), float(mu20), float(mu02), float(mu11)
    )


def moment_axes(mu20: float, mu02: float, mu11: float) -> tuple[float, float]:
    """``(major, minor)`` = ``4*sqrt(lambda1)``, ``4*sqrt(lambda2)`` from the central second moments."""
    half_sum = 0.5 * (mu20 + mu02)
    radius = float(np.hypot(0.5 * (mu20 - mu02), mu11))
    lambda1 = max(half_sum + radius, 0.0)
    lambda2 = max(half_sum - radius, 0.0)
    return 4.0 * float(np.sqrt(lambda1)), 4.0 * float(np.sqrt(lambda2))


#: Largest number of vertex pairs compared at once when looking for the nearest bridge ends.
_PAIR_BLOCK = 1 << 20


def _nearest_vertex_pair(ring: np.ndarray, hole: np.ndarray) -> tuple[int, int, float]:
    """``(ring index, hole index, squared distance)`` of the closest vertex pair (first on ties)."""
    best = (0, 0, np.inf)
    rows = max(1, _PAIR_BLOCK // max(1, len(hole)))
    for start in range(0, len(ring), rows):
        block = ring[start : start + rows]
        d2 = np.sum((block[:, None, :] - hole[None, :, :]) ** 2, axis=2)
        flat = int(np.argmin(d2))
        i, j = divmod(flat, d2.shape[1])
        if d2[i, j] < best[2]:
            best = (start + i, j, float(d2[i, j]))
    return best


def _oriented(ring: np.ndarray, clockwise: bool) -> np.ndarray:
    """The ring running in the requested on-screen direction (positive shoelace = clockwise, y down)."""
    return ring if (ring_signed_area(ring) >= 0) == clockwise else ring[::-1]


def bridged_ring(outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """One ring covering ``outer`` minus ``holes``: every hole joined by a zero-width bridge.

    Each bridge runs there and back along the same segment, so filling the ring with the even-odd rule
    or the non-zero rule (holes run against the outer ring) leaves the holes empty. Holes are taken
    nearest-to-the-outer-ring first (ties by position) and each is bridged from the nearest vertex of the
    ring built so far, so later holes may chain through earlier ones.
    """
    if not holes:
        return outer
    outer_clockwise = ring_signed_area(outer) >= 0
    ring = outer
    order = sorted(range(len(holes)), key=lambda k: (_nearest_vertex_pair(outer, holes[k])[2], k))
    for k in order:
        hole = _oriented(holes[k], clockwise=not outer_clockwise)
        i, j, _ = _nearest_vertex_pair(ring, hole)
        around_hole = np.concatenate([hole[j:], hole[:j], hole[j : j + 1]], axis=0)
        ring = np.concatenate([ring[: i + 1], around_hole, ring[i:]], axis=0)
    return ring
