"""Overlay rendering: decoding every input kind, drawing rules, encoding and failure handling."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from ray_export import visualize
from ray_export.options import OptionError, VisualizationSettings
from ray_export.polygons import ImagePolygons, parse_polygons
from ray_export.visualize import (
    ImageDecodeError,
    decode_image_rgb8,
    encode_image,
    image_size_from_header,
    number_disc,
    object_mask,
    render_overlay,
    render_visualization,
)

WIDTH, HEIGHT = 160, 120
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _points(coords: list[tuple[float, float]]) -> list[dict[str, float]]:
    return [{"x": float(x), "y": float(y)} for x, y in coords]


def _square(x0: float, y0: float, x1: float, y1: float) -> list[dict[str, float]]:
    return _points([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def _object_with_hole() -> ImagePolygons:
    """One 100x80 rectangle (10..110, 20..100) with a 20x20 hole at (70..90, 40..60)."""
    return parse_polygons(
        [
            {"type": "external", "id": "a", "points": _square(10, 20, 110, 100)},
            {"type": "internal", "parent_id": "a", "points": _square(70, 40, 90, 60)},
        ]
    )


def _pil_bytes(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _gradient(dtype: type, lo: float, hi: float) -> np.ndarray:
    return np.linspace(lo, hi, WIDTH * HEIGHT).reshape(HEIGHT, WIDTH).astype(dtype)


def _cv_bytes(ext: str, array: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(ext, array)
    assert ok
    return encoded.tobytes()


def _input_kinds() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    rgb = rng.integers(30, 220, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)])
    return {
        "gray8_png": _pil_bytes(Image.fromarray(_gradient(np.uint8, 0, 255)), "PNG"),
        "gray16_png": _pil_bytes(Image.fromarray(_gradient(np.uint16, 1000, 40000)), "PNG"),
        "gray16_tiff": _pil_bytes(Image.fromarray(_gradient(np.uint16, 5, 4000)), "TIFF"),
        "rgb_jpeg": _pil_bytes(Image.fromarray(rgb), "JPEG", quality=90),
        "rgba_png": _pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"),
        "gray_alpha_png": _pil_bytes(Image.fromarray(rgba[:, :, 2:], "LA"), "PNG"),
        "palette_png": _pil_bytes(Image.fromarray(rgb).convert("P"), "PNG"),
        "rgb_tiff": _pil_bytes(Image.fromarray(rgb), "TIFF", compression="tiff_lzw"),
        "float32_tiff_pillow": _pil_bytes(Image.fromarray(_gradient(np.float32, -1.5, 3.0)), "TIFF"),
        "float32_tiff_cv2": _cv_bytes(".tiff", _gradient(np.float32, 0.0, 1.0)),
        "rgb16_tiff_cv2": _cv_bytes(".tiff", np.dstack([_gradient(np.uint16, 0, 60000)] * 3)),
        "bilevel_png": _pil_bytes(Image.fromarray(_gradient(np.uint8, 0, 255) > 128), "PNG"),
        "multipage_tiff": _pil_bytes(
            Image.fromarray(rgb), "TIFF", save_all=True, append_images=[Image.fromarray(rgb[:50, :70])]
        ),
    }


INPUT_KINDS = _input_kinds()


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("kind", sorted(INPUT_KINDS))
def test_every_input_kind_decodes_to_rgb8_of_original_size(kind: str) -> None:
    rgb = decode_image_rgb8(INPUT_KINDS[kind])
    assert rgb.shape == (HEIGHT, WIDTH, 3)
    assert rgb.dtype == np.uint8
    assert rgb.flags.c_contiguous
    assert image_size_from_header(INPUT_KINDS[kind]) == (WIDTH, HEIGHT)


@pytest.mark.parametrize("kind", sorted(INPUT_KINDS))
def test_every_input_kind_gives_a_visualization_of_original_size(kind: str) -> None:
    encoded, size, problems = render_visualization(INPUT_KINDS[kind], _object_with_hole(), VisualizationSettings())
    assert problems == []
    assert size == (WIDTH, HEIGHT)
    assert encoded is not None and encoded.startswith(PNG_SIGNATURE)
    back = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.shape == (HEIGHT, WIDTH, 3)
    assert back.dtype == np.uint8


def test_8bit_gray_is_kept_and_replicated() -> None:
    gray = _gradient(np.uint8, 3, 200)
    rgb = decode_image_rgb8(_pil_bytes(Image.fromarray(gray), "PNG"))
    for channel in range(3):
        np.testing.assert_array_equal(rgb[:, :, channel], gray)


@pytest.mark.parametrize("kind", ["gray16_png", "gray16_tiff", "float32_tiff_pillow", "float32_tiff_cv2"])
def test_high_depth_is_stretched_from_actual_min_to_max(kind: str) -> None:
    rgb = decode_image_rgb8(INPUT_KINDS[kind])
    assert rgb.min() == 0
    assert rgb.max() == 255
    # the gradient stays monotonic along the rows
    assert np.all(np.diff(rgb[:, :, 0].astype(int).ravel()) >= 0)


def test_16bit_stretch_is_linear() -> None:
    values = np.array([[100, 200, 300, 1100]], dtype=np.uint16)
    rgb = decode_image_rgb8(_pil_bytes(Image.fromarray(values), "PNG"))
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 26, 51, 255])


def test_16bit_rgba_stretch_ignores_alpha_and_keeps_channel_order() -> None:
    bgra = np.zeros((4, 4, 4), dtype=np.uint16)
    bgra[:, :, 2] = 5000  # red (OpenCV stores BGRA)
    bgra[:, :, 0] = 1000  # blue
    bgra[:, :, 1] = 1000
    bgra[:, :, 3] = 65535  # alpha is larger than every colour sample
    rgb = decode_image_rgb8(_cv_bytes(".png", bgra))
    np.testing.assert_array_equal(rgb[0, 0], [255, 0, 0])


def test_float_with_nan_and_inf_is_stretched_over_finite_values() -> None:
    values = np.array([[0.5, np.nan, 1.5, np.inf, -np.inf, 1.0]], dtype=np.float32)
    rgb = decode_image_rgb8(_cv_bytes(".tiff", values))
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 0, 255, 0, 0, 128])


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((5, 6), 0, np.uint16), 0),
        (np.full((5, 6), 65535, np.uint16), 255),
        (np.full((5, 6), 0.5, np.float32), 128),
        (np.full((5, 6), 7.0, np.float32), 255),
    ],
)
def test_constant_high_depth_image_maps_to_a_sane_level(array: np.ndarray, expected: int) -> None:
    rgb = decode_image_rgb8(_cv_bytes(".tiff", array))
    assert rgb.shape == (5, 6, 3)
    assert np.all(rgb == expected)


def test_alpha_is_dropped_not_composited() -> None:
    rgba = np.zeros((3, 3, 4), dtype=np.uint8)
    rgba[:, :] = (10, 200, 30, 0)  # fully transparent
    rgb = decode_image_rgb8(_pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert np.all(rgb == (10, 200, 30))


def test_rgb_channel_order_is_preserved() -> None:
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[:, :] = (250, 10, 90)
    for fmt in ("PNG", "TIFF"):
        decoded = decode_image_rgb8(_pil_bytes(Image.fromarray(rgb), fmt))
        assert np.all(decoded == (250, 10, 90))


def test_pillow_fallback_handles_what_opencv_rejects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(visualize, "_decode_with_cv2", lambda data: None)
    for kind in ("gray16_png", "palette_png", "gray_alpha_png", "float32_tiff_pillow", "bilevel_png"):
        rgb = decode_image_rgb8(INPUT_KINDS[kind])
        assert rgb.shape == (HEIGHT, WIDTH, 3) and rgb.dtype == np.uint8
    via_pillow = decode_image_rgb8(INPUT_KINDS["gray16_png"])
    monkeypatch.undo()
    np.testing.assert_array_equal(via_pillow, decode_image_rgb8(INPUT_KINDS["gray16_png"]))


@pytest.mark.parametrize("data", [b"", b"not an image at all", PNG_SIGNATURE + b"\x00" * 40])
def test_undecodable_bytes_raise_image_decode_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image_rgb8(data)
    assert image_size_from_header(data) is None


def test_truncated_image_raises_image_decode_error() -> None:
    data = INPUT_KINDS["rgba_png"]
    with pytest.raises(ImageDecodeError):
        decode_image_rgb8(data[: len(data) // 3])


# --------------------------------------------------------------------------- drawing


def _flat_image(value: int = 100) -> np.ndarray:
    return np.full((HEIGHT, WIDTH, 3), value, dtype=np.uint8)


def test_fill_changes_object_and_leaves_hole_exactly_clear() -> None:
    original = _flat_image()
    parsed = _object_with_hole()
    settings = VisualizationSettings(show_numbers=False)
    out = render_overlay(original, parsed, settings)
    assert out.shape == original.shape
    assert np.array_equal(original, _flat_image())  # drawn on a copy
    # well inside the object: 100 * 0.7 + (255, 0, 0) * 0.3
    np.testing.assert_allclose(out[80, 30], [146.5, 70, 70], atol=0.5)
    # inside the hole, away from its outline
    np.testing.assert_array_equal(out[50, 80], original[50, 80])
    # outside everything
    np.testing.assert_array_equal(out[5, 150], original[5, 150])
    # outlines: outer in red, hole in blue
    np.testing.assert_array_equal(out[60, 10], [255, 0, 0])
    np.testing.assert_array_equal(out[50, 70], [0, 0, 255])


def test_settings_change_colours_opacity_and_stroke() -> None:
    settings = VisualizationSettings(
        external_color="#00FF00", internal_color="#FFFF00", stroke_width=5, fill_opacity=1.0, show_numbers=False
    )
    out = render_overlay(_flat_image(), _object_with_hole(), settings)
    np.testing.assert_array_equal(out[80, 30], [0, 255, 0])
    np.testing.assert_array_equal(out[50, 80], [100, 100, 100])
    np.testing.assert_array_equal(out[60, 12], [0, 255, 0])  # 5-pixel stroke reaches 2 px inwards
    np.testing.assert_array_equal(out[50, 72], [255, 255, 0])
    transparent = render_overlay(
        _flat_image(), _object_with_hole(), VisualizationSettings(fill_opacity=0.0, show_numbers=False)
    )
    np.testing.assert_array_equal(transparent[80, 30], [100, 100, 100])


def test_number_disc_is_drawn_inside_the_object() -> None:
    parsed = _object_with_hole()
    settings = VisualizationSettings(font_size=16)
    disc = number_disc(parsed.objects[0], WIDTH, HEIGHT, settings)
    assert disc is not None
    centre_x, centre_y, radius = disc
    mask, x0, y0 = object_mask(parsed.objects[0], WIDTH, HEIGHT)
    assert mask[centre_y - y0, centre_x - x0] == 1
    out = render_overlay(_flat_image(), parsed, settings)
    white = np.all(out == 255, axis=2)
    window = white[centre_y - radius : centre_y + radius + 1, centre_x - radius : centre_x + radius + 1]
    assert window.sum() > radius * radius  # the disc is there
    assert white.sum() == window.sum()  # and nowhere else
    without_numbers = render_overlay(_flat_image(), parsed, VisualizationSettings(font_size=16, show_numbers=False))
    assert not np.any(np.all(without_numbers == 255, axis=2))


def test_number_disc_sits_inside_a_concave_object() -> None:
    """A thick C: its centroid lies in the gap, the number must not."""
    c_shape = _points([(20, 10), (150, 10), (150, 45), (55, 45), (55, 75), (150, 75), (150, 110), (20, 110)])
    parsed = parse_polygons([{"type": "external", "points": c_shape}])
    obj = parsed.objects[0]
    settings = VisualizationSettings(font_size=14)
    mask, x0, y0 = object_mask(obj, WIDTH, HEIGHT)
    moments = cv2.moments(mask, binaryImage=True)
    centroid = (round(moments["m10"] / moments["m00"]) + x0, round(moments["m01"] / moments["m00"]) + y0)
    assert mask[centroid[1] - y0, centroid[0] - x0] == 0
    centre_x, centre_y, radius = number_disc(obj, WIDTH, HEIGHT, settings)
    assert mask[centre_y - y0, centre_x - x0] == 1
    out = render_overlay(_flat_image(), parsed, settings)
    white_y, white_x = np.nonzero(np.all(out == 255, axis=2))
    assert len(white_x) > 0
    assert np.all(np.hypot(white_x - centre_x, white_y - centre_y) <= radius)
    full_mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    full_mask[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask
    assert np.all(full_mask[white_y, white_x] == 1)


def _circle(cx: float, cy: float, r: float, n: int = 128) -> list[tuple[float, float]]:
    return [(cx + r * np.cos(2 * np.pi * k / n), cy + r * np.sin(2 * np.pi * k / n)) for k in range(n)]


def _box(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


RING_SHAPES = {
    # outer ring, holes, where the pole is when it is a single point
    "annulus": (_circle(120, 110, 90), [_circle(120, 110, 30)], None),
    "square_with_off_centre_hole": (_box(10, 20, 110, 100), [_box(70, 40, 90, 60)], (40.72, 69.28)),
    "hole_covering_the_centroid": (_box(20, 20, 180, 140), [_box(50, 40, 130, 120)], None),
}


@pytest.mark.parametrize("shape", sorted(RING_SHAPES))
def test_number_disc_of_a_ring_shaped_object_sits_at_the_pole_of_its_material(shape: str) -> None:
    """The disc centre lies in the material (never in a hole) and is as far from every edge as the
    pole of inaccessibility of outer ring minus holes (shapely's polylabel), up to pixel rounding."""
    shapely = pytest.importorskip("shapely")
    from shapely.ops import polylabel

    outer, holes, pole_at = RING_SHAPES[shape]
    width, height = 240, 220
    parsed = parse_polygons(
        [{"type": "external", "id": "a", "points": _points(outer)}]
        + [{"type": "internal", "parent_id": "a", "points": _points(hole)} for hole in holes]
    )
    obj = parsed.objects[0]
    assert len(obj.holes) == len(holes)
    material = shapely.Polygon(outer, holes)
    centroid = material.centroid
    assert any(shapely.Polygon(hole).contains(centroid) for hole in holes) == (shape != "square_with_off_centre_hole")
    pole = polylabel(material, tolerance=0.01)
    pole_distance = material.boundary.distance(pole)

    settings = VisualizationSettings(font_size=16)
    centre_x, centre_y, radius = number_disc(obj, width, height, settings)
    centre = shapely.Point(centre_x, centre_y)
    assert material.contains(centre)
    assert not any(shapely.Polygon(hole).intersects(centre) for hole in holes)
    mask, x0, y0 = object_mask(obj, width, height)
    assert mask[centre_y - y0, centre_x - x0] == 1
    # a pixel centre next to the pole: within one pixel of the largest clearance
    assert material.boundary.distance(centre) == pytest.approx(pole_distance, abs=1.0)
    if pole_at is not None:
        assert pole.distance(shapely.Point(pole_at)) < 0.05
        assert centre.distance(pole) <= 1.5

    out = render_overlay(np.full((height, width, 3), 100, dtype=np.uint8), parsed, settings)
    white_y, white_x = np.nonzero(np.all(out == 255, axis=2))
    assert len(white_x) > 0
    assert np.all(np.hypot(white_x - centre_x, white_y - centre_y) <= radius)
    assert radius < pole_distance - 1  # this disc fits the material, so it covers no hole pixel
    full_mask = np.zeros((height, width), dtype=np.uint8)
    full_mask[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask
    assert np.all(full_mask[white_y, white_x] == 1)


CORE_GREEN = (0x22, 0xC5, 0x5E)
INCOMPLETE_GREY = (0x96, 0x96, 0x96)


@pytest.mark.parametrize(
    ("extra", "colour"),
    [
        ({"partClass": "core"}, CORE_GREEN),
        ({"complete": False}, INCOMPLETE_GREY),
        ({"complete": False, "partClass": "core"}, INCOMPLETE_GREY),  # incomplete wins
        ({"partClass": "shell"}, (255, 0, 0)),  # any other part class keeps the external colour
    ],
)
def test_core_and_incomplete_objects_have_their_own_colour(extra: dict, colour: tuple[int, int, int]) -> None:
    parsed = parse_polygons(
        [
            {"type": "external", "id": "a", "points": _square(10, 20, 110, 100), **extra},
            {"type": "internal", "parent_id": "a", "points": _square(70, 40, 90, 60)},
        ]
    )
    settings = VisualizationSettings(show_numbers=False)
    out = render_overlay(_flat_image(), parsed, settings).astype(int)
    np.testing.assert_array_equal(out[60, 10], colour)  # outline
    np.testing.assert_array_equal(out[20, 60], colour)
    expected_fill = 100 * 0.7 + np.array(colour) * 0.3
    np.testing.assert_allclose(out[80, 30], expected_fill, atol=0.6)  # fill at the chosen opacity
    np.testing.assert_array_equal(out[50, 70], [0, 0, 255])  # the hole keeps the internal colour
    np.testing.assert_array_equal(out[50, 80], [100, 100, 100])  # and stays clear
    opaque = render_overlay(_flat_image(), parsed, VisualizationSettings(show_numbers=False, fill_opacity=1.0))
    np.testing.assert_array_equal(opaque[80, 30], colour)


def test_object_colours_follow_each_object_in_order() -> None:
    """Objects of different colours side by side: each keeps its own outline and fill."""
    parsed = parse_polygons(
        [
            {"type": "external", "points": _square(5, 5, 45, 45)},
            {"type": "external", "partClass": "core", "points": _square(55, 5, 95, 45)},
            {"type": "external", "complete": False, "points": _square(105, 5, 145, 45)},
            {"type": "external", "points": _square(5, 60, 45, 100)},
        ]
    )
    out = render_overlay(_flat_image(), parsed, VisualizationSettings(show_numbers=False, fill_opacity=1.0))
    for x, colour in ((20, (255, 0, 0)), (70, CORE_GREEN), (120, INCOMPLETE_GREY)):
        np.testing.assert_array_equal(out[5, x], colour)
        np.testing.assert_array_equal(out[15, x], colour)
    np.testing.assert_array_equal(out[60, 20], [255, 0, 0])


PART_COLOURS = {
    "head": (0x22, 0xC5, 0x5E),
    "midpiece": (0xF5, 0x9E, 0x0B),
    "tail": (0x06, 0xB6, 0xD4),
    "flagellum": (0xA8, 0x55, 0xF7),
    None: (0xA8, 0x55, 0xF7),
}


def _is_colour(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 8) -> np.ndarray:
    return np.all(np.abs(pixels.astype(int) - np.array(colour)) <= tolerance, axis=-1)


@pytest.mark.parametrize("part", list(PART_COLOURS))
@pytest.mark.parametrize("stroke_width", [1, 2, 3, 5])
def test_polyline_has_its_part_colour_twice_the_stroke_and_round_ends(part: str | None, stroke_width: int) -> None:
    element = {"type": "external", "geometry": "polyline", "points": _points([(40, 60), (120, 60)])}
    if part is not None:
        element["partClass"] = part
    parsed = parse_polygons([element])
    colour = PART_COLOURS[part]
    out = render_overlay(_flat_image(), parsed, VisualizationSettings(stroke_width=stroke_width, show_numbers=False))
    np.testing.assert_array_equal(out[60, 80], colour)
    # thickness across the line: the pixels of its colour in a column, at least twice the stroke
    across = _is_colour(out[:, 70], colour)
    rows = np.nonzero(across)[0]
    assert len(rows) >= 2 * stroke_width
    assert np.all(np.diff(rows) == 1) and rows.min() <= 60 <= rows.max()
    changed = np.nonzero(np.any(out[:, 70] != 100, axis=-1))[0]
    assert len(changed) <= 2 * stroke_width + 3  # not much more either (anti-aliased edges)
    # round ends: beyond each end point, within the line's radius, the line's colour ...
    radius = stroke_width
    for end_x, outwards in ((40, -1), (120, 1)):
        for k in range(radius):
            assert _is_colour(out[60, end_x + outwards * k], colour, 40), (end_x, k)
        assert np.all(out[60, end_x + outwards * (radius + 2)] == 100)  # ... and no further
        # ... but the corners of a square cap stay clear
        corner = out[60 + radius, end_x + outwards * radius]
        assert not _is_colour(corner, colour, 40)
        assert np.all(out[60 + radius + 1, end_x + outwards * (radius + 1)] == 100)


def test_polylines_of_several_parts_keep_their_colours() -> None:
    lines = {"head": 20, "midpiece": 50, "tail": 80, "other": 110}
    parsed = parse_polygons([_polyline([(20, y), (140, y)], 1, part) for part, y in lines.items()])
    out = render_overlay(_flat_image(), parsed, VisualizationSettings(show_numbers=False))
    expected = {**PART_COLOURS, "other": PART_COLOURS[None]}
    for part, y in lines.items():
        np.testing.assert_array_equal(out[y, 30], expected[part])
        np.testing.assert_array_equal(out[y, 130], expected[part])


def test_polyline_is_drawn_open() -> None:
    parsed = parse_polygons(
        [{"type": "external", "geometry": "polyline", "points": _points([(10, 10), (150, 10), (150, 110)])}]
    )
    out = render_overlay(_flat_image(), parsed, VisualizationSettings())
    np.testing.assert_array_equal(out[10, 80], PART_COLOURS[None])  # no part class: purple
    np.testing.assert_array_equal(out[60, 150], PART_COLOURS[None])
    np.testing.assert_array_equal(out[60, 80], [100, 100, 100])  # would be on the closing segment
    np.testing.assert_array_equal(out[80, 40], [100, 100, 100])


def test_subpixel_coordinates_shift_the_drawing() -> None:
    settings = VisualizationSettings(show_numbers=False, fill_opacity=0.0, stroke_width=1)
    left = render_overlay(
        _flat_image(), parse_polygons([{"type": "external", "points": _square(20, 20, 60, 60)}]), settings
    )
    shifted = render_overlay(
        _flat_image(), parse_polygons([{"type": "external", "points": _square(20.5, 20, 60.5, 60)}]), settings
    )
    assert not np.array_equal(left, shifted)


def test_tiny_and_offscreen_objects_do_not_break_rendering() -> None:
    parsed = parse_polygons(
        [
            {"type": "external", "points": _points([(50.1, 50.1), (50.4, 50.1), (50.2, 50.4)])},
            {"type": "external", "points": _square(-500, -500, -400, -400)},
            {"type": "external", "points": _square(140, 100, 400, 400)},
            {"type": "external", "points": _square(-1e9, -1e9, 1e9, 1e9)},
        ]
    )
    settings = VisualizationSettings()
    assert number_disc(parsed.objects[0], WIDTH, HEIGHT, settings) is None
    assert number_disc(parsed.objects[1], WIDTH, HEIGHT, settings) is None
    disc = number_disc(parsed.objects[2], WIDTH, HEIGHT, settings)
    assert disc is not None
    centre_x, centre_y, radius = disc
    # the 20 x 20 corner of it on the image is too small to hold the disc: it goes beside, on the image
    assert radius <= centre_x <= WIDTH - 1 - radius and radius <= centre_y <= HEIGHT - 1 - radius
    assert not (140 - radius <= centre_x and 100 - radius <= centre_y)
    whole = number_disc(parsed.objects[3], WIDTH, HEIGHT, settings)
    assert whole is not None and abs(whole[0] - WIDTH / 2) <= 1 and abs(whole[1] - HEIGHT / 2) <= 1
    out = render_overlay(_flat_image(), parsed, settings)
    assert out.shape == (HEIGHT, WIDTH, 3)


# --------------------------------------------------------------------------- badges

VGA_WIDTH, VGA_HEIGHT = 640, 480


def _vga_image(value: int = 100) -> np.ndarray:
    return np.full((VGA_HEIGHT, VGA_WIDTH, 3), value, dtype=np.uint8)


def _ring_object(cx: float, cy: float, r: float, hole_r: float = 0.0, hole_dx: float = 0.0) -> list[dict]:
    """A circular external (id ``a``) with an optional circular hole ``hole_dx`` right of its centre."""
    elements = [{"type": "external", "id": "a", "points": _points(_circle(cx, cy, r, 64))}]
    if hole_r > 0:
        elements.append(
            {"type": "internal", "parent_id": "a", "points": _points(_circle(cx + hole_dx, cy, hole_r, 64))}
        )
    return elements


def _full_mask(obj, width: int, height: int) -> np.ndarray:
    """The object's visible material as a boolean image-sized mask."""
    mask, x0, y0 = object_mask(obj, width, height)
    full = np.zeros((height, width), dtype=bool)
    full[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask > 0
    return full


def _hole_mask(obj, width: int, height: int) -> np.ndarray:
    """The pixels of the object's holes (the same rasterisation as the fill leaves clear)."""
    holes = np.zeros((height, width), dtype=np.uint8)
    for hole in obj.holes:
        cv2.fillPoly(holes, [visualize.fixed_point(hole)], 1, cv2.LINE_8, visualize.SHIFT)
    return holes > 0


def _badge_changes(parsed: ImagePolygons, settings: VisualizationSettings, image: np.ndarray) -> np.ndarray:
    """Pixels the badges (discs, text and leaders) change: a render with numbers against one without."""
    with_numbers = render_overlay(image, parsed, settings)
    without = render_overlay(image, parsed, VisualizationSettings(**{**settings.__dict__, "show_numbers": False}))
    return np.any(with_numbers != without, axis=2)


@pytest.mark.parametrize("font_size", [10, 32, 50])
@pytest.mark.parametrize("stroke_width", [1, 2, 5])
def test_small_object_keeps_its_pixels_and_its_hole_visible(font_size: int, stroke_width: int) -> None:
    """A 30 px object with a hole on a 640 x 480 image: its badge goes beside it, joined by a leader."""
    parsed = parse_polygons(_ring_object(320, 240, 15, hole_r=5, hole_dx=3))
    obj = parsed.objects[0]
    settings = VisualizationSettings(font_size=font_size, stroke_width=stroke_width)
    changed = _badge_changes(parsed, settings, _vga_image())
    material = _full_mask(obj, VGA_WIDTH, VGA_HEIGHT)
    hole = _hole_mask(obj, VGA_WIDTH, VGA_HEIGHT)
    assert hole.sum() > 50 and material.sum() > 500
    assert (changed & material).sum() / material.sum() <= 0.2  # >= 80 % of the object stays visible
    assert not (changed & hole).any()  # the whole hole stays visible
    # the badge is there, off the object, and its leader reaches the object's outline
    (badge,) = visualize.place_badges(parsed, VGA_WIDTH, VGA_HEIGHT, settings)
    assert badge.leader is not None
    assert np.hypot(badge.x - 320, badge.y - 240) >= 15 + badge.radius
    near_outline = cv2.dilate(material.astype(np.uint8), np.ones((2 * stroke_width + 3,) * 2, np.uint8)) > 0
    assert (changed & near_outline & ~material).any()
    end_x, end_y = badge.leader[2:]
    assert abs(np.hypot(end_x - 320, end_y - 240) - 15) <= 1.5


@pytest.mark.parametrize("with_hole", [False, True])
def test_large_object_keeps_its_badge_centred_at_its_pole(with_hole: bool) -> None:
    parsed = parse_polygons(_ring_object(300, 220, 120, hole_r=40 if with_hole else 0, hole_dx=30))
    obj = parsed.objects[0]
    settings = VisualizationSettings()
    (badge,) = visualize.place_badges(parsed, VGA_WIDTH, VGA_HEIGHT, settings)
    assert badge.leader is None and badge.text == "1"
    mask, x0, y0 = object_mask(obj, VGA_WIDTH, VGA_HEIGHT)
    pole = visualize.pole_of_inaccessibility(mask, ring_shaped=with_hole)
    assert (badge.x, badge.y) == (pole[0] + x0, pole[1] + y0)
    if not with_hole:
        assert abs(badge.x - 300) <= 1 and abs(badge.y - 220) <= 1
    changed = _badge_changes(parsed, settings, _vga_image())
    material = _full_mask(obj, VGA_WIDTH, VGA_HEIGHT)
    ys, xs = np.nonzero(changed)
    assert np.all(material[ys, xs])  # the disc lies in the material, away from the hole and outline
    assert np.all(np.hypot(xs - badge.x, ys - badge.y) <= badge.radius + 2)  # border and anti-aliasing
    assert changed.sum() / material.sum() <= 0.2


CORNER_OBJECTS = {
    "top_left_inside": (8, 8, 6),
    "top_left_cut": (0, 0, 12),
    "top_right_cut": (VGA_WIDTH - 3, 4, 10),
    "bottom_left": (10, VGA_HEIGHT - 12, 9),
    "bottom_right_cut": (VGA_WIDTH, VGA_HEIGHT, 14),
    "left_edge": (-5, 240, 12),
    "bottom_edge": (320, VGA_HEIGHT + 4, 11),
}


@pytest.mark.parametrize("where", sorted(CORNER_OBJECTS))
@pytest.mark.parametrize("font_size", [10, 50])
def test_badge_stays_inside_the_image_at_borders_and_corners(where: str, font_size: int) -> None:
    cx, cy, r = CORNER_OBJECTS[where]
    parsed = parse_polygons(_ring_object(cx, cy, r))
    settings = VisualizationSettings(font_size=font_size)
    (badge,) = visualize.place_badges(parsed, VGA_WIDTH, VGA_HEIGHT, settings)
    assert badge.leader is not None
    assert badge.radius + 1 <= badge.x <= VGA_WIDTH - 2 - badge.radius
    assert badge.radius + 1 <= badge.y <= VGA_HEIGHT - 2 - badge.radius
    assert np.hypot(badge.x - cx, badge.y - cy) >= r + badge.radius  # beside the object, not on it
    changed = _badge_changes(parsed, settings, _vga_image())
    material = _full_mask(parsed.objects[0], VGA_WIDTH, VGA_HEIGHT)
    assert (changed & material).sum() / material.sum() <= 0.2
    rows, cols = np.mgrid[0:VGA_HEIGHT, 0:VGA_WIDTH]
    disc = np.hypot(cols - badge.x, rows - badge.y) <= badge.radius - 1
    assert changed[disc].mean() >= 0.95  # the whole disc is drawn, none of it cut by the border


def test_badge_text_height_scales_with_the_image() -> None:
    height = visualize.badge_text_height
    assert height(1000, 1000, 32) == 32  # font_size is the height on a 1000 px shorter side
    assert height(640, 480, 32) == 15
    assert height(4000, 3000, 32) == 96
    assert height(640, 480, 10) == 10  # never below 10 px...
    assert height(20000, 20000, 50) == 200  # ...nor above four times the font size
    assert height(30, 30, 32) == 5  # ...nor above a sixth of the shorter side
    small = visualize.place_badges(parse_polygons(_ring_object(320, 240, 120)), 640, 480, VisualizationSettings())
    large = visualize.place_badges(parse_polygons(_ring_object(1000, 750, 375)), 2000, 1500, VisualizationSettings())
    assert small[0].radius < 20 and large[0].radius > 2.5 * small[0].radius


def test_badge_beside_avoids_neighbours_and_other_badges() -> None:
    """Small objects packed along a large one: no badge covers the large object or another badge."""
    elements = [{"type": "external", "points": _points(_box(100, 200, 540, 400))}]
    elements += [{"type": "external", "points": _points(_circle(130 + 40 * k, 190, 8, 32))} for k in range(10)]
    parsed = parse_polygons(elements)
    settings = VisualizationSettings()
    badges = visualize.place_badges(parsed, VGA_WIDTH, VGA_HEIGHT, settings)
    assert [b.text for b in badges] == [str(n) for n in range(1, 12)]
    assert badges[0].leader is None
    for badge in badges[1:]:
        assert badge.leader is not None
        assert badge.y + badge.radius < 200  # above the row, off the large object
    centres = np.array([(b.x, b.y) for b in badges[1:]], dtype=float)
    gaps = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
    radii = np.array([b.radius for b in badges[1:]], dtype=float)
    np.fill_diagonal(gaps, np.inf)
    assert np.all(gaps >= radii[:, None] + radii[None, :])  # badges do not overlap
    first = render_overlay(_vga_image(), parsed, settings)
    second = render_overlay(_vga_image(), parsed, settings)
    np.testing.assert_array_equal(first, second)  # same inputs, same pixels


def _polyline(coords: list[tuple[float, float]], instance: object = None, part: str | None = None) -> dict:
    element: dict = {"type": "external", "geometry": "polyline", "points": _points(coords)}
    if instance is not None:
        element["instanceId"] = instance
    if part is not None:
        element["partClass"] = part
    return element


def _sperm(x: float, y: float, instance: object) -> list[dict]:
    """Head, midpiece and tail of one cell along a row, starting at ``(x, y)``."""
    return [
        _polyline([(x, y), (x + 20, y)], instance, "head"),
        _polyline([(x + 20, y), (x + 40, y + 10), (x + 60, y + 10)], instance, "midpiece"),
        _polyline([(x + 60, y + 10), (x + 100, y), (x + 140, y + 20), (x + 180, y)], instance, "tail"),
    ]


def _pill_pixels(out: np.ndarray) -> np.ndarray:
    """Pixels of the pills' dark fill (the image is lighter everywhere else)."""
    return np.all(out == 32, axis=2)


def test_one_pill_per_polyline_instance() -> None:
    parsed = parse_polygons([*_sperm(50, 100, 7), *_sperm(50, 300, "b"), *_sperm(300, 200, "7")])
    settings = VisualizationSettings()
    labels = visualize.polyline_labels(parsed, VGA_WIDTH, VGA_HEIGHT, settings, "S")
    # three polylines of one instance: one pill; 7 and "7" are one instance
    assert [label.text for label in labels] == ["S1", "S2"]
    first = labels[0]
    middles = [(60, 100), (90, 110), (170, 110), (60, 300), (90, 310), (170, 310), (310, 200), (340, 210), (420, 210)]
    mean = np.mean([m for m in middles[:3] + middles[6:]], axis=0)
    assert (first.x, first.y) == (round(mean[0]), round(mean[1]))  # the mean of the middle vertices
    assert first.colour == PART_COLOURS["head"]  # outlined in the colour of the instance's first polyline
    assert visualize.badge_text_height(VGA_WIDTH, VGA_HEIGHT, 32) == first.text_height
    out = render_overlay(_vga_image(200), parsed, settings, "S")
    count, _ = cv2.connectedComponents(_pill_pixels(out).astype(np.uint8))
    assert count - 1 == 2  # two dark pills drawn
    for label in labels:
        window = _pill_pixels(out)[label.y - label.half_height : label.y + label.half_height + 1,
                                   label.x - label.half_width : label.x + label.half_width + 1]  # fmt: skip
        assert window.mean() > 0.5  # the pill is filled around its centre
        text = out[label.y - label.half_height : label.y + label.half_height + 1, label.x - 8 : label.x + 9]
        assert np.all(text == 255, axis=2).sum() > 10  # white text in it


def test_pill_numbers_follow_first_appearance_and_lone_polylines_count() -> None:
    parsed = parse_polygons(
        [
            _polyline([(10, 10), (60, 10)], "x"),
            _polyline([(10, 40), (60, 40)]),  # no instanceId: an instance of its own
            _polyline([(10, 70), (60, 70)], ""),  # an empty one too
            _polyline([(100, 10), (150, 10)], "x"),
            _polyline([(-500, -500), (-400, -500)], "far"),  # off the image: no pill, its n is used up
            _polyline([(100, 100), (150, 100)], 3),
        ]
    )
    labels = visualize.polyline_labels(parsed, WIDTH, HEIGHT, VisualizationSettings(), "P")
    assert [label.text for label in labels] == ["P1", "P2", "P3", "P5"]
    assert labels[0].y == 10 or labels[0].y == labels[0].half_height + 1  # both "x" lines are on row 10


def test_pill_prefix_follows_the_parameter() -> None:
    parsed = parse_polygons([*_sperm(50, 100, 1), *_sperm(300, 300, 2)])
    settings = VisualizationSettings()
    for prefix in ("S", "MT", "P"):
        texts = [label.text for label in visualize.polyline_labels(parsed, VGA_WIDTH, VGA_HEIGHT, settings, prefix)]
        assert texts == [f"{prefix}1", f"{prefix}2"]
    sperm = render_overlay(_vga_image(), parsed, settings, "S")
    tubules = render_overlay(_vga_image(), parsed, settings, "MT")
    assert not np.array_equal(sperm, tubules)
    differ = np.any(sperm != tubules, axis=2)
    labels = visualize.polyline_labels(parsed, VGA_WIDTH, VGA_HEIGHT, settings, "MT")
    inside = np.zeros_like(differ)
    for label in labels:
        inside[label.y - label.half_height - 2 : label.y + label.half_height + 3,
               label.x - label.half_width - 2 : label.x + label.half_width + 3] = True  # fmt: skip
    assert not (differ & ~inside).any()  # only the pills differ
    default = render_overlay(_vga_image(), parsed, settings)
    np.testing.assert_array_equal(default, render_overlay(_vga_image(), parsed, settings, "P"))


@pytest.mark.parametrize(
    "coords",
    [
        [(-30, -30), (5, 5)],  # top left corner
        [(WIDTH - 3, 60), (WIDTH + 50, 60)],  # right edge
        [(80, HEIGHT - 1), (90, HEIGHT + 40)],  # bottom edge
        [(0, 0), (WIDTH - 1, 0)],  # along the top edge
    ],
)
def test_pill_stays_inside_the_image_at_the_border(coords: list[tuple[float, float]]) -> None:
    parsed = parse_polygons([_polyline(coords, 4, "tail")])
    settings = VisualizationSettings()
    (label,) = visualize.polyline_labels(parsed, WIDTH, HEIGHT, settings, "MT")
    assert label.text == "MT1"
    assert label.half_width + 1 <= label.x <= WIDTH - 2 - label.half_width
    assert label.half_height + 1 <= label.y <= HEIGHT - 2 - label.half_height
    out = render_overlay(_flat_image(200), parsed, settings, "MT")
    window = _pill_pixels(out)[label.y - label.half_height + 2 : label.y + label.half_height - 1,
                               label.x - label.half_height // 2 : label.x + label.half_height // 2]  # fmt: skip
    assert window.any()
    hidden = render_overlay(_flat_image(200), parsed, VisualizationSettings(show_numbers=False), "MT")
    assert not _pill_pixels(hidden).any()  # the pills are left out with the numbers


def test_object_badges_and_polyline_pills_together() -> None:
    line = [(100, 300), (300, 250), (500, 300)]
    parsed = parse_polygons([*_ring_object(320, 120, 80), _polyline(line, 1, "midpiece")])
    settings = VisualizationSettings()
    out = render_overlay(_vga_image(), parsed, settings)
    red = (out[:, :, 0] == 255) & (out[:, :, 1] == 0) & (out[:, :, 2] == 0)
    assert red[:220].sum() > 300 and not red[240:320].any()  # the object keeps its red outline
    np.testing.assert_array_equal(out[300, 100], PART_COLOURS["midpiece"])
    badges = visualize.place_badges(parsed, VGA_WIDTH, VGA_HEIGHT, settings)
    assert [b.text for b in badges] == ["1"]  # no badge of its own for the polyline
    (label,) = visualize.polyline_labels(parsed, VGA_WIDTH, VGA_HEIGHT, settings)
    assert (label.text, label.x, label.y) == ("P1", 300, 250)
    np.testing.assert_array_equal(render_overlay(_vga_image(), parsed, settings), out)  # same pixels


def test_render_overlay_rejects_wrong_arrays() -> None:
    with pytest.raises(ValueError):
        render_overlay(np.zeros((10, 10), np.uint8), _object_with_hole(), VisualizationSettings())


# --------------------------------------------------------------------------- encoding and the whole step


@pytest.mark.parametrize(
    ("fmt", "check"),
    [
        ("png", lambda b: b.startswith(PNG_SIGNATURE)),
        ("jpeg", lambda b: b.startswith(b"\xff\xd8\xff")),
        ("webp", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP"),
    ],
)
def test_output_formats_have_signature_and_decode_back(fmt: str, check) -> None:
    settings = VisualizationSettings(format=fmt)
    encoded, size, problems = render_visualization(INPUT_KINDS["rgb_jpeg"], _object_with_hole(), settings)
    assert problems == [] and size == (WIDTH, HEIGHT)
    assert check(encoded)
    back = decode_image_rgb8(encoded)
    assert back.shape == (HEIGHT, WIDTH, 3)
    # the fill colour survives lossy coding (red channel raised inside the object)
    original = decode_image_rgb8(INPUT_KINDS["rgb_jpeg"])
    assert back[60:70, 20:30, 0].astype(int).mean() > original[60:70, 20:30, 0].astype(int).mean() + 30


def test_png_encoding_is_lossless_and_rgb_ordered() -> None:
    rgb = np.zeros((3, 4, 3), dtype=np.uint8)
    rgb[:, :] = (200, 20, 60)
    back = np.asarray(Image.open(io.BytesIO(encode_image(rgb, "png"))).convert("RGB"))
    np.testing.assert_array_equal(back, rgb)
    with pytest.raises(ValueError):
        encode_image(rgb, "gif")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_same_input_gives_identical_bytes(fmt: str) -> None:
    settings = VisualizationSettings(format=fmt)
    first = render_visualization(INPUT_KINDS["gray16_tiff"], _object_with_hole(), settings)
    second = render_visualization(INPUT_KINDS["gray16_tiff"], _object_with_hole(), settings)
    assert first[0] is not None and first[0] == second[0]


@pytest.mark.parametrize("data", [b"", b"\x00\x01garbage", PNG_SIGNATURE + b"\x00" * 40])
def test_corrupt_bytes_give_image_decode_failed(data: bytes) -> None:
    encoded, size, problems = render_visualization(data, _object_with_hole(), VisualizationSettings())
    assert encoded is None and size is None
    assert [(p.code, p.stage) for p in problems] == [("image_decode_failed", "visualize")]


def test_image_without_objects_gets_no_visualization_but_a_size() -> None:
    empty = parse_polygons(None)
    assert render_visualization(INPUT_KINDS["rgb_tiff"], empty, VisualizationSettings()) == (None, (WIDTH, HEIGHT), [])
    encoded, size, problems = render_visualization(b"junk", empty, VisualizationSettings())
    assert encoded is None and size is None and problems[0].code == "image_decode_failed"


def test_polyline_only_image_gets_a_visualization() -> None:
    parsed = parse_polygons([{"type": "external", "geometry": "polyline", "points": _points([(10, 10), (150, 100)])}])
    encoded, size, problems = render_visualization(INPUT_KINDS["rgb_tiff"], parsed, VisualizationSettings())
    assert encoded is not None and size == (WIDTH, HEIGHT) and problems == []


def test_encoder_failure_gives_render_failed() -> None:
    too_wide = _cv_bytes(".png", np.zeros((2, 17000, 3), dtype=np.uint8))  # WebP allows 16383 px
    parsed = parse_polygons([{"type": "external", "points": _square(1, 0, 5, 1)}])
    encoded, size, problems = render_visualization(too_wide, parsed, VisualizationSettings(format="webp"))
    assert encoded is None and size == (17000, 2)
    assert [(p.code, p.stage) for p in problems] == [("render_failed", "visualize")]


def test_drawing_failure_gives_render_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(visualize, "render_overlay", broken)
    encoded, size, problems = render_visualization(
        INPUT_KINDS["rgb_tiff"], _object_with_hole(), VisualizationSettings()
    )
    assert encoded is None and size == (WIDTH, HEIGHT)
    assert problems[0].code == "render_failed" and "boom" in problems[0].message


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("changes", "option"),
    [
        ({"external_color": "red"}, "external_color"),
        ({"external_color": "#FF00"}, "external_color"),
        ({"internal_color": "#GG0000"}, "internal_color"),
        ({"stroke_width": 0}, "stroke_width"),
        ({"stroke_width": 11}, "stroke_width"),
        ({"font_size": 9}, "font_size"),
        ({"font_size": 51}, "font_size"),
        ({"fill_opacity": -0.1}, "fill_opacity"),
        ({"fill_opacity": 1.1}, "fill_opacity"),
        ({"format": "gif"}, "viz_format"),
    ],
)
def test_settings_validation_names_the_option(changes: dict[str, object], option: str) -> None:
    settings = VisualizationSettings(**changes)
    with pytest.raises(OptionError) as caught:
        settings.validate()
    assert caught.value.option == option
    assert option in str(caught.value)


def test_default_settings_are_valid() -> None:
    settings = VisualizationSettings()
    settings.validate()
    assert settings.extension == ".png"
    assert VisualizationSettings(format="jpeg").extension == ".jpg"
    assert VisualizationSettings.rgb("#FF8000") == (255, 128, 0)


def _with_orientation(image: Image.Image, fmt: str, orientation: int, **params: object) -> bytes:
    exif = Image.Exif()
    exif[visualize.ORIENTATION_TAG] = orientation
    return _pil_bytes(image, fmt, exif=exif.tobytes(), **params)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_displayed_frame(orientation: int) -> None:
    stored = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 2  # every pixel differs
    data = _with_orientation(Image.fromarray(stored), "PNG", orientation)
    with Image.open(io.BytesIO(data)) as img:
        expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    decoded = decode_image_rgb8(data)
    np.testing.assert_array_equal(decoded, expected)
    assert image_size_from_header(data) == (expected.shape[1], expected.shape[0])


def test_rotated_jpeg_is_drawn_upright_under_its_polygons() -> None:
    # stored 60 wide x 40 high, dark left half; Orientation 6 shows it 40 wide x 60 high, dark top half
    stored = np.full((40, 60, 3), 250, dtype=np.uint8)
    stored[:, :30] = 5
    data = _with_orientation(Image.fromarray(stored), "JPEG", 6, quality=95)
    assert image_size_from_header(data) == (40, 60)
    parsed = parse_polygons([{"type": "external", "points": _square(2, 2, 8, 8)}])
    settings = VisualizationSettings(show_numbers=False, fill_opacity=0.0)
    encoded, size, problems = render_visualization(data, parsed, settings)
    assert problems == [] and size == (40, 60) and encoded is not None
    drawn = cv2.cvtColor(cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert drawn.shape == (60, 40, 3)
    assert drawn[20, 30].max() < 40 and drawn[45, 30].min() > 210  # dark above, light below
    assert tuple(drawn[2, 5]) == (255, 0, 0)  # the square's outline sits where its points say


def test_header_size_of_a_huge_png_is_read_without_decoding() -> None:
    data = huge_png(20_000, 20_000)
    assert len(data) < 400_000
    assert image_size_from_header(data) == (20_000, 20_000)


def huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit black PNG of ``width`` x ``height``, compressed row by row (never held decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    rows_per_piece = 256
    pieces = [compressor.compress(row * min(rows_per_piece, height - start))
              for start in range(0, height, rows_per_piece)]  # fmt: skip
    pieces.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(pieces)) + chunk(b"IEND", b"")


def test_undecodable_bytes_give_one_fixed_message() -> None:
    parsed = parse_polygons([{"type": "external", "points": _square(2, 2, 8, 8)}])
    messages = set()
    for data in (b"not an image at all", b"\x89PNG\r\n\x1a\n not a png", b"GIF89a broken"):
        encoded, size, problems = render_visualization(data, parsed, VisualizationSettings())
        assert encoded is None and size is None
        messages |= {(p.code, p.message) for p in problems}
    assert messages == {("image_decode_failed", "not a decodable image (UnidentifiedImageError)")}


# --------------------------------------------------------------------------- the stage


def test_stage_chain_gives_the_visualize_stage_the_types_polyline_label(tmp_path) -> None:
    from ray_export import stages
    from ray_export.options import build_options
    from ray_export.project_types.registry import PROJECT_TYPES

    options = build_options(None, {"db": "x.db", "project": "p"})
    labels = {}
    for name, project_type in PROJECT_TYPES.items():
        (step,) = [
            s for s in stages.stage_chain(options, str(tmp_path), None, project_type=name) if s.name == "visualize"
        ]
        labels[name] = step.kwargs["polyline_label"]
        assert labels[name] == project_type.polyline_label
    assert labels["sperm"] == "S" and labels["spheroid"] == "P"


def test_visualize_stage_draws_with_the_polyline_label(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import pyarrow as pa

    from ray_export import stages

    elements = [_polyline([(10, 10), (150, 100)], 1, "tail")]
    table = pa.table({"index": [1], "original": [INPUT_KINDS["rgb_tiff"]], "polygons": [json.dumps(elements)]})
    drawn = {}
    for prefix in ("S", "MT"):
        out = stages.visualize_stage(table, VisualizationSettings(), keep_originals=False, polyline_label=prefix)
        drawn[prefix] = out.column("visualization").to_pylist()[0]
    assert drawn["S"] is not None and drawn["MT"] is not None and drawn["S"] != drawn["MT"]
    rgb = decode_image_rgb8(INPUT_KINDS["rgb_tiff"])
    expected = render_overlay(rgb, parse_polygons(elements), VisualizationSettings(), "MT")
    np.testing.assert_array_equal(decode_image_rgb8(drawn["MT"]), expected)
