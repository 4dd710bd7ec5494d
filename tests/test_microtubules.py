"""Microtubule outputs (CVAT XML, ImageJ RoiSet, band intensities) checked by independent readers and
an exact brute-force band computation."""

from __future__ import annotations

import io
import itertools
import math
import statistics
import struct
import xml.etree.ElementTree as ET
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from ray_export import problems as problems_module
from ray_export.geometry import ring_length
from ray_export.naming import stem_key
from ray_export.polygons import Polyline, id_text, parse_polygons
from ray_export.project_types import microtubules as mt


@pytest.fixture(autouse=True)
def _codes_known(monkeypatch: pytest.MonkeyPatch) -> None:
    """The new problem codes are valid (they belong in the documented list of ray_export.problems)."""
    for code, meaning in mt.PROBLEM_CODES.items():
        if code not in problems_module.PROBLEM_CODES:
            monkeypatch.setitem(problems_module.PROBLEM_CODES, code, meaning)


LABELS = [
    {"id": 1, "name": "stable", "color": "#FF0000"},
    {"id": "2", "name": "dynamic", "color": "not a colour"},
    {"id": 3, "name": "unused", "color": "#00ff00"},
]


def _el(points, **extra) -> dict:
    return {"geometry": "polyline", "points": [{"x": x, "y": y} for x, y in points], **extra}


def _video() -> list[mt.FrameInput]:
    """Three frames given out of order; instance "a" in frames 0 and 2, a 1/"1" instance pair, no-id lines."""
    f0 = parse_polygons(
        [
            _el([(1.25, 2.5), (30.125, 40.0), (50.3, 10.7)], mtType=1, trackId=7, instanceId="a"),
            _el([(3, 4), (5.5, 6.25)], instanceId=1),
            _el([(10.1, 10.2), (20.3, 20.4)]),
        ]
    ).polylines
    f2 = parse_polygons(
        [
            _el([(2.0, 3.0), (31.0, 41.0)], mtType="2", trackId="t-7", instanceId="a", name="seed"),
            _el([(7.75, 8.5), (9.0, 1.0)], mtType=99, instanceId="1"),
            _el([(11.0, 11.0), (12.0, 13.0)], mtType="dynamic", name="seed"),
        ]
    ).polylines
    f1 = parse_polygons([_el([(0.5, 0.5), (4.0, 4.0)])]).polylines
    return [mt.FrameInput(2, 64, 48, f2), mt.FrameInput(0, 64, 48, f0), mt.FrameInput(1, 64, 48, f1)]


# --------------------------------------------------------------------------------------------------
# polygon fields, labels and numbers


def test_polyline_carries_track_type_and_name() -> None:
    parsed = parse_polygons(
        [
            _el([(0, 0), (1, 1)], trackId=4, mtType="2", name="x\udc80y", instanceId=5),
            _el([(0, 0), (2, 2)], trackId=float("nan")),
        ]
    )
    a, b = parsed.polylines
    assert (a.track_id, a.mt_type, a.name, a.instance_id) == (4, "2", "x\ufffdy", 5)
    assert (b.track_id, b.mt_type, b.name) == (None, None, None)
    assert parsed.problems == []  # reading these fields adds no report entries


def test_type_label_matches_id_then_name() -> None:
    assert mt.type_label(1, LABELS) == "stable"
    assert mt.type_label("1", LABELS) == "stable"
    assert mt.type_label(2, LABELS) == "dynamic"
    assert mt.type_label(2.0, LABELS) == "dynamic"
    assert mt.type_label("dynamic", LABELS) == "dynamic"
    assert mt.type_label(99, LABELS) == "microtubule"
    assert mt.type_label(None, LABELS) == "microtubule"
    assert mt.type_label(1, None) == "microtubule"
    assert mt.type_label(1, [None, {"id": 1}, {"id": 1, "name": "  "}, {"id": 1, "name": "ok"}]) == "ok"


def test_label_colours_in_project_order_with_palette() -> None:
    colours = mt.label_colours(_video(), LABELS)
    assert colours == {"stable": "#ff0000", "dynamic": mt.PALETTE[1], "microtubule": mt.PALETTE[2]}


def test_instance_numbers_first_appearance_per_video() -> None:
    frames = _video()
    numbers = mt.instance_numbers(frames)
    # frame 0 (given second): "a" -> 1, instance 1 -> 2, no id -> 3; frame 1: no id -> 4;
    # frame 2: "a" -> 1, "1" (same text as 1) -> 2, no id -> 5
    assert numbers == [[1, 2, 5], [1, 2, 3], [4]]


# --------------------------------------------------------------------------------------------------
# CVAT for images 1.1


def test_cvat_xml_structure_and_values() -> None:
    frames = _video()
    data = mt.cvat_xml('video <1> & "x"', frames, LABELS)
    assert data.startswith(b'<?xml version="1.0" encoding="utf-8"?>\n<annotations>')
    root = ET.fromstring(data)
    assert root.tag == "annotations"
    assert root.findtext("version") == "1.1"
    task = root.find("meta/task")
    assert task.findtext("name") == 'video <1> & "x"'
    assert task.findtext("size") == "3"
    labels = task.findall("labels/label")
    assert [lab.findtext("name") for lab in labels] == ["stable", "dynamic", "microtubule"]
    assert [lab.findtext("color") for lab in labels] == ["#ff0000", mt.PALETTE[1], mt.PALETTE[2]]
    for lab in labels:
        assert lab.findtext("type") == "polyline"
        (attr,) = lab.findall("attributes/attribute")
        assert attr.findtext("name") == "track_id"
        assert attr.findtext("input_type") == "text"

    images = root.findall("image")
    assert [(i.get("id"), i.get("name"), i.get("width"), i.get("height")) for i in images] == [
        ("0", "frame_0000", "64", "48"),
        ("1", "frame_0001", "64", "48"),
        ("2", "frame_0002", "64", "48"),
    ]
    by_index = {f.frame_index: f for f in frames}
    expected_labels = {
        0: ["stable", "microtubule", "microtubule"],
        1: ["microtubule"],
        2: ["dynamic", "microtubule", "dynamic"],
    }
    for image in images:
        frame = by_index[int(image.get("id"))]
        lines = image.findall("polyline")
        assert [p.get("label") for p in lines] == expected_labels[frame.frame_index]
        for element, line in zip(lines, frame.polylines, strict=True):
            assert list(element.attrib) == ["label", "source", "occluded", "points", "z_order"]
            assert (element.get("source"), element.get("occluded"), element.get("z_order")) == ("manual", "0", "0")
            pts = [tuple(float(v) for v in pair.split(",")) for pair in element.get("points").split(";")]
            assert pts == [tuple(p) for p in line.points.tolist()]  # exact: shortest round-trip text
            attrs = {a.get("name"): a.text for a in element.findall("attribute")}
            assert attrs == ({} if line.track_id is None else {"track_id": id_text(line.track_id)})
    assert images[0].find("polyline/attribute").text == "7"
    assert images[2].find("polyline/attribute").text == "t-7"


def test_cvat_frames_without_polylines_and_hostile_text() -> None:
    line = Polyline(number=1, points=np.array([[-0.0, 1e-7], [1e9, 2.5]]), track_id="a<b>&\x01\n", mt_type=5)
    labels = [{"id": 5, "name": 'odd "name" <&>\x02', "color": "#abc"}]
    frames = [mt.FrameInput(12345, 10, 10, [line]), mt.FrameInput(3, 10, 10, [])]
    root = ET.fromstring(mt.cvat_xml("v\ud800", frames, labels))
    (image,) = root.findall("image")
    assert (image.get("id"), image.get("name")) == ("12345", "frame_12345")
    element = image.find("polyline")
    assert element.get("label") == 'odd "name" <&>\ufffd'
    assert root.find("meta/task/labels/label/color").text == "#aabbcc"
    assert element.get("points") == "0.0,1e-07;1000000000.0,2.5"
    assert element.find("attribute").text == "a<b>&\ufffd\n"
    assert root.findtext("meta/task/name") == "v\ufffd"


def test_cvat_deterministic() -> None:
    assert mt.cvat_xml("v", _video(), LABELS) == mt.cvat_xml("v", _video(), LABELS)


@pytest.mark.interop
def test_cvat_imports_into_datumaro(tmp_path: Path) -> None:
    dm = pytest.importorskip("datumaro")
    frames = _video()
    (tmp_path / "clip.xml").write_bytes(mt.cvat_xml("clip", frames, LABELS))
    (tmp_path / "images").mkdir()
    for frame in frames:
        (tmp_path / "images" / mt.frame_member(frame.frame_index)).write_bytes(b"")
    dataset = dm.Dataset.import_from(str(tmp_path), "cvat")
    categories = dataset.categories()[dm.AnnotationType.label]
    assert [c.name for c in categories] == ["stable", "dynamic", "microtubule"]
    assert all("track_id" in c.attributes for c in categories)
    items = {item.attributes["frame"]: item for item in dataset}
    assert sorted(items) == [0, 1, 2]
    for frame in frames:
        item = items[frame.frame_index]
        assert item.id == mt.frame_member(frame.frame_index)
        annotations = item.annotations
        assert len(annotations) == len(frame.polylines)
        for ann, line in zip(annotations, frame.polylines, strict=True):
            assert ann.type == dm.AnnotationType.polyline
            assert categories[ann.label].name == mt.type_label(line.mt_type, LABELS)
            # Datumaro keeps coordinates as float32 rounded to 2 decimals (its annotation model)
            expected = line.points.astype(np.float32).round(2)
            np.testing.assert_allclose(np.reshape(ann.points, (-1, 2)), expected, atol=1e-4, rtol=0)
            assert ann.attributes.get("track_id") == id_text(line.track_id)


# --------------------------------------------------------------------------------------------------
# ImageJ RoiSet


def _read_roi_layout(data: bytes) -> dict:
    """A reader of the ImageJ ROI fields used here, written from the published field offsets."""
    assert data[:4] == b"Iout"
    version, roi_type, top, left, bottom, right, n = struct.unpack(">hBxhhhhH", data[4:18])
    if n == 0:
        (n,) = struct.unpack(">i", data[18:22])
    (stroke_short,) = struct.unpack(">h", data[34:36])
    (argb,) = struct.unpack(">I", data[40:44])
    (options,) = struct.unpack(">h", data[50:52])
    position, header2 = struct.unpack(">ii", data[56:64])
    ints = np.frombuffer(data, ">i2", 2 * n, 64).reshape(2, n)
    floats = np.frombuffer(data, ">f4", 2 * n, 64 + 4 * n).reshape(2, n)
    c, z, t, name_offset, name_length = struct.unpack(">iiiii", data[header2 + 4 : header2 + 24])
    (float_width,) = struct.unpack(">f", data[header2 + 36 : header2 + 40])
    props_offset, props_length = struct.unpack(">ii", data[header2 + 40 : header2 + 48])
    return {
        "version": version,
        "type": roi_type,
        "bounds": (left, top, right, bottom),
        "ints": ints.T + np.array([left, top]),
        "floats": floats.T.astype(np.float64),
        "stroke": (stroke_short, float_width),
        "argb": argb,
        "options": options,
        "position": position,
        "ctz": (c, z, t),
        "name": data[name_offset : name_offset + 2 * name_length].decode("utf-16-be"),
        "props": data[props_offset : props_offset + 2 * props_length].decode("utf-16-be"),
    }


def _roiset(frames, thickness=5.0, margin=2.0) -> dict[str, bytes]:
    data = mt.imagej_roiset(frames, LABELS, thickness, "clip", margin=margin)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        return {info.filename: archive.read(info) for info in archive.infolist()}


def test_roiset_entries_layout_names_and_values() -> None:
    frames = _video()
    entries = _roiset(frames, thickness=4.5, margin=1.5)
    assert list(entries) == [
        "stable_1__frame_0000.roi",
        "stable_1_bg__frame_0000.roi",
        "microtubule_2__frame_0000.roi",
        "microtubule_2_bg__frame_0000.roi",
        "microtubule_3__frame_0000.roi",
        "microtubule_3_bg__frame_0000.roi",
        "microtubule_4__frame_0001.roi",
        "microtubule_4_bg__frame_0001.roi",
        "seed__frame_0002.roi",
        "seed_bg__frame_0002.roi",
        "microtubule_2__frame_0002.roi",
        "microtubule_2_bg__frame_0002.roi",
        "seed_2__frame_0002.roi",
        "seed_2_bg__frame_0002.roi",
    ]
    by_index = {f.frame_index: f for f in frames}
    order = [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (2, 1), (2, 2)]
    colours = mt.label_colours(frames, LABELS)
    for k, (frame_index, j) in enumerate(order):
        line = by_index[frame_index].polylines[j]
        signal_name, background_name = list(entries)[2 * k : 2 * k + 2]
        for entry, width, alpha in ((signal_name, 4.5, 0xFF), (background_name, 4.5 * 4, mt.BACKGROUND_ALPHA)):
            roi = _read_roi_layout(entries[entry])
            assert roi["version"] >= 227 and roi["type"] == mt.ROI_TYPE_POLYLINE
            assert roi["options"] & mt.ROI_SUB_PIXEL_RESOLUTION
            assert roi["name"] == entry.split("__frame_")[0]
            assert roi["position"] == frame_index + 1 and roi["ctz"] == (0, 0, 0)
            assert roi["stroke"] == (int(width), width)
            colour = colours[mt.type_label(line.mt_type, LABELS)]
            assert roi["argb"] == (alpha << 24) | int(colour[1:], 16)
            np.testing.assert_array_equal(roi["floats"], line.points.astype(np.float32))
            np.testing.assert_array_equal(roi["ints"], np.floor(line.points))
            left, top, right, bottom = roi["bounds"]
            assert (left, top) == tuple(np.floor(line.points.min(axis=0)).astype(int))
            assert (right, bottom) == tuple(np.floor(line.points.max(axis=0)).astype(int) + 1)
            band = "signal" if alpha == 0xFF else "background"
            assert roi["props"].endswith(f"band: {band}\n")
    props = _read_roi_layout(entries["seed__frame_0002.roi"])["props"]
    assert props == (
        "video: clip\nframe_index: 2\nlabel: MT1\nmt_type: dynamic\ninstance_id: a\ntrack_id: t-7\nband: signal\n"
    )


def test_roiset_unique_and_safe_names() -> None:
    pts = [(1.0, 1.0), (2.0, 2.0)]
    lines = parse_polygons(
        [
            _el(pts, name="A/b"),
            _el(pts, name="a_b"),
            _el(pts, name="a_B_bg"),
            _el(pts, name=" .. "),
            _el(pts, name="CON"),
            _el(pts, name="é\u202e"),
        ]
    ).polylines
    names = list(_roiset([mt.FrameInput(0, 8, 8, lines)]))
    assert names == [
        "A_b__frame_0000.roi",
        "A_b_bg__frame_0000.roi",
        "a_b_2__frame_0000.roi",
        "a_b_2_bg__frame_0000.roi",
        "a_B_bg_2__frame_0000.roi",
        "a_B_bg_2_bg__frame_0000.roi",
        "microtubule_4__frame_0000.roi",
        "microtubule_4_bg__frame_0000.roi",
        "CON___frame_0000.roi",
        "CON__bg__frame_0000.roi",
        "é__frame_0000.roi",
        "é_bg__frame_0000.roi",
    ]
    assert len({stem_key(n) for n in names}) == len(names)


def test_roiset_zip_is_deterministic_and_fixed() -> None:
    first = mt.imagej_roiset(_video(), LABELS, 5.0, "clip")
    assert first == mt.imagej_roiset(_video(), LABELS, 5.0, "clip")
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        for info in archive.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.compress_type == zipfile.ZIP_DEFLATED
            assert info.external_attr >> 16 == 0o100644
    empty = mt.imagej_roiset([], [], 5.0, "clip")
    with zipfile.ZipFile(io.BytesIO(empty)) as archive:
        assert archive.namelist() == []


def test_roiset_rejects_bad_band() -> None:
    for thickness, margin in ((0.0, 2.0), (float("nan"), 2.0), (5.0, -1.0), (5.0, float("inf"))):
        with pytest.raises(ValueError):
            mt.imagej_roiset(_video(), LABELS, thickness, "clip", margin=margin)


@pytest.mark.interop
def test_roiset_reads_with_roifile() -> None:
    roifile = pytest.importorskip("roifile")
    frames = _video()
    data = mt.imagej_roiset(frames, LABELS, 5.0, "clip", margin=2.0)
    by_index = {f.frame_index: f for f in frames}
    order = [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (2, 1), (2, 2)]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        assert len(names) == 2 * len(order)
        for k, name in enumerate(names):
            frame_index, j = order[k // 2]
            line = by_index[frame_index].polylines[j]
            roi = roifile.ImagejRoi.frombytes(archive.read(name))
            assert roi.roitype == roifile.ROI_TYPE.POLYLINE
            assert roi.subpixelresolution
            coords = roi.coordinates()
            np.testing.assert_allclose(coords, line.points, atol=1e-4, rtol=0)
            np.testing.assert_array_equal(coords, line.points.astype(np.float32))
            assert roi.position == frame_index + 1
            assert roi.name == name.split("__frame_")[0]
            assert roi.float_stroke_width == (5.0 if k % 2 == 0 else 25.0)
            assert roi.stroke_width == int(roi.float_stroke_width)
            assert f"frame_index: {frame_index}\n" in roi.props
    # the whole set, as ImageJ's ROI Manager opens it
    with io.BytesIO(data) as handle, zipfile.ZipFile(handle) as archive:
        rois = [roifile.ImagejRoi.frombytes(archive.read(n)) for n in archive.namelist()]
    assert [r.name for r in rois][:2] == ["stable_1", "stable_1_bg"]


@pytest.mark.interop
def test_roi_many_points_and_large_coordinates_read_with_roifile() -> None:
    roifile = pytest.importorskip("roifile")
    rng = np.random.default_rng(3)
    points = np.cumsum(rng.normal(0.0, 0.7, (70_000, 2)), axis=0) + 1000.0
    points[0] = (40000.5, -33000.25)  # beyond the int16 bounding box: the float coordinates carry it
    data = mt.encode_polyline_roi(points, "long ÿ \U0001f52c", 9, 2.25, 0xFF123456, [("note", "é\\ x")])
    roi = roifile.ImagejRoi.frombytes(data)
    assert roi.n_coordinates == 70_000
    np.testing.assert_array_equal(roi.coordinates(), points.astype(np.float32))
    assert roi.name == "long ÿ \U0001f52c"
    assert (roi.position, roi.stroke_width, roi.float_stroke_width) == (9, 2, 2.25)
    assert roi.props == "note: \\u00e9\\\\ x\n"


# --------------------------------------------------------------------------------------------------
# intensities


def _exact_band(points, height, width, inner, outer) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(row, col) of the pixels with d <= inner and inner < d <= outer, by exact rational arithmetic."""
    pts = [(Fraction(float(x)), Fraction(float(y))) for x, y in np.asarray(points, dtype=np.float64)]
    segments = list(itertools.pairwise(pts)) if len(pts) > 1 else [(pts[0], pts[0])]
    r2, big2 = Fraction(inner) ** 2, Fraction(outer) ** 2
    inside: list[tuple[int, int]] = []
    ring: list[tuple[int, int]] = []
    for row in range(height):
        for col in range(width):
            best = None
            for (ax, ay), (bx, by) in segments:
                dx, dy = bx - ax, by - ay
                length2 = dx * dx + dy * dy
                t = Fraction(0) if length2 == 0 else min(max(((col - ax) * dx + (row - ay) * dy) / length2, 0), 1)
                ex, ey = col - (ax + t * dx), row - (ay + t * dy)
                d2 = ex * ex + ey * ey
                best = d2 if best is None or d2 < best else best
            if best <= r2:
                inside.append((row, col))
            elif best <= big2:
                ring.append((row, col))
    return inside, ring


def _expected(values: list, background: list) -> dict:
    n = len(values)
    mean = sum(values) / n if n else None
    median_bg = statistics.median(background) if background else None
    return {
        "pixel_count": n,
        "sum_intensity": float(sum(values)),
        "mean_intensity": mean,
        "median_intensity": float(statistics.median(values)) if n else None,
        "std_intensity": statistics.stdev(values) if n >= 2 else None,
        "median_background": float(median_bg) if median_bg is not None else None,
        "mean_background": sum(background) / len(background) if background else None,
        "signal_minus_background": mean - median_bg if mean is not None and median_bg is not None else None,
    }


def _check(result: dict, expected: dict) -> None:
    for key, value in expected.items():
        if key == "std_intensity" and value is not None:
            assert result[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
        else:
            assert result[key] == value, key


def test_bright_line_on_known_background_16_bit() -> None:
    image = np.full((40, 60), 1000, dtype=np.uint16)
    image[18:23, 10:51] = 50000  # the filament: rows 18..22 along y = 20
    points = np.array([[10.0, 20.0], [50.0, 20.0]])
    result = mt.polyline_intensities(image, points, 5.0, 2.0)
    assert result["length"] == 40.0
    (row,) = result["channels"]
    inside, ring = _exact_band(points, 40, 60, 2.5, 12.5)
    assert len(inside) == 41 * 5 + 2 * (5 + 3)  # the rectangle plus the round ends (columns 9 and 8)
    values = [int(image[r, c]) for r, c in inside]
    assert values.count(50000) == 205 and values.count(1000) == 16
    assert all(image[r, c] == 1000 for r, c in ring)
    _check(row, _expected(values, [1000] * len(ring)))
    assert row["median_background"] == 1000.0 and row["mean_background"] == 1000.0
    assert row["sum_intensity"] == 205 * 50000 + 16 * 1000
    assert row["signal_minus_background"] == (205 * 50000 + 16 * 1000) / 221 - 1000
    assert row["channel"] == 0


def test_random_image_matches_brute_force() -> None:
    rng = np.random.default_rng(11)
    image = rng.integers(0, 65536, (45, 52), dtype=np.uint16)
    points = np.array([[3.3, 4.7], [40.2, 30.9], [12.6, 41.1], [12.6, 41.1 - 1e-3]])
    thickness, margin = 3.7, 1.3
    inner = thickness / 2
    inside, ring = _exact_band(points, 45, 52, inner, inner * (1 + 2 * margin))
    (row,) = mt.polyline_intensities(image, points, thickness, margin)["channels"]
    _check(row, _expected([int(image[p]) for p in inside], [int(image[p]) for p in ring]))
    idx_in, idx_bg = mt.band_pixels(points, 45, 52, inner, inner * (1 + 2 * margin))
    assert idx_in.tolist() == [r * 52 + c for r, c in inside]
    assert idx_bg.tolist() == [r * 52 + c for r, c in ring]


def test_three_channel_image() -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    points = np.array([[2.5, 27.25], [27.0, 3.5]])
    inside, ring = _exact_band(points, 30, 30, 1.5, 1.5 * 3)
    result = mt.polyline_intensities(image, points, 3.0, 1.0)
    assert [r["channel"] for r in result["channels"]] == [0, 1, 2]
    for channel, row in enumerate(result["channels"]):
        _check(row, _expected([int(image[p][channel]) for p in inside], [int(image[p][channel]) for p in ring]))
        (alone,) = mt.polyline_intensities(image[:, :, channel], points, 3.0, 1.0)["channels"]
        assert alone == {**row, "channel": 0}
    assert result["length"] == math.hypot(24.5, 23.75)


def test_empty_and_degenerate_bands() -> None:
    image = np.arange(20 * 20, dtype=np.uint16).reshape(20, 20)
    outside = mt.polyline_intensities(image, np.array([[-100.0, 5.0], [-50.0, 5.0]]), 5.0, 2.0)
    (row,) = outside["channels"]
    assert row == {
        "channel": 0,
        "pixel_count": 0,
        "sum_intensity": 0.0,
        "mean_intensity": None,
        "median_intensity": None,
        "std_intensity": None,
        "median_background": None,
        "mean_background": None,
        "signal_minus_background": None,
    }
    # a band thinner than the grid between two pixel rows: no signal, a background
    (thin,) = mt.polyline_intensities(image, np.array([[2.0, 10.5], [8.0, 10.5]]), 0.5, 2.0)["channels"]
    assert thin["pixel_count"] == 0 and thin["mean_intensity"] is None
    assert thin["median_background"] is not None and thin["signal_minus_background"] is None
    # one pixel: no sample standard deviation
    (single,) = mt.polyline_intensities(image, np.array([[4.0, 4.0], [4.1, 4.0]]), 0.5, 0.0)["channels"]
    assert (single["pixel_count"], single["std_intensity"], single["median_background"]) == (1, None, None)
    assert single["sum_intensity"] == float(image[4, 4])


def test_float_image_ignores_non_finite_values() -> None:
    image = np.full((10, 10), 2.5, dtype=np.float32)
    image[5, 5] = np.nan
    image[5, 6] = np.inf
    (row,) = mt.polyline_intensities(image, np.array([[4.0, 5.0], [7.0, 5.0]]), 1.0, 1.0)["channels"]
    assert row["pixel_count"] == 2 and row["mean_intensity"] == 2.5 and row["std_intensity"] == 0.0


def test_long_diagonal_band_is_bounded() -> None:
    points = np.array([[0.0, 0.0], [3999.0, 3999.0]])
    inside, background = mt.band_pixels(points, 4000, 4000, 2.5, 12.5)
    # about 2·(t/2)·L pixels, never the whole bounding box
    length = math.hypot(3999, 3999)
    assert abs(inside.size - 5 * length) < 0.02 * 5 * length
    assert background.size < 30 * length


# --------------------------------------------------------------------------------------------------
# table rows


def test_frame_rows_labels_scale_and_problems() -> None:
    frames = _video()
    numbers = mt.instance_numbers(frames)
    image = np.full((48, 64, 2), 10, dtype=np.uint16)
    rows, problems = mt.frame_metric_rows(frames[0], "f2.png", image, LABELS, numbers[0], 5.0, 2.0, scale=0.5)
    assert [(r["label"], r["channel"]) for r in rows] == [
        ("MT1", 0),
        ("MT1", 1),
        ("MT2", 0),
        ("MT2", 1),
        ("MT5", 0),
        ("MT5", 1),
    ]
    assert [r["mt_type"] for r in rows[::2]] == ["dynamic", "microtubule", "dynamic"]
    assert [(r["instance_id"], r["track_id"]) for r in rows[::2]] == [("a", "t-7"), ("1", None), (None, None)]
    assert rows[0]["length"] == 0.5 * math.hypot(29.0, 38.0)
    assert all(list(r) == [name for name, _ in mt.METRICS_COLUMNS] for r in rows)
    assert all(r["frame_index"] == 2 and r["image_name"] == "f2.png" for r in rows)
    assert all(r["mean_intensity"] == 10.0 and r["signal_minus_background"] == 0.0 for r in rows)
    assert [p.code for p in problems] == ["mt_type_unknown"]

    rows, problems = mt.frame_metric_rows(frames[1], "f0.png", None, LABELS, numbers[1])
    assert len(rows) == 3 and all(r["channel"] is None and r["pixel_count"] is None for r in rows)
    assert rows[0]["length"] == ring_length(frames[1].polylines[0].points, closed=False)
    assert [p.code for p in problems] == ["mt_pixels_unavailable"]

    far = mt.FrameInput(0, 4, 4, parse_polygons([_el([(50, 50), (60, 60)])]).polylines)
    _, problems = mt.frame_metric_rows(far, "x", np.zeros((4, 4), np.uint8), [], [1])
    assert [p.code for p in problems] == ["mt_band_empty"]


def test_channel_totals() -> None:
    base = {"frame_index": 0, "pixel_count": 0, "sum_intensity": 0.0, "mean_intensity": None}
    rows = [
        {**base, "channel": 1, "length": 2.0, "pixel_count": 4, "sum_intensity": 40.0, "mean_intensity": 10.0,
         "signal_minus_background": 1.0},
        {**base, "channel": 0, "length": 3.0, "pixel_count": 2, "sum_intensity": 2.0, "mean_intensity": 1.0,
         "signal_minus_background": None},
        {**base, "frame_index": 3, "channel": 1, "length": 1.0, "pixel_count": 1, "sum_intensity": 5.0,
         "mean_intensity": 5.0, "signal_minus_background": 3.0},
        {**base, "frame_index": 4, "channel": 1, "length": 6.0, "signal_minus_background": None},
        {**base, "frame_index": 5, "channel": None, "length": 9.0, "signal_minus_background": None},
    ]  # fmt: skip
    totals = mt.channel_totals("clip", rows)
    assert totals == [
        {"video": "clip", "channel": 0, "frames": 1, "polylines": 1, "total_length": 3.0, "mean_length": 3.0,
         "pixel_count": 2, "sum_intensity": 2.0, "mean_intensity": 1.0, "mean_of_means": 1.0,
         "mean_signal_minus_background": None},
        {"video": "clip", "channel": 1, "frames": 3, "polylines": 3, "total_length": 9.0, "mean_length": 3.0,
         "pixel_count": 5, "sum_intensity": 45.0, "mean_intensity": 9.0, "mean_of_means": 7.5,
         "mean_signal_minus_background": 2.0},
    ]  # fmt: skip
    assert all(list(t) == [name for name, _ in mt.TOTALS_COLUMNS] for t in totals)


def test_column_declarations_and_guide() -> None:
    assert set(mt.COLUMNS) == {mt.METRICS_TABLE, mt.TOTALS_TABLE}
    for columns in mt.COLUMNS.values():
        assert all(kind in {"length", "count", "int", "intensity", "text"} for _, kind in columns)
        for name, _ in columns:
            assert f"`{name}`" in mt.FORMULAS or name in ("frame_index", "image_name", "video", "channel")
    assert [name for name, _ in mt.METRICS_COLUMNS][:3] == ["frame_index", "image_name", "label"]
