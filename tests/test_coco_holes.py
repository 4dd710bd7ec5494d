"""COCO objects with holes as compressed RLE (the default) or as one bridged polygon (``coco_holes``)."""

from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ray_export.cli import main
from ray_export.documents import ExportSummary, metadata_document, readme_markdown
from ray_export.formats.coco import CocoWriter, coco_annotations_for_image, coco_image_entry
from ray_export.option_flags import add_export_arguments, options_from_args
from ray_export.options import OptionError, build_options
from ray_export.polygons import parse_polygons
from ray_export.reuse import options_fingerprint

WIDTH, HEIGHT = 160, 120
BASE = {"db": "data.sqlite", "project": "demo"}


def _pts(coords: list[tuple[float, float]]) -> list[dict[str, float]]:
    return [{"x": float(x), "y": float(y)} for x, y in coords]


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _circle(cx: float, cy: float, r: float, n: int = 64, phase: float = 0.0) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(phase + 2 * math.pi * k / n), cy + r * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]  # fmt: skip


def _object(outer: list[tuple[float, float]], *holes: list[tuple[float, float]]) -> list[dict[str, Any]]:
    elements: list[dict[str, Any]] = [{"id": "o", "type": "external", "points": _pts(outer), "confidence": 0.7}]
    elements += [{"type": "internal", "parent_id": "o", "points": _pts(hole)} for hole in holes]
    return elements


#: One object with holes per case; the invalid ones (holes overlapping, reaching outside the outer ring or
#: the image) are written exactly too.
SHAPES: dict[str, list[dict[str, Any]]] = {
    "square_one_hole": _object(_rect(10, 10, 60, 60), _rect(20, 20, 35, 35)),
    "square_two_holes": _object(_rect(5, 5, 150, 100), _rect(15, 15, 40, 40), _rect(90, 30, 120.5, 80.25)[::-1]),
    "non_convex_with_hole": _object(
        [(10, 10), (150, 10), (150, 110), (10, 110), (10, 75), (100, 75), (100, 45), (10, 45)],
        _rect(115, 20, 140, 95),
    ),
    "star_with_holes": _object(
        [
            (
                80 + (50 if k % 2 == 0 else 22) * math.cos(math.pi * k / 8),
                60 + (50 if k % 2 == 0 else 22) * math.sin(math.pi * k / 8),
            )
            for k in range(16)
        ],
        _circle(80.3, 60.7, 9.4, 17),
        _circle(112.2, 60.1, 4.6, 9, 0.3),
    ),
    "disc_with_three_holes": _object(
        _circle(80.5, 60.25, 55.3, 97, 0.1),
        _circle(60.2, 50.7, 12.1, 31),
        _circle(100.9, 52.3, 9.7, 23, 0.5),
        _circle(80.1, 90.4, 8.3, 11, 0.2),
    ),
    "holes_overlapping": _object(_rect(10, 10, 110, 90), _rect(20, 20, 60, 60), _circle(60, 60, 15, 20)),
    "hole_reaching_outside": _object(_rect(10, 10, 80, 80), _rect(60.5, 30.5, 95.5, 50.5)),
    "across_the_image_border": _object(_rect(-20, 70, 100, 140), _rect(-10, 80, 30, 130), _rect(50, 90, 70, 110)),
    "far_outside_vertices": _object(
        [(-5000.0, 20.0), (140.0, 20.0), (140.0, 100.0), (-5000.0, 100.0)], _rect(100, 40, 120, 60)
    ),
}


def _annotations(elements: list[dict[str, Any]], coco_holes: str | None = None) -> list[dict[str, Any]]:
    parsed = parse_polygons(json.dumps(elements))
    kwargs = {} if coco_holes is None else {"coco_holes": coco_holes}
    annotations, problems = coco_annotations_for_image(1, parsed, WIDTH, HEIGHT, **kwargs)
    assert problems == []
    return annotations


def _loaded(annotations: list[dict[str, Any]], tmp_path) -> COCO:
    path = tmp_path / "instances.json"
    with CocoWriter({"description": "t"}) as writer, open(path, "wb") as fh:
        writer.add_image(coco_image_entry(1, "a.png", WIDTH, HEIGHT), annotations)
        writer.write(fh)
    return COCO(str(path))


def _polygon_mask(segmentation: list[list[float]]) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, HEIGHT, WIDTH)))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_bridged_polygon_fills_the_rle_mask_pixel_for_pixel(shape: str, tmp_path) -> None:
    (rle,) = _annotations(SHAPES[shape], "rle")
    (polygon,) = _annotations(SHAPES[shape], "polygons")
    assert isinstance(rle["segmentation"], dict)
    segmentation = polygon["segmentation"]
    assert isinstance(segmentation, list) and len(segmentation) == 1 and len(segmentation[0]) >= 6
    assert {key: value for key, value in polygon.items() if key != "segmentation"} == {
        key: value for key, value in rle.items() if key != "segmentation"
    }
    assert polygon["iscrowd"] == 0 and polygon["attributes"]["holes"] == len(SHAPES[shape]) - 1
    expected = mask_utils.decode(rle["segmentation"])
    assert expected.any()
    assert np.array_equal(_polygon_mask(segmentation), expected)
    coco = _loaded([polygon], tmp_path)
    (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    mask = coco.annToMask(ann)
    assert np.array_equal(mask, expected)
    assert polygon["area"] == float(mask.sum())


def test_random_objects_with_holes_fill_the_rle_mask() -> None:
    rng = np.random.default_rng(7)
    for _ in range(150):
        radius = rng.uniform(15, 70)
        n = int(rng.integers(3, 40))
        outer = np.array(_circle(rng.uniform(20, 140), rng.uniform(20, 100), radius, n)) + rng.uniform(-4, 4, (n, 2))
        holes = []
        for _ in range(int(rng.integers(1, 4))):
            angle, distance = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.8 * radius)
            cx, cy = outer.mean(axis=0) + distance * np.array([math.cos(angle), math.sin(angle)])
            holes.append(_circle(cx, cy, rng.uniform(1, radius / 3), int(rng.integers(3, 20)), rng.uniform(0, 1)))
        elements = _object([tuple(p) for p in outer.tolist()], *holes)
        (rle,) = _annotations(elements, "rle")
        (polygon,) = _annotations(elements, "polygons")
        assert len(polygon["segmentation"]) == 1
        assert np.array_equal(_polygon_mask(polygon["segmentation"]), mask_utils.decode(rle["segmentation"]))
        assert polygon["area"] == rle["area"]


@pytest.mark.parametrize("shape", sorted(set(SHAPES) - {"holes_overlapping", "hole_reaching_outside"}))
def test_valid_holes_are_the_rings_and_their_bridges_only(shape: str) -> None:
    elements = SHAPES[shape]
    (polygon,) = _annotations(elements, "polygons")
    holes = len(elements) - 1
    # each hole adds its own vertices, its first vertex again and the bridge's outer vertex again
    assert len(polygon["segmentation"][0]) // 2 == sum(len(e["points"]) for e in elements) + 2 * holes


def test_holes_stay_empty_in_the_polygon() -> None:
    elements = _object(_rect(5, 5, 150, 100), _rect(15, 15, 40, 40), _rect(90, 30, 120, 80)[::-1])
    (polygon,) = _annotations(elements, "polygons")
    mask = _polygon_mask(polygon["segmentation"])
    assert mask[25, 25] == 0 and mask[50, 100] == 0  # inside the holes
    assert mask[10, 10] == 1 and mask[90, 60] == 1  # on the material
    assert polygon["area"] == 145 * 95 - 25 * 25 - 30 * 50 == mask.sum()


def test_hole_free_objects_are_the_same_in_both_modes() -> None:
    elements = [
        {"type": "external", "points": _pts(_circle(40, 40, 20, 30))},
        {"type": "external", "points": _pts(_rect(70, 10, 150, 60))},
    ]
    assert _annotations(elements, "polygons") == _annotations(elements, "rle")


def test_default_is_rle() -> None:
    for elements in SHAPES.values():
        assert _annotations(elements) == _annotations(elements, "rle")
    assert build_options(BASE, {}).coco_holes == "rle"


def test_object_outside_the_rasterised_box_is_an_empty_polygon() -> None:
    elements = _object(_rect(5000, 5000, 5100, 5100), _rect(5020, 5020, 5040, 5040))
    (rle,) = _annotations(elements, "rle")
    (polygon,) = _annotations(elements, "polygons")
    assert isinstance(rle["segmentation"], dict)
    assert len(polygon["segmentation"]) == 1 and len(polygon["segmentation"][0]) == 6
    assert not _polygon_mask(polygon["segmentation"]).any()
    assert polygon["area"] == rle["area"] == 0.0


def test_unknown_mode_is_refused() -> None:
    parsed = parse_polygons(json.dumps(SHAPES["square_one_hole"]))
    with pytest.raises(ValueError, match="coco_holes"):
        coco_annotations_for_image(1, parsed, WIDTH, HEIGHT, "mask")


# ------------------------------------------------------------------------------------------------ options


def test_option_from_files_flags_and_the_api(tmp_path) -> None:
    assert build_options(BASE, {"coco_holes": "polygons"}).coco_holes == "polygons"
    assert build_options({**BASE, "coco_holes": " Polygons "}).coco_holes == "polygons"
    path = tmp_path / "options.yaml"
    path.write_text("db: data.sqlite\nproject: demo\ncoco_holes: polygons\n")
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    from_file = options_from_args(parser.parse_args(["--options", str(path)]), under_job=False)
    assert from_file.coco_holes == "polygons"
    flags = ["--options", str(path), "--coco-holes", "rle"]
    assert options_from_args(parser.parse_args(flags), under_job=False).coco_holes == "rle"


@pytest.mark.parametrize("value", ["mask", "", 1, True, ["polygons"]])
def test_invalid_value_names_the_option(value: Any) -> None:
    with pytest.raises(OptionError) as info:
        build_options(BASE, {"coco_holes": value})
    assert info.value.option == "coco_holes"
    assert "coco_holes" in str(info.value)


def test_invalid_flag_is_a_usage_error_naming_it(capsys, monkeypatch) -> None:
    monkeypatch.delenv("RAY_EXPORT_LOG", raising=False)
    assert main(["export", "--db", "data.sqlite", "--project", "demo", "--coco-holes", "outlines"]) == 2
    assert re.search(r"coco[_-]holes", capsys.readouterr().err)


def test_recorded_only_when_not_the_default() -> None:
    default = build_options(BASE, {}).content_options()
    polygons = build_options(BASE, {"coco_holes": "polygons"}).content_options()
    assert "coco_holes" not in default
    assert polygons == {**default, "coco_holes": "polygons"}
    # the reuse fingerprint of a default export stays what it was; polygons exports do not take over rle ones
    assert options_fingerprint(polygons) != options_fingerprint(default)
    assert build_options({**BASE, **polygons}).content_options() == polygons


def _summary(content_options: dict[str, Any]) -> ExportSummary:
    return ExportSummary(
        project_id="p", project_title="P", project_type="spheroid", export_time="2024-01-01T00:00:00Z",
        content_options=content_options, counts={}, scale_um_per_px=None, scale_source="none",
    )  # fmt: skip


def test_metadata_and_readme_say_how_holes_are_written() -> None:
    default = _summary(build_options(BASE, {}).content_options())
    polygons = _summary(build_options(BASE, {"coco_holes": "polygons"}).content_options())
    assert "coco_holes" not in metadata_document(default)["options"]
    assert metadata_document(polygons)["options"]["coco_holes"] == "polygons"
    assert "ones with holes as compressed RLE" in readme_markdown(default)
    assert "coco_holes" not in readme_markdown(default)
    text = readme_markdown(polygons)
    assert "ones with holes as compressed RLE" not in text
    assert "zero-width bridge" in text and "`coco_holes`): polygons" in text
