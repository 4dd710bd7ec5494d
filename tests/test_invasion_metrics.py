"""Per-image metrics of invasive spheroid projects (ray_export/project_types/invasion.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shapely.geometry import MultiPoint

from ray_export import problems as problem_codes
from ray_export.polygons import parse_polygons
from ray_export.project_types.invasion import (
    COLUMNS,
    FORMULAS,
    PROBLEM_CODES,
    RASTER_COLUMNS,
    image_invasion_metrics,
    mask_metrics,
    rasterise,
    sorted_quantile,
)
from ray_export.visualize import object_mask

W = H = 300
SQRT_095 = math.sqrt(0.95)


@pytest.fixture(autouse=True)
def _invasion_problem_codes(monkeypatch):
    """The report knows this project type's problem codes."""
    for code, meaning in PROBLEM_CODES.items():
        monkeypatch.setitem(problem_codes.PROBLEM_CODES, code, meaning)


def circle(cx: float, cy: float, r: float, n: int = 720) -> list[dict]:
    t = np.arange(n) * 2.0 * np.pi / n
    return [{"x": float(cx + r * np.cos(a)), "y": float(cy + r * np.sin(a))} for a in t]


def rect(x0: float, y0: float, x1: float, y1: float) -> list[dict]:
    return [{"x": x0, "y": y0}, {"x": x1, "y": y0}, {"x": x1, "y": y1}, {"x": x0, "y": y1}]


def external(points: list[dict], core: bool = False, **extra) -> dict:
    el = {"type": "external", "points": points, **extra}
    if core:
        el["partClass"] = "core"
    return el


def hole(points: list[dict]) -> dict:
    return {"type": "internal", "points": points}


def shoelace(points: list[dict]) -> float:
    x = np.array([p["x"] for p in points])
    y = np.array([p["y"] for p in points])
    return abs(0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)))


def metrics(elements: list[dict], width: int = W, height: int = H):
    return image_invasion_metrics(parse_polygons(elements), width, height)


def codes(problems) -> list[str]:
    return [p.code for p in problems]


def disc_mask(cx: float, cy: float, r: float, width: int = W, height: int = H) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r


def fragment_centres(n: int = 8, distance: float = 120.0) -> list[tuple[float, float]]:
    return [
        (150.0 + distance * math.cos(2 * math.pi * k / n), 150.0 + distance * math.sin(2 * math.pi * k / n))
        for k in range(n)
    ]


def independent_index(fg: np.ndarray, core: np.ndarray) -> tuple[float, float]:
    """Disintegration index and q95 written out with plain loops over the sorted distances."""
    cy, cx = np.argwhere(core).mean(axis=0)
    r_c = math.sqrt(core.sum() / math.pi)
    d = sorted(math.hypot(x - cx, y - cy) / r_c for y, x in np.argwhere(fg))
    m = len(d)
    mean_dev = sum(abs(d[i - 1] - math.sqrt((i - 0.5) / m)) for i in range(1, m + 1)) / m
    pos = 0.95 * (m - 1)
    lo = math.floor(pos)
    q95 = d[lo] + (pos - lo) * (d[min(lo + 1, m - 1)] - d[lo])
    return math.tanh(mean_dev), q95


# --------------------------------------------------------------------------- declarations


def test_columns_and_formulas():
    names = [name for name, _ in COLUMNS]
    assert names == [
        "total_area",
        "core_area",
        "invasion_area",
        "reference_mode",
        "disintegration_index",
        "radial_reach_q95",
        "dispersed_mass_fraction",
        "fragment_count",
        "largest_fragment_fraction",
        "solidity",
        "hole_count",
        "core_equivalent_diameter",
        "whole_equivalent_diameter",
    ]
    kinds = dict(COLUMNS)
    assert {kinds[n] for n in ("total_area", "core_area", "invasion_area")} == {"area"}
    assert {kinds[n] for n in ("core_equivalent_diameter", "whole_equivalent_diameter")} == {"length"}
    assert {kinds[n] for n in ("fragment_count", "hole_count")} == {"count"}
    assert kinds["reference_mode"] == "text"
    assert set(kinds.values()) <= {"area", "length", "count", "unitless", "text"}
    assert set(RASTER_COLUMNS) <= set(names)
    for name in names:
        assert f"`{name}`" in FORMULAS
    for code in PROBLEM_CODES:
        assert code.startswith("invasion_")
        assert f"`{code}`" in FORMULAS


# --------------------------------------------------------------------------- core mode on polygons


def test_solid_disc_core():
    row, problems = metrics([external(circle(150, 150, 60), core=True)])
    assert problems == []
    assert list(row) == [name for name, _ in COLUMNS]
    assert row["reference_mode"] == "core"
    assert row["disintegration_index"] < 0.05
    assert row["radial_reach_q95"] == pytest.approx(SQRT_095, abs=0.01)
    assert row["dispersed_mass_fraction"] == 0.0
    assert row["fragment_count"] == 1
    assert row["largest_fragment_fraction"] == 1.0
    assert row["solidity"] == pytest.approx(1.0, abs=0.02)
    assert row["hole_count"] == 0
    assert row["core_equivalent_diameter"] == pytest.approx(120.0, rel=0.02)
    assert row["whole_equivalent_diameter"] == row["core_equivalent_diameter"]
    assert row["total_area"] == 0.0
    assert row["core_area"] == pytest.approx(0.5 * 720 * 60**2 * math.sin(2 * math.pi / 720), rel=1e-12)
    assert row["invasion_area"] == 0.0


def test_core_with_fragments():
    solid, _ = metrics([external(circle(150, 150, 60), core=True)])
    frags = [external(circle(cx, cy, 8, 90)) for cx, cy in fragment_centres()]
    row, problems = metrics([external(circle(150, 150, 60), core=True), *frags])
    assert problems == []
    assert row["reference_mode"] == "core"
    assert row["fragment_count"] == 9
    assert row["disintegration_index"] > solid["disintegration_index"] + 0.1
    assert row["radial_reach_q95"] == pytest.approx(2.0, abs=0.05)
    # independent pixel counts: numpy discs (the polygon fill also takes the pixels its edge crosses)
    core_px = int(disc_mask(150, 150, 60).sum())
    frag_px = sum(int(disc_mask(cx, cy, 8).sum()) for cx, cy in fragment_centres())
    expected = frag_px / (frag_px + core_px)
    assert row["dispersed_mass_fraction"] == pytest.approx(expected, rel=0.15)
    assert row["largest_fragment_fraction"] == pytest.approx(core_px / (core_px + frag_px), rel=0.03)
    assert row["solidity"] < 0.5
    whole_px = (row["whole_equivalent_diameter"] / 2) ** 2 * math.pi
    core_pixels = (row["core_equivalent_diameter"] / 2) ** 2 * math.pi
    assert row["dispersed_mass_fraction"] == pytest.approx((whole_px - core_pixels) / whole_px, rel=1e-9)


def test_areas_are_shoelace_sums():
    whole = rect(40.5, 40.25, 260.0, 255.75)
    whole_hole = rect(200.0, 200.0, 230.0, 230.0)
    core = circle(150.2, 149.7, 55.3, 500)
    frag = circle(275.0, 20.0, 9.0, 64)
    row, _ = metrics([external(whole), hole(whole_hole), external(core, core=True), external(frag)])
    total = shoelace(whole) - shoelace(whole_hole) + shoelace(frag)
    assert row["total_area"] == pytest.approx(total, rel=1e-12)
    assert row["core_area"] == pytest.approx(shoelace(core), rel=1e-12)
    assert row["invasion_area"] == pytest.approx(total - shoelace(core), rel=1e-12)
    assert row["reference_mode"] == "core"
    assert row["hole_count"] == 1  # the whole outline's 31 x 31 px hole
    assert row["fragment_count"] == 2


def test_core_with_hole_exact_pixels():
    # Integer vertices lie on pixel centres: the square fills 81 x 81 pixels, each hole clears its
    # (side + 1)² pixels.
    big = rect(100, 30, 116, 46)  # hole of 17 x 17 = 289 px
    small = rect(40, 40, 44, 44)  # hole of 5 x 5 = 25 px, below 30
    row, problems = metrics([external(rect(20, 20, 140, 140), core=True), hole(big), hole(small)])
    assert problems == []
    n_c = 121 * 121 - 17 * 17 - 5 * 5
    assert row["core_equivalent_diameter"] == pytest.approx(2 * math.sqrt(n_c / math.pi), rel=1e-12)
    assert row["hole_count"] == 1
    assert row["core_area"] == pytest.approx(120 * 120 - 16 * 16 - 4 * 4, rel=1e-12)
    assert row["dispersed_mass_fraction"] == 0.0
    assert row["fragment_count"] == 1


def test_small_fragments_are_dropped_but_keep_their_mass():
    core = external(rect(100, 100, 140, 140), core=True)  # 41 x 41 px
    tiny = external(rect(250, 250, 254, 254))  # 5 x 5 = 25 px < 30
    kept = external(rect(20, 250, 25, 255))  # 6 x 6 = 36 px
    row, problems = metrics([core, tiny])
    assert problems == []
    assert row["fragment_count"] == 1
    assert row["dispersed_mass_fraction"] == pytest.approx(25 / (41 * 41 + 25), rel=1e-12)
    row, _ = metrics([core, tiny, kept])
    assert row["fragment_count"] == 2
    assert row["largest_fragment_fraction"] == pytest.approx(41 * 41 / (41 * 41 + 36), rel=1e-12)
    assert row["dispersed_mass_fraction"] == pytest.approx(61 / (41 * 41 + 61), rel=1e-12)


def test_closing_joins_gaps_of_two_pixels_only():
    core = external(rect(50, 50, 89, 89), core=True)  # pixel columns 50..89
    near = external(rect(92, 50, 131, 89))  # columns 92..131: a 2-column gap
    far = external(rect(95, 50, 134, 89))  # columns 95..134: a 5-column gap
    assert metrics([core, near])[0]["fragment_count"] == 1
    assert metrics([core, far])[0]["fragment_count"] == 2


def test_solidity_against_hull_of_pixel_centres():
    core = external(rect(60, 60, 100, 100), core=True)
    frag = external(rect(200, 180, 230, 240))
    row, _ = metrics([core, frag])
    n_fg = 41 * 41 + 31 * 61
    corners = [(60, 60), (100, 60), (60, 100), (100, 100), (200, 180), (230, 180), (200, 240), (230, 240)]
    hull = MultiPoint(corners).convex_hull.area
    assert row["solidity"] == pytest.approx(n_fg / hull, rel=1e-12)
    assert row["whole_equivalent_diameter"] == pytest.approx(2 * math.sqrt(n_fg / math.pi), rel=1e-12)


def test_incomplete_objects_count_with_their_visible_part():
    core = external(circle(150, 150, 40), core=True)
    cut = external(rect(280, 100, 320, 140), complete=False)  # half outside the 300 px image
    row, problems = metrics([core, cut])
    assert codes(problems) == ["invasion_objects_cut"]
    assert row["total_area"] == pytest.approx(40 * 40, rel=1e-12)
    assert row["fragment_count"] == 2
    whole_px = (row["whole_equivalent_diameter"] / 2) ** 2 * math.pi
    core_px = (row["core_equivalent_diameter"] / 2) ** 2 * math.pi
    assert whole_px - core_px == pytest.approx(20 * 41, rel=1e-9)  # columns 280..299, rows 100..140


def test_window_gives_the_full_image_values():
    elements = [
        external(circle(150, 150, 50), core=True),
        external(circle(3, 150, 12, 90)),  # touches the left border
        external(rect(200, 296, 240, 299)),  # along the bottom border
        external(rect(60, 20, 90, 40)),
        hole(rect(70, 25, 80, 35)),
    ]
    polygons = parse_polygons(elements)
    fg = np.zeros((H, W), dtype=bool)
    core = np.zeros((H, W), dtype=bool)
    for obj in polygons.objects:
        mask, x0, y0 = object_mask(obj, W, H)
        region = np.zeros((H, W), dtype=bool)
        region[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask.astype(bool)
        fg |= region
        if obj.part_class == "core":
            core |= region
    window = rasterise(polygons, W, H)
    assert window is not None and window[0].shape != fg.shape
    assert int(window[0].sum()) == int(fg.sum()) and int(window[1].sum()) == int(core.sum())
    full, _ = mask_metrics(fg, core)
    row, _ = image_invasion_metrics(polygons, W, H)
    for name in RASTER_COLUMNS:
        assert row[name] == full[name], name
    assert row["hole_count"] == 1


# --------------------------------------------------------------------------- raster formulas on masks


def test_mask_metrics_against_independent_computation():
    core = disc_mask(150, 150, 40)
    fg = core.copy()
    for cx, cy in fragment_centres(6, 100.0):
        fg |= disc_mask(cx, cy, 6)
    fg |= disc_mask(30, 270, 2)  # 13 px: too small to be a fragment
    values, problems = mask_metrics(fg, core)
    assert problems == []
    index, q95 = independent_index(fg, core)
    assert values["disintegration_index"] == pytest.approx(index, rel=1e-9)
    assert values["radial_reach_q95"] == pytest.approx(q95, rel=1e-9)
    n_fg, n_c = int(fg.sum()), int(core.sum())
    assert values["dispersed_mass_fraction"] == pytest.approx((n_fg - n_c) / n_fg, rel=1e-12)
    assert values["fragment_count"] == 7
    assert values["core_equivalent_diameter"] == pytest.approx(2 * math.sqrt(n_c / math.pi), rel=1e-12)
    assert values["whole_equivalent_diameter"] == pytest.approx(2 * math.sqrt(n_fg / math.pi), rel=1e-12)
    ys, xs = np.nonzero(fg)
    hull = MultiPoint(np.stack([xs, ys], axis=1).astype(float)).convex_hull.area
    assert values["solidity"] == pytest.approx(min(1.0, n_fg / hull), rel=1e-12)


def test_sorted_quantile_is_numpy_linear_percentile():
    values = np.sort(np.random.default_rng(7).gamma(2.0, size=1001))
    for m in (1, 2, 3, 20, 1001):
        for q in (0.0, 0.5, 0.95, 1.0):
            expected = float(np.percentile(values[:m], q * 100.0))
            assert sorted_quantile(values[:m], q) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_mask_metrics_ring_and_holes():
    # A ring around the core: the gap is a hole of FG, the ring's mass lies far out.
    core = disc_mask(150, 150, 30)
    ring = disc_mask(150, 150, 90) & ~disc_mask(150, 150, 70)
    fg = core | ring
    values, _ = mask_metrics(fg, core)
    assert values["hole_count"] == 1
    assert values["fragment_count"] == 2
    assert values["radial_reach_q95"] > 2.5
    # a 5 x 5 gap in the ring is below 30 pixels; a 6 x 6 one counts
    values, _ = mask_metrics(fg & ~_square(228, 148, 5), core)
    assert values["hole_count"] == 1
    values, _ = mask_metrics(fg & ~_square(228, 148, 6), core)
    assert values["hole_count"] == 2
    # a background region open to the image border is no hole
    border = np.zeros_like(fg)
    border[0:40, 0:40] = True
    border[10:20, 0:20] = False
    values, _ = mask_metrics(border | core, core)
    assert values["hole_count"] == 0
    border[10:20, 0:3] = True  # closed: now a 10 x 17 hole
    values, _ = mask_metrics(border | core, core)
    assert values["hole_count"] == 1


def _square(x0: int, y0: int, side: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0 : y0 + side, x0 : x0 + side] = True
    return mask


def test_no_fragment_large_enough():
    core = _square(10, 10, 4)  # 16 px
    values, problems = mask_metrics(core, core)
    assert values["fragment_count"] == 0
    assert values["largest_fragment_fraction"] is None
    assert codes(problems) == ["invasion_no_fragment"]
    assert values["solidity"] == 1.0
    line = np.zeros((H, W), dtype=bool)
    line[50, 10:60] = True
    values, _ = mask_metrics(line, line)
    assert values["solidity"] == 1.0  # hull of one row of pixel centres has no area


# --------------------------------------------------------------------------- other modes


def assert_raster_empty(row: dict) -> None:
    for name in RASTER_COLUMNS:
        assert row[name] is None, name


def test_no_core_mode():
    whole = rect(50, 50, 250, 250)
    row, problems = metrics([external(whole), external(circle(20, 20, 5, 40), partClass="Core")])
    assert row["reference_mode"] == "no_core"
    assert row["total_area"] == pytest.approx(200 * 200 + shoelace(circle(20, 20, 5, 40)), rel=1e-12)
    assert row["core_area"] == 0.0
    assert row["invasion_area"] == row["total_area"]
    assert_raster_empty(row)
    assert codes(problems) == ["invasion_no_core"]
    assert "partClass 'core'" in problems[0].message


def test_only_cut_core_is_no_reference():
    core = external(rect(-20, 100, 40, 160), core=True, complete=False)
    row, problems = metrics([core, external(rect(10, 90, 80, 170))])
    assert row["reference_mode"] == "no_core"
    assert row["core_area"] == pytest.approx(60 * 60, rel=1e-12)
    assert row["invasion_area"] == pytest.approx(70 * 80 - 60 * 60, rel=1e-12)
    assert_raster_empty(row)
    assert codes(problems) == ["invasion_objects_cut", "invasion_no_core"]
    assert "cut by the image border" in problems[1].message


def test_none_mode_without_polygons():
    for raw in ([], None, [hole(rect(1, 1, 5, 5))]):
        row, problems = image_invasion_metrics(parse_polygons(raw), W, H)
        assert row["reference_mode"] == "none"
        assert (row["total_area"], row["core_area"], row["invasion_area"]) == (0.0, 0.0, 0.0)
        assert_raster_empty(row)
        assert codes(problems) == ["invasion_no_objects"]


@pytest.mark.parametrize("size", [(0, 0), (None, None), (300, 0)])
def test_none_mode_with_unknown_size(size):
    core = circle(150, 150, 60)
    row, problems = metrics([external(core, core=True), external(rect(10, 10, 20, 20))], *size)
    assert row["reference_mode"] == "none"
    assert row["core_area"] == pytest.approx(shoelace(core), rel=1e-12)
    assert row["total_area"] == pytest.approx(100.0, rel=1e-12)
    assert row["invasion_area"] == 0.0
    assert_raster_empty(row)
    assert codes(problems) == ["invasion_size_unknown"]


def test_core_outside_the_image():
    row, problems = metrics([external(rect(400, 400, 450, 450), core=True), external(rect(10, 10, 60, 60))])
    assert row["reference_mode"] == "core"
    assert row["core_area"] == 2500.0
    assert_raster_empty(row)
    assert codes(problems) == ["invasion_core_outside"]


def test_deterministic():
    elements = [external(circle(150, 150, 60), core=True)] + [
        external(circle(cx, cy, 8, 90)) for cx, cy in fragment_centres()
    ]
    first = metrics(elements)
    second = metrics(list(reversed(elements)))
    assert first[0] == metrics(elements)[0]
    for name in RASTER_COLUMNS:
        assert first[0][name] == pytest.approx(second[0][name], rel=1e-12), name
    assert first[1] == second[1] == []
