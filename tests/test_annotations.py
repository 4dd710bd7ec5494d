"""COCO, YOLO-seg and JSON export: per-image conversion and the streaming writers."""

from __future__ import annotations

import io
import json
import math
import re

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from shapely.geometry import Polygon as ShapelyPolygon

from ray_export.formats.coco import (
    CocoWriter,
    _decode_counts,
    clip_ring_to_box,
    coco_annotations_for_image,
    coco_image_entry,
)
from ray_export.formats.json_export import JsonExportWriter, json_image_entry
from ray_export.formats.yolo import bridged_ring, data_yaml_text, yolo_label_text
from ray_export.geometry import ring_signed_area
from ray_export.polygons import ImagePolygons, parse_polygons

WIDTH, HEIGHT = 600, 400


def _pts(coords) -> list[dict]:
    return [{"x": float(x), "y": float(y)} for x, y in coords]


def _circle(cx: float, cy: float, r: float, n: int = 120) -> list[tuple[float, float]]:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return list(zip((cx + r * np.cos(t)).tolist(), (cy + r * np.sin(t)).tolist(), strict=True))


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _first_image_json() -> str:
    elements = [
        # 1: hole-free irregular polygon
        {
            "id": "a",
            "type": "external",
            "points": _pts([(20, 20), (120, 25), (110, 100), (60, 120), (15, 90)]),
            "confidence": 0.9,
        },
        # 2: disc with one hole (given by parent_id)
        {"id": "b", "type": "external", "points": _pts(_circle(250, 80, 60)), "confidence": 0.8},
        {"type": "internal", "parent_id": "b", "points": _pts(_circle(255, 75, 20, 60))},
        # 3: rectangle with two holes (found by containment), holes listed clockwise and counter-clockwise
        {"id": "c", "type": "external", "points": _pts(_rect(30, 150, 230, 280))},
        {"type": "internal", "points": _pts(_rect(50, 170, 100, 230))},
        {"type": "internal", "points": _pts(_rect(140, 180, 200, 260)[::-1])},
        # a polyline
        {
            "geometry": "polyline",
            "points": _pts([(300, 200), (340, 220), (380, 210)]),
            "partClass": "tail",
            "instanceId": 7,
            "confidence": 0.5,
        },
        # 4: incomplete object cut by the left border, points outside the image
        {
            "id": "d",
            "type": "external",
            "complete": False,
            "points": _pts([(-6, 290), (60, 290), (60, 390), (-6, 390)]),
        },
        # an orphan hole
        {"type": "internal", "points": _pts(_rect(350, 100, 360, 110))},
        # 5: object reaching past the right and bottom borders
        {"id": "e", "type": "external", "points": _pts(_rect(520, 320, 610, 410))},
    ]
    return json.dumps(elements)


def _second_image_json() -> str:
    return json.dumps(
        [
            {"type": "external", "points": _pts(_rect(10, 10, 110, 80))},
            {"type": "external", "points": _pts(_circle(150, 150, 50))},
            {"type": "internal", "points": _pts(_circle(150, 150, 15, 40))},
        ]
    )


@pytest.fixture
def first_image() -> ImagePolygons:
    parsed = parse_polygons(_first_image_json())
    assert len(parsed.objects) == 5
    assert [len(o.holes) for o in parsed.objects] == [0, 1, 2, 0, 0]
    assert len(parsed.polylines) == 1
    assert len(parsed.orphan_holes) == 1
    return parsed


@pytest.fixture
def second_image() -> ImagePolygons:
    return parse_polygons(_second_image_json())


def _write_coco(tmp_path, images, info=None) -> tuple[bytes, str]:
    """images: list of (index, name, parsed, width, height). Returns the file bytes and its path."""
    path = tmp_path / "annotations.json"
    with CocoWriter(
        info or {"description": "test", "date_created": "2024-01-02T03:04:05Z"}, spool_dir=str(tmp_path)
    ) as w:
        for index, name, parsed, width, height in images:
            anns, problems = coco_annotations_for_image(index, parsed, width, height)
            assert [p.code for p in problems] == ["polyline_not_in_coco"] * bool(parsed.polylines)
            w.add_image(coco_image_entry(index, name, width, height), anns)
        with open(path, "wb") as f:
            w.write(f)
        buf = io.BytesIO()
        w.write(buf)
    data = path.read_bytes()
    assert buf.getvalue() == data  # writing twice gives the same bytes
    return data, str(path)


def _fill_yolo_line(line: str, width: int, height: int) -> np.ndarray:
    values = [float(v) for v in line.split()[1:]]
    pts = np.array(values, dtype=np.float64).reshape(-1, 2) * [width, height]
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask


def _ann_rle(ann: dict) -> dict:
    """The annotation's mask as RLE, decoded the way COCO.annToRLE does."""
    segm = ann["segmentation"]
    return segm if isinstance(segm, dict) else mask_utils.merge(mask_utils.frPyObjects(segm, HEIGHT, WIDTH))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# ---------------------------------------------------------------- COCO


def test_coco_file_loads_and_masks_decode(tmp_path, first_image, second_image):
    data, path = _write_coco(
        tmp_path, [(1, "a.png", first_image, WIDTH, HEIGHT), (2, "b.png", second_image, WIDTH, HEIGHT)]
    )
    coco = COCO(path)
    doc = json.loads(data)
    assert list(doc) == ["info", "licenses", "images", "annotations", "categories"]
    assert doc["licenses"] == []
    assert doc["images"] == [
        {"id": 1, "file_name": "a.png", "width": WIDTH, "height": HEIGHT},
        {"id": 2, "file_name": "b.png", "width": WIDTH, "height": HEIGHT},
    ]
    assert doc["categories"] == [{"id": 1, "name": "cell", "supercategory": "cell"}]  # no polyline category

    anns = doc["annotations"]
    assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    order = [(a["image_id"], a["category_id"], a["attributes"]["number"]) for a in anns]
    assert order == [(1, 1, 1), (1, 1, 2), (1, 1, 3), (1, 1, 4), (1, 1, 5), (2, 1, 1), (2, 1, 2)]

    for ann in anns:
        mask = coco.annToMask(coco.anns[ann["id"]])
        assert mask.shape == (HEIGHT, WIDTH)
        assert ann["iscrowd"] == 0
        assert isinstance(ann["area"], float)
        assert ann["area"] == float(mask.sum())
        assert mask.sum() > 0
        holes = ann["attributes"].get("holes", 0)
        if holes:
            assert isinstance(ann["segmentation"], dict)
            assert isinstance(ann["segmentation"]["counts"], str)
            assert ann["segmentation"]["size"] == [HEIGHT, WIDTH]
        else:
            assert isinstance(ann["segmentation"], list) and len(ann["segmentation"]) == 1


def test_coco_holes_are_empty_and_attributes(tmp_path, first_image):
    data, path = _write_coco(tmp_path, [(3, "a.png", first_image, WIDTH, HEIGHT)])
    coco = COCO(path)
    anns = {(a["category_id"], a["attributes"]["number"]): a for a in json.loads(data)["annotations"]}

    disc = anns[(1, 2)]
    disc_mask = coco.annToMask(coco.anns[disc["id"]])
    assert disc_mask[75, 255] == 0  # hole centre
    assert disc_mask[80, 200] == 1  # ring between hole and outer edge
    assert disc["attributes"] == {"number": 2, "model_confidence": 0.8, "holes": 1, "complete": True}
    assert disc["image_id"] == 3

    rect = anns[(1, 3)]
    rect_mask = coco.annToMask(coco.anns[rect["id"]])
    assert rect_mask[170:230, 50:100].sum() == 0
    assert rect_mask[180:260, 140:200].sum() == 0
    assert rect_mask[150:280, 30:230].sum() == 200 * 130 - 50 * 60 - 60 * 80
    assert rect["area"] == 200 * 130 - 50 * 60 - 60 * 80
    assert rect["bbox"] == [30.0, 150.0, 200.0, 130.0]
    assert rect["attributes"]["holes"] == 2

    first = anns[(1, 1)]
    assert first["segmentation"] == [[20.0, 20.0, 120.0, 25.0, 110.0, 100.0, 60.0, 120.0, 15.0, 90.0]]
    assert first["bbox"] == [15.0, 20.0, 105.0, 100.0]
    assert first["attributes"] == {"number": 1, "model_confidence": 0.9, "holes": 0, "complete": True}

    cut = anns[(1, 4)]
    assert cut["attributes"]["complete"] is False
    assert cut["bbox"] == [-6.0, 290.0, 66.0, 100.0]
    assert cut["area"] == 60 * 100  # only the pixels inside the image

    over = anns[(1, 5)]
    assert over["area"] == (WIDTH - 520) * (HEIGHT - 320)

    assert {category for category, _ in anns} == {1}  # the image's polyline is not in COCO


def test_coco_rle_equals_outer_minus_holes_pixelwise(first_image):
    anns, _ = coco_annotations_for_image(1, first_image, WIDTH, HEIGHT)
    for obj, ann in zip(first_image.objects, anns, strict=False):
        outer = mask_utils.decode(
            mask_utils.merge(mask_utils.frPyObjects([obj.outer.reshape(-1).tolist()], HEIGHT, WIDTH))
        )
        expected = outer.astype(bool)
        for hole in obj.holes:
            hole_mask = mask_utils.decode(mask_utils.frPyObjects([hole.reshape(-1).tolist()], HEIGHT, WIDTH)[0])
            expected &= ~hole_mask.astype(bool)
        assert np.array_equal(mask_utils.decode(_ann_rle(ann)).astype(bool), expected)


def test_rle_count_decoding_round_trips():
    rng = np.random.default_rng(5)
    mask = np.asfortranarray((rng.random((37, 23)) > 0.6).astype(np.uint8))
    rle = mask_utils.encode(mask)
    runs = _decode_counts(rle["counts"])
    assert sum(runs) == mask.size
    flat = mask.reshape(-1, order="F")
    rebuilt = np.concatenate([np.full(n, i % 2, dtype=np.uint8) for i, n in enumerate(runs)])
    assert np.array_equal(rebuilt, flat)


def test_categories_without_polylines(tmp_path, second_image):
    data, path = _write_coco(tmp_path, [(1, "b.png", second_image, WIDTH, HEIGHT)])
    doc = json.loads(data)
    assert doc["categories"] == [{"id": 1, "name": "cell", "supercategory": "cell"}]
    COCO(path)


def test_coco_unknown_size_gives_problem_and_no_annotations(first_image):
    anns, problems = coco_annotations_for_image(1, first_image, 0, 0)
    assert anns == []
    assert [p.code for p in problems] == ["annotation_failed", "polyline_not_in_coco"]
    assert "size unknown" in problems[0].message and "1 polyline(s)" in problems[1].message
    assert coco_annotations_for_image(1, parse_polygons(None), 0, 0) == ([], [])


def test_coco_far_out_vertices_are_clipped_not_expanded():
    parsed = parse_polygons(
        json.dumps(
            [
                {"type": "external", "points": _pts([(10, 10), (1e9, 10), (1e9, 50), (10, 50)])},
                {"type": "external", "points": _pts([(-1e9, -1e9), (-1e9 + 5, -1e9), (-1e9, -1e9 + 5)])},
                {"geometry": "polyline", "points": _pts([(5, 5), (9e8, 7e8)])},
            ]
        )
    )
    anns, problems = coco_annotations_for_image(1, parsed, WIDTH, HEIGHT)
    assert [p.code for p in problems] == ["polyline_not_in_coco"]
    assert len(anns) == 2 and {a["category_id"] for a in anns} == {1}
    expected = mask_utils.decode(mask_utils.frPyObjects([[10, 10, 601, 10, 601, 50, 10, 50]], HEIGHT, WIDTH)[0])
    rle0 = mask_utils.merge(mask_utils.frPyObjects(anns[0]["segmentation"], HEIGHT, WIDTH))
    assert np.array_equal(mask_utils.decode(rle0), expected)
    assert anns[0]["area"] == float(expected.sum())
    assert anns[0]["bbox"] == [10.0, 10.0, 1e9 - 10, 40.0]
    assert anns[1]["area"] == 0.0
    assert mask_utils.area(_ann_rle(anns[1])) == 0


def test_clip_ring_to_box_matches_shapely():
    rng = np.random.default_rng(11)
    box = ShapelyPolygon(_rect(0, 0, 100, 80))
    for _ in range(50):
        ring = np.array(_circle(50, 40, 70, 9)) + rng.normal(0, 25, (9, 2))
        poly = ShapelyPolygon(ring)
        if not poly.is_valid:
            continue
        clipped = clip_ring_to_box(ring, 0, 0, 100, 80)
        assert abs(ring_signed_area(clipped)) == pytest.approx(poly.intersection(box).area, rel=1e-9, abs=1e-9)


def test_coco_object_failure_is_reported_not_raised(first_image):
    first_image.objects[1].holes.append(np.zeros((0, 2)))  # malformed hole from a broken caller
    first_image.objects[0].outer = np.array([[np.nan, 1.0], [2.0, 3.0], [4.0, 5.0]])
    anns, problems = coco_annotations_for_image(1, first_image, WIDTH, HEIGHT)
    failures = [p for p in problems if p.code == "annotation_failed"]
    assert all(p.stage == "annotate" for p in problems) and problems[-1].code == "polyline_not_in_coco"
    assert len(anns) + len(failures) == len(first_image.objects) and len(problems) == len(failures) + 1


def test_coco_writer_rejects_out_of_order_images():
    with CocoWriter({}) as w:
        w.add_image(coco_image_entry(2, "a.png", 10, 10), [])
        with pytest.raises(ValueError):
            w.add_image(coco_image_entry(1, "b.png", 10, 10), [])


def test_coco_same_input_same_bytes(tmp_path, first_image, second_image):
    images = [(1, "a.png", first_image, WIDTH, HEIGHT), (2, "b.png", second_image, WIDTH, HEIGHT)]
    first, _ = _write_coco(tmp_path, images)
    again = [
        (i, n, parse_polygons(_first_image_json() if i == 1 else _second_image_json()), w, h)
        for i, n, _, w, h in images
    ]
    second, _ = _write_coco(tmp_path, again)
    assert first == second
    text = io.StringIO()
    with CocoWriter({"description": "test", "date_created": "2024-01-02T03:04:05Z"}) as w:
        for index, name, parsed, width, height in images:
            w.add_image(
                coco_image_entry(index, name, width, height),
                coco_annotations_for_image(index, parsed, width, height)[0],
            )
        w.write(text)
    assert text.getvalue().encode("utf-8") == first


# ---------------------------------------------------------------- YOLO


def test_yolo_lines_reproduce_coco_masks(tmp_path, first_image, second_image):
    for index, parsed in ((1, first_image), (2, second_image)):
        text = yolo_label_text(parsed, WIDTH, HEIGHT)
        lines = text.splitlines()
        assert text.endswith("\n")
        assert len(lines) == len(parsed.objects)
        anns, _ = coco_annotations_for_image(index, parsed, WIDTH, HEIGHT)
        closed = [a for a in anns if a["category_id"] == 1]
        for obj, line, ann in zip(parsed.objects, lines, closed, strict=True):
            assert ann["attributes"]["number"] == obj.number
            tokens = line.split()
            assert tokens[0] == "0"
            assert all(re.fullmatch(r"[01]\.\d{6}", t) for t in tokens[1:])
            values = np.array([float(t) for t in tokens[1:]])
            assert values.min() >= 0.0 and values.max() <= 1.0
            coco_mask = mask_utils.decode(_ann_rle(ann))
            yolo_mask = _fill_yolo_line(line, WIDTH, HEIGHT)
            assert _iou(coco_mask, yolo_mask) >= 0.95, (index, obj.number)
            for hole in obj.holes:
                cx, cy = hole.mean(axis=0)
                assert yolo_mask[round(cy), round(cx)] == 0


def test_yolo_clamps_and_keeps_incomplete_objects(first_image):
    lines = yolo_label_text(first_image, WIDTH, HEIGHT).splitlines()
    cut = lines[3].split()[1:]  # object 4 starts at x = -6
    assert cut[0] == "0.000000"
    assert cut[2] == "%.6f" % (60 / WIDTH)
    over = [float(v) for v in lines[4].split()[1:]]
    assert max(over[0::2]) == 1.0 and max(over[1::2]) == 1.0
    assert "-" not in "".join(lines)


def test_yolo_bridged_ring_keeps_the_area_with_holes(first_image):
    for obj in first_image.objects:
        ring = bridged_ring(obj.outer, obj.holes)
        expected = abs(ring_signed_area(obj.outer)) - sum(abs(ring_signed_area(h)) for h in obj.holes)
        assert abs(ring_signed_area(ring)) == pytest.approx(expected, rel=1e-12)
        assert len(ring) == len(obj.outer) + sum(len(h) + 2 for h in obj.holes)


def test_yolo_empty_cases():
    parsed = parse_polygons(_first_image_json())
    assert yolo_label_text(parsed, 0, 0) == ""
    assert yolo_label_text(parsed, WIDTH, None) == ""
    assert yolo_label_text(parse_polygons("[]"), WIDTH, HEIGHT) == ""
    only_line = parse_polygons(json.dumps([{"geometry": "polyline", "points": _pts([(1, 1), (5, 5)])}]))
    assert yolo_label_text(only_line, WIDTH, HEIGHT) == ""
    assert yolo_label_text(parsed, WIDTH, HEIGHT) == yolo_label_text(parse_polygons(_first_image_json()), WIDTH, HEIGHT)


def test_data_yaml():
    import yaml

    doc = yaml.safe_load(data_yaml_text())
    assert doc["train"] == "images" and doc["val"] == "images"
    assert doc["names"] == {0: "cell"}


# ---------------------------------------------------------------- JSON export


def _write_json_export(tmp_path, images) -> bytes:
    with JsonExportWriter("2024-01-02T03:04:05Z", spool_dir=str(tmp_path)) as w:
        for index, image_id, name, parsed in images:
            w.add_image(json_image_entry(index, image_id, name, WIDTH, HEIGHT, parsed))
        out = io.BytesIO()
        w.write(out)
        again = io.BytesIO()
        w.write(again)
    assert out.getvalue() == again.getvalue()
    return out.getvalue()


def test_json_export_geometry(tmp_path, first_image, second_image):
    data = _write_json_export(tmp_path, [(1, "img-1", "a.png", first_image), (2, "img-2", "b.png", second_image)])
    doc = json.loads(data)
    assert list(doc) == ["export_time", "images"]
    assert doc["export_time"] == "2024-01-02T03:04:05Z"
    first, second = doc["images"]
    assert {k: first[k] for k in ("index", "image_id", "file_name", "width", "height")} == {
        "index": 1,
        "image_id": "img-1",
        "file_name": "a.png",
        "width": WIDTH,
        "height": HEIGHT,
    }
    assert second["index"] == 2 and second["polylines"] == []

    objects = first["objects"]
    assert [o["number"] for o in objects] == [1, 2, 3, 4, 5]
    for entry, obj in zip(objects, first_image.objects, strict=True):
        shape = ShapelyPolygon(obj.outer, [h for h in obj.holes])
        assert entry["area"] == pytest.approx(shape.area, rel=1e-12)
        assert entry["perimeter"] == pytest.approx(shape.exterior.length, rel=1e-12)
        assert entry["centroid"] == pytest.approx([shape.centroid.x, shape.centroid.y], rel=1e-9)
        assert entry["bbox"] == pytest.approx(
            [*shape.bounds[:2], shape.bounds[2] - shape.bounds[0], shape.bounds[3] - shape.bounds[1]]
        )
        assert entry["outer"] == obj.outer.tolist()
        assert entry["holes"] == [h.tolist() for h in obj.holes]
        assert len(entry["holes"]) == len(obj.holes)
    rect = objects[2]
    assert rect["area"] == 200 * 130 - 50 * 60 - 60 * 80
    assert rect["perimeter"] == 2 * (200 + 130)
    assert objects[0]["confidence"] == 0.9 and objects[2]["confidence"] is None
    assert objects[3]["complete"] is False

    assert first["polylines"] == [
        {
            "number": 1,
            "points": [[300.0, 200.0], [340.0, 220.0], [380.0, 210.0]],
            "length": pytest.approx(math.hypot(40, 20) + math.hypot(40, 10)),
            "part_class": "tail",
            "instance_id": 7,
        }
    ]
    assert first["orphan_holes"] == [[[350.0, 100.0], [360.0, 100.0], [360.0, 110.0], [350.0, 110.0]]]


def test_json_export_zero_area_centroid_is_null(tmp_path):
    parsed = parse_polygons(json.dumps([{"type": "external", "points": _pts([(0, 0), (10, 0), (20, 0)])}]))
    assert len(parsed.objects) == 1
    entry = json_image_entry(1, "x", "x.png", 0, 0, parsed)
    assert entry["objects"][0]["area"] == 0.0
    assert entry["objects"][0]["centroid"] is None
    assert entry["width"] == 0 and entry["height"] == 0
    json.dumps(entry, allow_nan=False)


def test_json_export_same_input_same_bytes(tmp_path):
    one = _write_json_export(tmp_path, [(1, "i", "a.png", parse_polygons(_first_image_json()))])
    two = _write_json_export(tmp_path, [(1, "i", "a.png", parse_polygons(_first_image_json()))])
    assert one == two
    assert b"NaN" not in one


#: Fields of common loaders' label classes (FiftyOne's Detection; supervision and Datumaro use a subset).
LOADER_LABEL_FIELDS = {"label", "bounding_box", "mask", "confidence", "index", "attributes", "tags", "id", "class_id"}


def test_coco_attribute_names_collide_with_no_loader_label_field(first_image, second_image):
    for index, parsed in ((1, first_image), (2, second_image)):
        for ann in coco_annotations_for_image(index, parsed, WIDTH, HEIGHT)[0]:
            assert set(ann["attributes"]) == {"number", "model_confidence", "holes", "complete"}
            assert not set(ann["attributes"]) & LOADER_LABEL_FIELDS
