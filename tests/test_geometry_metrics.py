"""Exact polygon geometry (hull, calipers, moments) and the per-object metrics (docs/metrics.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPoint, Polygon

from ray_export.geometry import (
    convex_hull,
    convex_hull_area,
    convex_hull_perimeter,
    diameter_angle_degrees,
    feret_diameters,
    moment_axes,
    region_moments,
    ring_signed_area,
)
from ray_export.metrics import (
    AREA_METRICS,
    KEY_COLUMNS,
    LENGTH_METRICS,
    METRIC_COLUMNS,
    header_name,
    image_metric_rows,
    metric_units,
    metrics_guide_markdown,
    object_metrics,
)
from ray_export.polygons import ImagePolygons, PolygonObject, parse_polygons
from ray_export.problems import Problem

SQUARE = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])
HOLE = np.array([[3.0, 3.0], [7.0, 3.0], [7.0, 7.0], [3.0, 7.0]])


def _obj(outer, holes=(), number=1, complete=True) -> PolygonObject:
    return PolygonObject(
        number=number,
        outer=np.asarray(outer, dtype=np.float64),
        holes=[np.asarray(h, dtype=np.float64) for h in holes],
        complete=complete,
    )


def _star(rng: np.random.Generator, n: int, radius: float, center: np.ndarray, rmin: float) -> np.ndarray:
    """Star-shaped ring around ``center``: evenly spaced angles with jitter, random radii in [rmin, 1] * radius."""
    spacing = 2 * np.pi / n
    angles = rng.uniform(0, 2 * np.pi) + spacing * (np.arange(n) + rng.uniform(-0.3, 0.3, n))
    radii = rng.uniform(rmin * radius, radius, n)
    return center + np.c_[radii * np.cos(angles), radii * np.sin(angles)]


def _random_region(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    offset = rng.choice([0.0, 1e3, 1e5, 3e6])
    center = rng.uniform(-1, 1, 2) * offset + rng.uniform(0, 100, 2)
    radius = rng.uniform(2.0, 400.0)
    n = int(rng.integers(3, 120))
    outer = _star(rng, n, radius, center, rmin=0.5)
    holes = []
    # With >= 8 vertices no edge of the outer ring comes closer than 0.4 * radius to the centre.
    if n >= 8 and rng.random() < 0.7:
        holes.append(_star(rng, int(rng.integers(3, 30)), 0.3 * radius, center, rmin=0.3))
    if rng.random() < 0.5:
        outer = outer[::-1].copy()
    holes = [h[::-1].copy() if rng.random() < 0.5 else h for h in holes]
    return outer, holes


def _triangle_moments(poly: Polygon) -> tuple[float, float, float, float, float, float]:
    """Area, centroid and central second moments from a constrained triangulation (independent reference)."""
    tris = shapely.get_parts(shapely.constrained_delaunay_triangles(poly))
    coords = np.array([np.asarray(t.exterior.coords)[:3] for t in tris])  # (t, 3, 2)
    p, q, r = coords[:, 0], coords[:, 1], coords[:, 2]
    area = 0.5 * np.abs((q[:, 0] - p[:, 0]) * (r[:, 1] - p[:, 1]) - (q[:, 1] - p[:, 1]) * (r[:, 0] - p[:, 0]))
    total = area.sum()
    c = (p + q + r) / 3.0
    cx = float((area * c[:, 0]).sum() / total)
    cy = float((area * c[:, 1]).sum() / total)
    x = coords[:, :, 0] - cx
    y = coords[:, :, 1] - cy

    def second(u, v):
        # Integral of u*v over a triangle = A/12 * (sum u_i v_i + (sum u_i)(sum v_i)).
        return float((area / 12.0 * ((u * v).sum(axis=1) + u.sum(axis=1) * v.sum(axis=1))).sum() / total)

    return float(total), cx, cy, second(x, x), second(y, y), second(x, y)


def _brute_feret(points: np.ndarray) -> tuple[float, float, float]:
    """Max over all vertex pairs (smallest angle on ties), min over all hull-edge normals."""
    d = points[:, None, :] - points[None, :, :]
    d2 = (d**2).sum(axis=2)
    best = d2.max()
    ii, jj = np.nonzero(d2 >= best * (1 - 1e-9))
    angles = diameter_angle_degrees(points[jj, 0] - points[ii, 0], points[jj, 1] - points[ii, 1])
    hull = np.asarray(MultiPoint(points).convex_hull.exterior.coords)[:-1]
    widths = []
    for k in range(len(hull)):
        e = hull[(k + 1) % len(hull)] - hull[k]
        rel = points - hull[k]
        widths.append(np.abs(e[0] * rel[:, 1] - e[1] * rel[:, 0]).max() / np.hypot(*e))
    return math.sqrt(best), float(angles.min()), float(min(widths))


def _sweep_width_min(points: np.ndarray, steps: int = 20000) -> float:
    theta = np.linspace(0.0, np.pi, steps, endpoint=False)
    proj = points @ np.stack([np.cos(theta), np.sin(theta)])
    return float((proj.max(axis=0) - proj.min(axis=0)).min())


def _angle_diff(a: float, b: float) -> float:
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


# ----------------------------------------------------------------------------------------- pinned values


def test_square_pinned_values():
    values, undefined = object_metrics(_obj(SQUARE), None)
    assert undefined == []
    assert values["area"] == 100.0
    assert values["perimeter"] == 40.0
    assert values["perimeter_with_holes"] == 40.0
    assert values["circularity"] == pytest.approx(math.pi / 4, rel=1e-15)
    assert values["compactness"] == pytest.approx(4 / math.pi, rel=1e-15)
    assert values["sphericity"] == pytest.approx(math.sqrt(math.pi) / 2, rel=1e-15)
    assert values["feret_max"] == pytest.approx(10 * math.sqrt(2), rel=1e-15)
    assert values["feret_angle"] == pytest.approx(45.0, abs=1e-12)
    assert values["feret_min"] == 10.0
    assert values["feret_aspect_ratio"] == pytest.approx(math.sqrt(2), rel=1e-15)
    assert values["solidity"] == 1.0
    assert values["convexity"] == 1.0
    assert values["extent"] == 1.0
    assert values["bbox_width"] == 10.0 and values["bbox_height"] == 10.0
    assert values["major_axis"] == pytest.approx(11.547, abs=1e-3)
    assert values["minor_axis"] == pytest.approx(11.547, abs=1e-3)
    assert values["major_axis"] == pytest.approx(4 * math.sqrt(100 / 12), rel=1e-14)
    assert values["aspect_ratio"] == pytest.approx(1.0, rel=1e-14)
    assert values["roundness"] == pytest.approx(0.955, abs=1e-3)
    assert values["equivalent_diameter"] == pytest.approx(math.sqrt(400 / math.pi), rel=1e-15)
    assert values["centroid_x"] == 5.0 and values["centroid_y"] == 5.0
    assert values["holes"] == 0
    assert isinstance(values["holes"], int)
    for name in METRIC_COLUMNS:
        if name != "holes":
            assert type(values[name]) is float, name


def test_square_with_hole_pinned_values():
    values, undefined = object_metrics(_obj(SQUARE, [HOLE]), None)
    assert undefined == []
    assert values["area"] == 84.0
    assert values["perimeter"] == 40.0
    assert values["perimeter_with_holes"] == 56.0
    assert values["holes"] == 1
    # A centred hole keeps the centroid and the symmetry: mu20 = (10^4/12 - 4^4/12) / 84.
    mu = (10**4 - 4**4) / 12 / 84
    assert values["centroid_x"] == pytest.approx(5.0, abs=1e-12)
    assert values["major_axis"] == pytest.approx(4 * math.sqrt(mu), rel=1e-13)
    assert values["minor_axis"] == pytest.approx(4 * math.sqrt(mu), rel=1e-13)
    assert values["solidity"] == pytest.approx(0.84, rel=1e-15)


def test_off_centre_hole_moments_match_closed_form():
    hole = np.array([[1.0, 1.0], [5.0, 1.0], [5.0, 5.0], [1.0, 5.0]])
    m = region_moments(SQUARE, [hole])
    area = 100 - 16
    sx = 100 * 5 - 16 * 3
    sxx = 10 * 1000 / 3 - 4 * (125 - 1) / 3
    sxy = 50 * 50 - (12 * 12)
    cx = sx / area
    assert m.area == pytest.approx(area, rel=1e-15)
    assert m.centroid_x == pytest.approx(cx, rel=1e-14)
    assert m.centroid_y == pytest.approx(cx, rel=1e-14)
    assert m.mu20 == pytest.approx(sxx / area - cx * cx, rel=1e-12)
    assert m.mu02 == pytest.approx(sxx / area - cx * cx, rel=1e-12)
    assert m.mu11 == pytest.approx(sxy / area - cx * cx, rel=1e-12)


def test_hole_orientation_does_not_matter():
    a = object_metrics(_obj(SQUARE, [HOLE]), None)[0]
    b = object_metrics(_obj(SQUARE[::-1], [HOLE[::-1]]), None)[0]
    c = object_metrics(_obj(SQUARE, [HOLE[::-1]]), None)[0]
    for name in METRIC_COLUMNS:
        assert a[name] == pytest.approx(b[name], rel=1e-14, abs=1e-12), name
        assert a[name] == pytest.approx(c[name], rel=1e-14, abs=1e-12), name


def test_720_gon_circle():
    t = np.linspace(0.0, 2 * np.pi, 720, endpoint=False)
    ring = np.c_[500 + 100 * np.cos(t), 300 + 100 * np.sin(t)]
    values, undefined = object_metrics(_obj(ring), None)
    assert undefined == []
    assert values["circularity"] > 0.999
    assert values["feret_max"] == pytest.approx(200.0, rel=1e-12)
    assert values["feret_min"] == pytest.approx(200 * math.cos(math.pi / 720), rel=1e-12)
    assert values["roundness"] == pytest.approx(1.0, abs=1e-4)
    assert values["aspect_ratio"] == pytest.approx(1.0, abs=1e-9)
    assert values["major_axis"] == pytest.approx(200.0, rel=1e-4)
    assert values["centroid_x"] == pytest.approx(500.0, abs=1e-9)
    assert values["centroid_y"] == pytest.approx(300.0, abs=1e-9)


def test_ellipse_axes_are_full_axis_lengths():
    t = np.linspace(0.0, 2 * np.pi, 4000, endpoint=False)
    phi = math.radians(30)
    x, y = 40 * np.cos(t), 15 * np.sin(t)
    ring = np.c_[x * math.cos(phi) - y * math.sin(phi), x * math.sin(phi) + y * math.cos(phi)] + 1000
    values, _ = object_metrics(_obj(ring), None)
    assert values["major_axis"] == pytest.approx(80.0, rel=1e-5)
    assert values["minor_axis"] == pytest.approx(30.0, rel=1e-5)
    assert values["aspect_ratio"] == pytest.approx(80 / 30, rel=1e-5)
    assert values["roundness"] == pytest.approx(30 / 80, rel=1e-5)
    # Rotated by +30 degrees in (x, y) = clockwise on screen, so the diameter points 30 degrees below horizontal.
    assert _angle_diff(values["feret_angle"], 150.0) < 0.1


# ----------------------------------------------------------------------------------------- hull and calipers


def test_hull_degenerate_inputs():
    assert convex_hull(np.empty((0, 2))).shape == (0, 2)
    one = convex_hull(np.array([[3.0, 4.0], [3.0, 4.0]]))
    assert one.tolist() == [[3.0, 4.0]]
    assert convex_hull_area(one) == 0.0 and convex_hull_perimeter(one) == 0.0
    line = convex_hull(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [1.0, 1.0]]))
    assert sorted(map(tuple, line.tolist())) == [(0.0, 0.0), (3.0, 3.0)]
    assert convex_hull_area(line) == 0.0
    assert convex_hull_perimeter(line) == pytest.approx(2 * 3 * math.sqrt(2))
    fmax, angle, fmin = feret_diameters(line)
    assert fmax == pytest.approx(3 * math.sqrt(2)) and fmin == 0.0 and angle == pytest.approx(135.0)
    assert feret_diameters(one) == (0.0, 0.0, 0.0)


def test_hull_drops_collinear_and_is_positively_oriented():
    pts = np.array([[0, 0], [5, 0], [10, 0], [10, 5], [10, 10], [5, 10], [0, 10], [0, 5], [5, 5]], dtype=float)
    hull = convex_hull(pts)
    assert len(hull) == 4
    assert ring_signed_area(hull) == 100.0


@pytest.mark.parametrize("seed", range(40))
def test_hull_matches_shapely_on_point_clouds(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 400))
    pts = rng.normal(size=(n, 2)) * rng.uniform(1, 1000) + rng.uniform(-1e5, 1e5, 2)
    if seed % 3 == 0:
        pts = np.round(pts)  # many duplicates and collinear points
    pts = np.vstack([pts, pts[: n // 4]])
    hull = convex_hull(pts)
    ref = MultiPoint(pts).convex_hull
    if ref.geom_type != "Polygon":
        pytest.skip("degenerate cloud")
    assert convex_hull_area(hull) == pytest.approx(ref.area, rel=1e-11)
    assert convex_hull_perimeter(hull) == pytest.approx(ref.length, rel=1e-12)
    ref_vertices = {tuple(v) for v in np.asarray(ref.exterior.coords)[:-1]}
    assert {tuple(v) for v in hull.tolist()} == ref_vertices


def test_feret_angle_conventions():
    # y grows downwards: a needle going up and to the right on screen has a small positive angle.
    needle = np.array([[0.0, 0.0], [100.0, -100.0], [100.5, -99.5]])
    fmax, angle, _ = feret_diameters(convex_hull(needle))
    assert fmax == pytest.approx(math.hypot(100.5, 99.5))
    assert angle == pytest.approx(math.degrees(math.atan2(99.5, 100.5)), abs=1e-12)
    horizontal = np.array([[0.0, 0.0], [50.0, 1.0], [100.0, 0.0]])
    assert feret_diameters(convex_hull(horizontal))[1] == 0.0
    vertical = np.array([[0.0, 0.0], [1.0, 50.0], [0.0, 100.0]])
    assert feret_diameters(convex_hull(vertical))[1] == pytest.approx(90.0)
    # Ties: a 20 x 10 rectangle has diagonals at 26.57 and 153.43 degrees; the smallest wins.
    rect = np.array([[0.0, 0.0], [20.0, 0.0], [20.0, 10.0], [0.0, 10.0]])
    assert feret_diameters(convex_hull(rect))[1] == pytest.approx(math.degrees(math.atan2(10, 20)), abs=1e-12)
    assert float(diameter_angle_degrees(-1.0, 0.0)) == 0.0
    assert float(diameter_angle_degrees(5.0, -0.0)) == 0.0


# ----------------------------------------------------------------------------------------- randomized


@pytest.mark.parametrize("seed", range(200))
def test_random_regions_match_references(seed):
    rng = np.random.default_rng(1000 + seed)
    outer, holes = _random_region(rng)
    values, undefined = object_metrics(_obj(outer, holes), None)
    assert undefined == []
    poly = Polygon(outer, holes)
    assert poly.is_valid
    size = float(np.ptp(outer, axis=0).max())

    assert values["area"] == pytest.approx(poly.area, rel=1e-9)
    assert values["perimeter"] == pytest.approx(poly.exterior.length, rel=1e-12)
    assert values["perimeter_with_holes"] == pytest.approx(poly.length, rel=1e-12)
    hull = poly.convex_hull
    assert values["solidity"] == pytest.approx(poly.area / hull.area, rel=1e-9)
    assert values["convexity"] == pytest.approx(hull.length / poly.exterior.length, rel=1e-11)
    assert values["holes"] == len(holes)

    # Centroid and moments: independent triangulation of the polygon with its holes.
    origin = outer.min(axis=0)
    area_ref, cx, cy_ref, mu20, mu02, mu11 = _triangle_moments(Polygon(outer - origin, [h - origin for h in holes]))
    assert area_ref == pytest.approx(values["area"], rel=1e-9)
    assert values["centroid_x"] == pytest.approx(poly.centroid.x, abs=1e-9 * size)
    assert values["centroid_y"] == pytest.approx(poly.centroid.y, abs=1e-9 * size)
    assert values["centroid_x"] == pytest.approx(cx + origin[0], abs=1e-9 * size)
    assert values["centroid_y"] == pytest.approx(cy_ref + origin[1], abs=1e-9 * size)
    m = region_moments(outer, holes)
    trace = mu20 + mu02
    assert m.mu20 == pytest.approx(mu20, abs=1e-9 * trace)
    assert m.mu02 == pytest.approx(mu02, abs=1e-9 * trace)
    assert m.mu11 == pytest.approx(mu11, abs=1e-9 * trace)
    lam = np.linalg.eigvalsh(np.array([[mu20, mu11], [mu11, mu02]]))
    assert values["major_axis"] == pytest.approx(4 * math.sqrt(lam[1]), rel=1e-8)
    assert values["minor_axis"] == pytest.approx(4 * math.sqrt(lam[0]), rel=1e-8)
    assert values["roundness"] == pytest.approx(4 * values["area"] / (math.pi * values["major_axis"] ** 2), rel=1e-12)

    # Feret: brute force over vertex pairs and hull edges, and a fine angle sweep of projections.
    fmax, angle, fmin = _brute_feret(outer)
    assert values["feret_max"] == pytest.approx(fmax, rel=1e-12)
    assert _angle_diff(values["feret_angle"], angle) < 1e-7
    assert values["feret_min"] == pytest.approx(fmin, rel=1e-9)
    sweep = _sweep_width_min(outer)
    assert values["feret_min"] <= sweep * (1 + 1e-12)
    assert sweep - values["feret_min"] <= fmax * (np.pi / 20000) * 1.01
    assert values["feret_aspect_ratio"] == pytest.approx(fmax / fmin, rel=1e-9)
    bbox = np.ptp(outer, axis=0)
    assert values["extent"] == pytest.approx(poly.area / (bbox[0] * bbox[1]), rel=1e-9)


@pytest.mark.parametrize("seed", range(20))
def test_moments_match_rasterisation(seed):
    rng = np.random.default_rng(5000 + seed)
    outer = _star(rng, 12, 30.0, np.array([40.0, 40.0]), 0.5)
    holes = [_star(rng, 6, 8.0, np.array([40.0, 40.0]), 0.5)]
    assert Polygon(outer, holes).is_valid
    step = 0.05
    g = np.arange(0.0, 80.0, step) + step / 2
    xx, yy = np.meshgrid(g, g)
    inside = shapely.contains_xy(Polygon(outer, holes), xx, yy)
    area = inside.sum() * step * step
    cx, cy = xx[inside].mean(), yy[inside].mean()
    mu20 = ((xx[inside] - cx) ** 2).mean()
    mu11 = ((xx[inside] - cx) * (yy[inside] - cy)).mean()
    m = region_moments(outer, holes)
    assert m.area == pytest.approx(area, rel=5e-3)
    assert m.centroid_x == pytest.approx(cx, abs=0.02)
    assert m.centroid_y == pytest.approx(cy, abs=0.02)
    assert m.mu20 == pytest.approx(mu20, rel=5e-3, abs=0.05)
    assert m.mu11 == pytest.approx(mu11, abs=0.05 + 5e-3 * abs(mu20))


def test_large_coordinates_keep_precision():
    rng = np.random.default_rng(7)
    outer = _star(rng, 50, 20.0, np.array([0.0, 0.0]), 0.5)
    near = object_metrics(_obj(outer), None)[0]
    far = object_metrics(_obj(outer + np.array([4_000_000.0, 3_000_000.0])), None)[0]
    for name in ("area", "perimeter", "major_axis", "minor_axis", "feret_max", "feret_min", "solidity"):
        assert far[name] == pytest.approx(near[name], rel=1e-8), name
    assert far["centroid_x"] - 4_000_000.0 == pytest.approx(near["centroid_x"], abs=1e-7)


def test_moment_axes_clamps_negative_rounding():
    major, minor = moment_axes(1.0, 1e-30, 1e-15)
    assert major == pytest.approx(4.0) and minor >= 0.0


# ----------------------------------------------------------------------------------------- scale and units


def test_scale_applies_to_lengths_and_areas_only():
    rng = np.random.default_rng(3)
    outer, holes = _random_region(rng)
    px, _ = object_metrics(_obj(outer, holes), None)
    um, _ = object_metrics(_obj(outer, holes), 0.25)
    for name in METRIC_COLUMNS:
        if name in LENGTH_METRICS:
            assert um[name] == px[name] * 0.25, name
        elif name in AREA_METRICS:
            assert um[name] == px[name] * 0.25 * 0.25, name
        else:
            assert um[name] == px[name], name


def test_units_and_headers():
    px = metric_units(False)
    um = metric_units(True)
    assert list(px) == METRIC_COLUMNS == list(um)
    assert px["area"] == "px^2" and um["area"] == "um^2"
    assert px["feret_min"] == "px" and um["feret_min"] == "um"
    assert um["centroid_x"] == "px" and um["centroid_y"] == "px"
    assert um["feret_angle"] == "deg" and px["feret_angle"] == "deg"
    for name in ("circularity", "compactness", "sphericity", "convexity", "solidity", "extent", "holes"):
        assert px[name] is None and um[name] is None
    for name in ("feret_aspect_ratio", "aspect_ratio", "roundness"):
        assert um[name] is None
    assert header_name("area", "um^2") == "area (um^2)"
    assert header_name("holes", None) == "holes"
    assert KEY_COLUMNS == ["image_id", "image_name", "number"]
    assert len(METRIC_COLUMNS) == 23


# ----------------------------------------------------------------------------------------- rows and problems


def test_image_rows_skip_incomplete_and_report_undefined():
    raw = [
        {"type": "external", "points": SQUARE.tolist()},
        {"type": "external", "points": [[100, 100], [110, 100], [110, 110]], "complete": False},
        {"type": "external", "points": [[0, 0], [1, 1], [2, 2], [3, 3]]},
        {"type": "internal", "points": HOLE.tolist()},
    ]
    parsed = parse_polygons(raw)
    rows, problems = image_metric_rows("img-1", "a.png", parsed, 2.0)
    assert [r["number"] for r in rows] == [1, 3]
    assert list(rows[0]) == KEY_COLUMNS + METRIC_COLUMNS
    assert rows[0]["image_id"] == "img-1" and rows[0]["image_name"] == "a.png"
    assert rows[0]["area"] == 84.0 * 4 and rows[0]["perimeter"] == 80.0 and rows[0]["holes"] == 1
    degenerate = rows[1]
    assert degenerate["area"] == 0.0
    for name in ("compactness", "solidity", "feret_aspect_ratio", "major_axis", "aspect_ratio", "centroid_x"):
        assert degenerate[name] is None, name
    assert degenerate["feret_min"] == 0.0
    assert len(problems) == 1
    problem = problems[0]
    assert isinstance(problem, Problem)
    assert (problem.code, problem.stage) == ("metric_undefined", "metrics")
    assert (
        "object 3" in problem.message and "compactness" in problem.message and "feret_aspect_ratio" in problem.message
    )


def test_negative_area_makes_area_metrics_undefined():
    big_holes = [
        np.array([[0, 0], [9, 0], [9, 9], [0, 9]], float),
        np.array([[1, 1], [10, 1], [10, 10], [1, 10]], float),
    ]
    obj = _obj(SQUARE, big_holes, number=4)
    values, undefined = object_metrics(obj, None)
    assert values["area"] == 100.0 - 81.0 - 81.0
    for name in ("equivalent_diameter", "circularity", "sphericity", "solidity", "extent", "major_axis", "centroid_x"):
        assert values[name] is None and name in undefined
    assert values["perimeter"] == 40.0 and values["feret_min"] == 10.0
    rows, problems = image_metric_rows("x", "x.png", ImagePolygons(objects=[obj]), None)
    assert rows[0]["area"] == -62.0
    assert "negative" in problems[0].message and "object 4" in problems[0].message


def test_guide_mentions_every_metric_and_unit():
    text = metrics_guide_markdown(0.5)
    for name in METRIC_COLUMNS:
        assert f"`{name}`" in text, name
    assert "0.5 µm per pixel" in text and "um^2" in text
    plain = metrics_guide_markdown(None)
    assert "px^2" in plain and "um^2" not in plain.split("## Units")[1].split("## File formats")[0]
    for word in ("shoelace", "monotone chain", "rotating calipers", "Green", "eigenvalues", "ddof = 1", "Parquet"):
        assert word.lower() in text.lower(), word
