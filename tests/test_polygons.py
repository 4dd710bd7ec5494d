"""Polygon JSON reading: accepted forms, drops with coded reasons, hole ownership, numbering."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ray_export.polygons import parse_polygons


def ring(*pts: tuple[float, float]) -> list[dict]:
    return [{"x": x, "y": y} for x, y in pts]


SQUARE = ring((0, 0), (10, 0), (10, 10), (0, 10))
BIG = ring((0, 0), (100, 0), (100, 100), (0, 100))
HOLE = ring((3, 3), (7, 3), (7, 7), (3, 7))


def codes(parsed) -> list[str]:
    return [p.code for p in parsed.problems]


@pytest.mark.parametrize("raw", [None, "", "null", "  null ", b"null", "[]", '{"polygons": []}', '{"polygons": null}'])
def test_empty_forms_give_no_objects_and_no_problems(raw):
    parsed = parse_polygons(raw)
    assert parsed.objects == [] and parsed.polylines == [] and parsed.problems == []


def test_array_and_legacy_object_forms_are_equivalent():
    elements = [{"type": "external", "points": SQUARE}]
    a = parse_polygons(json.dumps(elements))
    b = parse_polygons(json.dumps({"polygons": elements}))
    c = parse_polygons(elements)
    for parsed in (a, b, c):
        assert len(parsed.objects) == 1
        np.testing.assert_array_equal(parsed.objects[0].outer, [[0, 0], [10, 0], [10, 10], [0, 10]])


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "polygons_invalid_json"),
        ('"just a string"', "polygons_unexpected_shape"),
        ("42", "polygons_unexpected_shape"),
        ('{"other": 1}', "polygons_unexpected_shape"),
        ("[1, \"x\"]", "element_not_object"),
        (json.dumps([{"points": SQUARE}]), "element_unknown_type"),
        (json.dumps([{"type": "hole", "points": SQUARE}]), "element_unknown_type"),
        (json.dumps([{"type": "external", "points": ring((0, 0), (1, 1))}]), "polygon_too_few_points"),
        (json.dumps([{"type": "external", "points": ring((0, 0), (1, 1), (0, 0), (0, 0))}]), "polygon_too_few_points"),
        (json.dumps([{"type": "external", "points": "abc"}]), "points_not_finite"),
        (json.dumps([{"geometry": "polyline", "points": ring((1, 1))}]), "polygon_too_few_points"),
    ],
)
def test_each_bad_form_is_reported_never_raised(raw, code):
    parsed = parse_polygons(raw)
    assert code in codes(parsed)
    assert parsed.objects == []
    assert all(p.stage == "parse" for p in parsed.problems)


def test_non_finite_points_are_dropped_and_counted():
    pts = [*SQUARE, {"x": float("nan"), "y": 1}, {"x": 1}, {"x": True, "y": 2}, {"x": "3", "y": 4}, [5, 5]]
    text = json.dumps([{"type": "external", "points": pts}], allow_nan=True)
    parsed = parse_polygons(text)
    assert len(parsed.objects) == 1
    assert parsed.objects[0].outer.shape == (5, 2)  # the four corners plus the [5, 5] pair
    (problem,) = parsed.problems
    assert problem.code == "points_not_finite" and "4 point" in problem.message


def test_numbering_follows_array_order_of_valid_externals_only():
    elements = [
        {"type": "external", "points": ring((0, 0), (1, 1))},  # dropped: too few points
        {"type": "external", "id": "a", "points": SQUARE},
        {"geometry": "polyline", "points": ring((0, 0), (5, 5))},
        {"type": "external", "id": "b", "points": BIG, "complete": False, "confidence": 0.75},
    ]
    parsed = parse_polygons(json.dumps(elements))
    assert [(o.number, o.element_id, o.complete) for o in parsed.objects] == [(1, "a", True), (2, "b", False)]
    assert parsed.objects[1].confidence == 0.75
    assert [p.number for p in parsed.polylines] == [1]
    assert codes(parsed) == ["polygon_too_few_points"]


def test_hole_by_parent_id_even_when_another_external_contains_it():
    elements = [
        {"type": "external", "id": "big", "points": BIG},
        {"type": "external", "id": "small", "points": SQUARE},
        {"type": "internal", "parent_id": "big", "points": HOLE},
    ]
    parsed = parse_polygons(json.dumps(elements))
    assert len(parsed.objects[0].holes) == 1 and parsed.objects[1].holes == []
    assert parsed.problems == []


def test_hole_without_parent_goes_to_smallest_container():
    elements = [
        {"type": "external", "id": "big", "points": BIG},
        {"type": "external", "id": "small", "points": SQUARE},
        {"type": "internal", "points": HOLE},
    ]
    parsed = parse_polygons(json.dumps(elements))
    assert parsed.objects[0].holes == [] and len(parsed.objects[1].holes) == 1


def test_invalid_parent_falls_back_to_containment_and_is_reported():
    elements = [
        {"type": "external", "id": "big", "points": BIG},
        {"type": "internal", "parent_id": "nope", "points": HOLE},
        {"type": "internal", "parent_id": "big", "points": ring((200, 200), (210, 200), (210, 210))},
    ]
    parsed = parse_polygons(json.dumps(elements))
    assert len(parsed.objects[0].holes) == 2  # parent_id "big" is valid even outside the ring
    assert codes(parsed) == ["hole_parent_invalid"]


def test_parent_id_naming_a_dropped_external_is_invalid():
    elements = [
        {"type": "external", "id": "tiny", "points": ring((0, 0), (1, 0))},
        {"type": "internal", "parent_id": "tiny", "points": HOLE},
    ]
    parsed = parse_polygons(json.dumps(elements))
    assert len(parsed.orphan_holes) == 1
    assert codes(parsed) == ["polygon_too_few_points", "hole_parent_invalid", "hole_orphan"]


def test_orphan_hole_is_kept_apart():
    elements = [
        {"type": "external", "points": SQUARE},
        {"type": "internal", "points": ring((50, 50), (60, 50), (60, 60))},
    ]
    parsed = parse_polygons(json.dumps(elements))
    assert parsed.objects[0].holes == []
    assert len(parsed.orphan_holes) == 1
    assert codes(parsed) == ["hole_orphan"]


def test_hole_with_vertex_outside_is_not_contained():
    elements = [
        {"type": "external", "points": SQUARE},
        {"type": "internal", "points": ring((3, 3), (12, 3), (3, 7))},
    ]
    parsed = parse_polygons(json.dumps(elements))
    assert len(parsed.orphan_holes) == 1


def test_closing_vertex_and_repeats_are_removed():
    pts = ring((0, 0), (10, 0), (10, 0), (10, 10), (0, 10), (0, 0))
    parsed = parse_polygons([{"type": "external", "points": pts}])
    np.testing.assert_array_equal(parsed.objects[0].outer, [[0, 0], [10, 0], [10, 10], [0, 10]])


def test_polyline_attributes_are_kept():
    el = {"geometry": "polyline", "type": "external", "partClass": "tail", "instanceId": 7, "points": SQUARE}
    parsed = parse_polygons([el])
    assert parsed.objects == []
    (line,) = parsed.polylines
    assert line.part_class == "tail" and line.instance_id == 7 and line.points.shape == (4, 2)


def test_duplicate_external_ids_give_holes_by_containment_and_are_reported():
    left = ring((0, 0), (100, 0), (100, 100), (0, 100))
    right = ring((200, 0), (300, 0), (300, 100), (200, 100))
    hole_in_right = ring((240, 40), (260, 40), (260, 60), (240, 60))
    parsed = parse_polygons(
        [
            {"type": "external", "id": "same", "points": left},
            {"type": "external", "id": "same", "points": right},
            {"type": "internal", "parent_id": "same", "points": hole_in_right},
        ]
    )
    assert [len(o.holes) for o in parsed.objects] == [0, 1]
    assert parsed.orphan_holes == []
    dup = [p for p in parsed.problems if p.code == "polygon_id_duplicate"]
    assert len(dup) == 1 and "'same'" in dup[0].message and "1, 2" in dup[0].message


def test_duplicate_external_ids_hole_inside_neither_falls_back_to_any_container():
    left = ring((0, 0), (100, 0), (100, 100), (0, 100))
    right = ring((200, 0), (300, 0), (300, 100), (200, 100))
    other = ring((400, 0), (500, 0), (500, 100), (400, 100))
    hole = ring((440, 40), (460, 40), (460, 60), (440, 60))
    parsed = parse_polygons(
        [
            {"type": "external", "id": 7, "points": left},
            {"type": "external", "id": 7, "points": right},
            {"type": "external", "id": 8, "points": other},
            {"type": "internal", "parent_id": 7, "points": hole},
        ]
    )
    assert [len(o.holes) for o in parsed.objects] == [0, 0, 1]


def test_lone_surrogate_in_copied_text_is_replaced_and_reported():
    points = '[{"x":0,"y":0},{"x":5,"y":0},{"x":0,"y":5}]'
    text = '[{"type":"external","partClass":"\\udc80x","id":"a\\ud800","points":' + points + "}]"
    parsed = parse_polygons(text)
    obj = parsed.objects[0]
    assert obj.part_class == "\ufffdx" and obj.element_id == "a\ufffd"
    obj.part_class.encode("utf-8")
    codes = [p.code for p in parsed.problems]
    assert codes == ["text_invalid_unicode"]
    assert "id, partClass" in parsed.problems[0].message


def test_nan_attribute_is_not_reported_as_invalid_text():
    parsed = parse_polygons(
        [{"type": "external", "partClass": [float("nan")], "points": [[0, 0], [5, 0], [0, 5]]}]
    )
    assert parsed.objects[0].part_class == [None]
    assert parsed.problems == []
