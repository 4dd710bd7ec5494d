"""Sperm lengths and microcapsule shape tables, checked against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ray_export import problems as problems_module
from ray_export.metrics import object_metrics
from ray_export.polygons import ImagePolygons, PolygonObject, Polyline, id_text, parse_polygons
from ray_export.project_types import microcapsule, sperm


@pytest.fixture(autouse=True)
def _codes_known(monkeypatch: pytest.MonkeyPatch) -> None:
    """The new problem codes are valid (they belong in the documented list of ray_export.problems)."""
    for code, meaning in {**sperm.PROBLEM_CODES, **microcapsule.PROBLEM_CODES}.items():
        if code not in problems_module.PROBLEM_CODES:
            monkeypatch.setitem(problems_module.PROBLEM_CODES, code, meaning)


def _open_length(points) -> float:
    p = np.asarray(points, dtype=np.float64)
    d = np.diff(p, axis=0)
    return float(np.hypot(d[:, 0], d[:, 1]).sum())


def _line(points, part=None, instance=None) -> dict:
    el: dict = {"geometry": "polyline", "type": "external", "points": [{"x": x, "y": y} for x, y in points]}
    if part is not None:
        el["partClass"] = part
    if instance is not None:
        el["instanceId"] = instance
    return el


def _wiggle(rng: np.random.Generator, n: int, start: tuple[float, float]) -> list[tuple[float, float]]:
    steps = rng.normal(0.0, 5.0, (n - 1, 2)) + np.array([3.0, 1.0])
    pts = np.vstack([np.asarray(start), np.asarray(start) + np.cumsum(steps, axis=0)])
    return [(float(x), float(y)) for x, y in pts]


def _codes(found) -> list[str]:
    return [p.code for p in found]


# ---------------------------------------------------------------- sperm


def test_sperm_lengths_match_segment_sums() -> None:
    rng = np.random.default_rng(7)
    cells = {}
    elements = []
    for cell in ("a", "b", "c"):
        parts = {
            part: _wiggle(rng, int(rng.integers(2, 40)), (rng.uniform(0, 500), rng.uniform(0, 500)))
            for part in sperm.PARTS
        }
        cells[cell] = parts
        elements += [_line(pts, part, cell) for part, pts in parts.items()]
    rng.shuffle(elements)
    order = []
    for el in elements:
        if el["instanceId"] not in order:
            order.append(el["instanceId"])

    rows, found = sperm.sperm_rows(parse_polygons(elements))
    assert found == []
    assert [r["instance_id"] for r in rows] == order
    for row in rows:
        parts = cells[row["instance_id"]]
        expected = {part: _open_length(parts[part]) for part in sperm.PARTS}
        for part in sperm.PARTS:
            assert row[f"{part}_length"] == pytest.approx(expected[part], rel=1e-12)
        assert row["total_length"] == pytest.approx(sum(expected.values()), rel=1e-12)
        assert list(row) == [name for name, _ in sperm.COLUMNS]


def test_sperm_open_length_does_not_close_the_curve() -> None:
    rows, _ = sperm.sperm_rows(
        parse_polygons(
            [
                _line([(0, 0), (3, 4)], "head", 1),
                _line([(3, 4), (3, 14), (13, 14)], "midpiece", 1),
                _line([(0, 0), (10, 0), (10, 10), (0, 10)], "tail", 1),
            ]
        )
    )
    assert rows == [
        {"instance_id": "1", "head_length": 5.0, "midpiece_length": 20.0, "tail_length": 30.0, "total_length": 55.0}
    ]


def test_sperm_missing_part_counts_zero_and_is_reported() -> None:
    head = [(0, 0), (6, 8)]
    tail = [(10, 10), (20, 10), (20, 30)]
    rows, found = sperm.sperm_rows(parse_polygons([_line(head, "head", "s1"), _line(tail, "tail", "s1")]))
    assert rows[0]["midpiece_length"] == 0.0
    assert rows[0]["total_length"] == pytest.approx(_open_length(head) + _open_length(tail))
    assert _codes(found) == ["sperm_part_missing"]
    assert "midpiece" in found[0].message and "'s1'" in found[0].message
    assert found[0].stage == "metrics"


def test_sperm_repeated_part_adds_up_and_is_reported() -> None:
    tail1 = [(0, 0), (30, 40)]
    tail2 = [(30, 40), (30, 70), (60, 70)]
    head = [(0, 0), (-3, -4)]
    mid = [(1, 1), (2, 2), (3, 5)]
    elements = [_line(head, "head", 9), _line(tail1, "tail", 9), _line(mid, "midpiece", 9), _line(tail2, "tail", 9)]
    rows, found = sperm.sperm_rows(parse_polygons(elements))
    assert rows[0]["tail_length"] == pytest.approx(_open_length(tail1) + _open_length(tail2))
    assert rows[0]["total_length"] == pytest.approx(sum(_open_length(p) for p in (head, mid, tail1, tail2)))
    assert _codes(found) == ["sperm_part_repeated"]
    assert "2 tail polylines (2, 4)" in found[0].message


def test_sperm_polyline_without_instance_is_left_out() -> None:
    elements = [
        _line([(0, 0), (100, 0)], "tail"),  # no instanceId
        _line([(0, 0), (0, 5)], "head", 3),
        {**_line([(0, 0), (0, 50)], "tail"), "instanceId": None},
        _line([(0, 0), (0, 7)], "midpiece", 3),
        _line([(0, 0), (0, 500)], "tail", "  "),  # blank text names no cell
        _line([(0, 0), (0, 11)], "tail", 3),
    ]
    rows, found = sperm.sperm_rows(parse_polygons(elements))
    assert rows == [
        {"instance_id": "3", "head_length": 5.0, "midpiece_length": 7.0, "tail_length": 11.0, "total_length": 23.0}
    ]
    assert _codes(found) == ["sperm_polyline_without_instance"] * 3
    assert [p.message.split()[1] for p in found] == ["1", "3", "5"]


def test_sperm_instance_ids_are_text_and_numbers_match_their_text() -> None:
    elements = [
        _line([(0, 0), (4, 0)], "head", 7),
        _line([(0, 0), (0, 2)], "head", "abc"),
        _line([(0, 0), (0, 6)], "midpiece", "7"),
        _line([(0, 0), (0, 1)], "tail", 7.0),
        _line([(0, 0), (0, 3)], "midpiece", "abc"),
        _line([(0, 0), (0, 8)], "tail", "abc"),
        _line([(0, 0), (0, 9)], "tail", 2.5),
    ]
    rows, found = sperm.sperm_rows(parse_polygons(elements))
    assert [r["instance_id"] for r in rows] == ["7", "abc", "2.5"]
    assert all(isinstance(r["instance_id"], str) for r in rows)
    assert rows[0]["total_length"] == 11.0
    assert rows[1]["total_length"] == 13.0
    assert rows[2]["tail_length"] == 9.0
    assert _codes(found) == ["sperm_part_missing"]  # only cell 2.5 lacks parts
    assert id_text(True) == "true"
    assert id_text({"b": 1, "a": 2}) == '{"a":2,"b":1}'
    assert id_text("") is None and id_text(None) is None


def test_sperm_unknown_part_class_is_reported_and_left_out() -> None:
    elements = [
        _line([(0, 0), (0, 5)], "head", "x"),
        _line([(0, 0), (0, 100)], "flagellum", "x"),
        _line([(0, 0), (0, 7)], "midpiece", "x"),
        _line([(0, 0), (0, 200)], None, "x"),
        _line([(0, 0), (0, 11)], "tail", "x"),
        _line([(0, 0), (0, 300)], "Tail", "x"),
    ]
    rows, found = sperm.sperm_rows(parse_polygons(elements))
    assert rows[0]["total_length"] == 23.0
    assert _codes(found) == ["sperm_part_unknown"] * 3
    assert "'flagellum'" in found[0].message and "no partClass" in found[1].message


def test_sperm_cell_of_unknown_parts_only_gets_a_zero_row() -> None:
    rows, found = sperm.sperm_rows(parse_polygons([_line([(0, 0), (0, 5)], "core", 1)]))
    assert rows == [
        {"instance_id": "1", "head_length": 0.0, "midpiece_length": 0.0, "tail_length": 0.0, "total_length": 0.0}
    ]
    assert _codes(found) == ["sperm_part_unknown", "sperm_part_missing"]
    assert "head, midpiece, tail" in found[1].message


def test_sperm_ignores_closed_polygons_and_empty_images() -> None:
    square = {"type": "external", "points": [{"x": 0, "y": 0}, {"x": 1, "y": 0}, {"x": 1, "y": 1}]}
    assert sperm.sperm_rows(parse_polygons([square])) == ([], [])
    assert sperm.sperm_rows(ImagePolygons()) == ([], [])


def test_sperm_declarations() -> None:
    assert [name for name, _ in sperm.COLUMNS] == [
        "instance_id",
        "head_length",
        "midpiece_length",
        "tail_length",
        "total_length",
    ]
    assert dict(sperm.COLUMNS)["instance_id"] == "text"
    assert all(kind == "length" for name, kind in sperm.COLUMNS if name != "instance_id")
    for name, _ in sperm.COLUMNS:
        assert f"`{name}`" in sperm.FORMULAS
    for code in sperm.PROBLEM_CODES:
        assert f"`{code}`" in sperm.FORMULAS


def test_sperm_lengths_of_polyline_objects() -> None:
    line = Polyline(
        number=1, points=np.array([[0.0, 0.0], [1e6, 0.0], [1e6, 1e6 + 0.5]]), part_class="tail", instance_id=1
    )
    rows, _ = sperm.sperm_rows(ImagePolygons(polylines=[line]))
    assert rows[0]["tail_length"] == 2e6 + 0.5


# ---------------------------------------------------------------- microcapsule


def _ring(n: int, a: float, b: float, cx: float = 0.0, cy: float = 0.0, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.c_[cx + a * np.cos(t), cy + b * np.sin(t)]


def _capsule(outer, number=1, complete=True, confidence=None, holes=()) -> PolygonObject:
    return PolygonObject(
        number=number,
        outer=np.asarray(outer, dtype=np.float64),
        complete=complete,
        confidence=confidence,
        holes=[np.asarray(h, dtype=np.float64) for h in holes],
    )


def test_microcapsule_circle() -> None:
    r = 50.0
    rows = microcapsule.microcapsule_rows(ImagePolygons(objects=[_capsule(_ring(720, r, r, 300, 200), confidence=0.9)]))
    (row,) = rows
    assert list(row) == [name for name, _ in microcapsule.COLUMNS]
    assert row["capsule_id"] == 1 and row["confidence"] == 0.9
    assert row["ovality"] >= 1.0 and row["ovality"] == pytest.approx(1.0, abs=1e-4)
    assert row["circularity"] > 0.999
    assert row["diameter"] == pytest.approx(2 * r, rel=1e-4)
    assert row["equivalent_diameter"] == pytest.approx(2 * r, rel=1e-4)
    assert row["width"] == pytest.approx(2 * r) and row["height"] == pytest.approx(2 * r, rel=1e-4)
    area = 0.5 * 720 * r * r * math.sin(2 * math.pi / 720)
    assert row["area"] == pytest.approx(area, rel=1e-12)
    assert row["perimeter"] == pytest.approx(720 * 2 * r * math.sin(math.pi / 720), rel=1e-12)


@pytest.mark.parametrize(("a", "b", "angle"), [(40.0, 20.0, 0.0), (90.0, 30.0, 0.3), (25.0, 24.0, 1.1)])
def test_microcapsule_ellipse(a: float, b: float, angle: float) -> None:
    ring = _ring(720, a, b)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    ring = ring @ rot.T + np.array([500.0, 400.0])
    (row,) = microcapsule.microcapsule_rows(ImagePolygons(objects=[_capsule(ring)]))
    assert row["feret_max"] == pytest.approx(2 * a, rel=1e-4)
    assert row["feret_min"] == pytest.approx(2 * b, rel=1e-4)
    assert row["ovality"] >= 1.0
    assert row["ovality"] == pytest.approx(a / b, rel=1e-4)
    assert row["ovality"] == row["feret_max"] / row["feret_min"]
    assert row["diameter"] == (row["feret_max"] + row["feret_min"]) / 2
    assert row["area"] == pytest.approx(math.pi * a * b, rel=1e-4)
    assert row["equivalent_diameter"] == pytest.approx(2 * math.sqrt(a * b), rel=1e-4)
    # the bounding box of a rotated ellipse: half-widths √(a²cos² + b²sin²), √(a²sin² + b²cos²)
    c, s = math.cos(angle), math.sin(angle)
    assert row["width"] == pytest.approx(2 * math.hypot(a * c, b * s), rel=1e-4)
    assert row["height"] == pytest.approx(2 * math.hypot(a * s, b * c), rel=1e-4)
    assert row["confidence"] is None


def test_microcapsule_equals_per_object_metrics() -> None:
    rng = np.random.default_rng(3)
    objects = []
    for number in range(1, 9):
        n = int(rng.integers(3, 60))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(5, 80, n)
        ring = np.c_[radii * np.cos(t), radii * np.sin(t)] + rng.uniform(0, 1e5, 2)
        objects.append(_capsule(ring, number=number, confidence=float(rng.uniform())))
    objects[2].holes.append(np.mean(objects[2].outer, axis=0) + np.array([[0, 0], [1, 0], [0, 1]]))
    rows = microcapsule.microcapsule_rows(ImagePolygons(objects=objects))
    assert [r["capsule_id"] for r in rows] == list(range(1, 9))
    same = {
        "area": "area",
        "perimeter": "perimeter",
        "width": "bbox_width",
        "height": "bbox_height",
        "feret_max": "feret_max",
        "feret_min": "feret_min",
        "equivalent_diameter": "equivalent_diameter",
        "circularity": "circularity",
        "ovality": "feret_aspect_ratio",
    }
    for obj, row in zip(objects, rows, strict=True):
        values, _ = object_metrics(obj, None)
        for mine, theirs in same.items():
            assert row[mine] == values[theirs], mine
        assert row["diameter"] == (values["feret_max"] + values["feret_min"]) / 2
        assert row["confidence"] == obj.confidence
        assert row["ovality"] >= 1.0


def test_microcapsule_leaves_out_incomplete_capsules_and_follows_numbers() -> None:
    elements = [
        {"type": "external", "points": [{"x": x, "y": y} for x, y in _ring(64, 10, 10, 50, 50)], "confidence": 0.5},
        {"type": "external", "complete": False, "points": [{"x": x, "y": y} for x, y in _ring(64, 10, 10, 0, 0)]},
        {"type": "external", "complete": None, "points": [{"x": x, "y": y} for x, y in _ring(64, 8, 4, 90, 90)]},
        {"geometry": "polyline", "points": [{"x": 0, "y": 0}, {"x": 5, "y": 5}]},
    ]
    rows = microcapsule.microcapsule_rows(parse_polygons(elements))
    assert [r["capsule_id"] for r in rows] == [1, 3]
    assert rows[0]["confidence"] == 0.5
    assert microcapsule.microcapsule_rows(ImagePolygons()) == []


def test_microcapsule_degenerate_capsule_has_undefined_ovality() -> None:
    line = _capsule([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    (row,) = microcapsule.microcapsule_rows(ImagePolygons(objects=[line]))
    assert row["feret_min"] == 0.0 and row["ovality"] is None
    assert row["feret_max"] == 20.0 and row["diameter"] == 10.0
    assert row["area"] == 0.0


def test_microcapsule_summary() -> None:
    objects = [
        _capsule(_ring(720, r, r * q), number=i + 1, confidence=c)
        for i, (r, q, c) in enumerate([(10.0, 1.0, 0.5), (20.0, 0.5, None), (35.0, 0.8, 0.9)])
    ]
    objects.append(_capsule([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]], number=4))
    rows = microcapsule.microcapsule_rows(ImagePolygons(objects=objects))
    stats = dict(microcapsule.summary(rows))
    assert list(stats) == list(microcapsule.SUMMARY_COLUMNS)
    assert "capsule_id" not in stats
    for name, (count, mean, std, low, median, high) in stats.items():
        data = np.array([r[name] for r in rows if r[name] is not None], dtype=np.float64)
        assert count == len(data), name
        assert mean == pytest.approx(float(np.mean(data)), rel=1e-12)
        assert std == pytest.approx(float(np.std(data, ddof=1)), rel=1e-12)
        assert (low, median, high) == (float(data.min()), float(np.median(data)), float(data.max()))
    assert stats["ovality"][0] == 3  # the line has no ovality
    assert stats["confidence"][0] == 2
    assert microcapsule.summary([])[0] == ("area", [0.0, None, None, None, None, None])


def test_microcapsule_declarations() -> None:
    kinds = dict(microcapsule.COLUMNS)
    assert kinds["capsule_id"] == "int" and kinds["area"] == "area"
    assert {name for name, kind in microcapsule.COLUMNS if kind == "length"} == {
        "perimeter",
        "width",
        "height",
        "feret_max",
        "feret_min",
        "diameter",
        "equivalent_diameter",
    }
    assert {name for name, kind in microcapsule.COLUMNS if kind == "unitless"} == {
        "circularity",
        "ovality",
        "confidence",
    }
    for name, _ in microcapsule.COLUMNS:
        assert f"`{name}`" in microcapsule.FORMULAS
    kinds_used = {kind for _, kind in sperm.COLUMNS + microcapsule.COLUMNS}
    assert kinds_used <= {"length", "area", "unitless", "int", "text"}
