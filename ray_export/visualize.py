"""Overlay visualizations: the original image with its objects drawn on top.

Conventions:

* Polygon coordinates are float pixels in OpenCV's convention (integer coordinates are pixel
  centres, as produced by ``cv2.findContours``). Drawing uses OpenCV's fixed-point ``shift`` so
  sub-pixel vertices are honoured.
* Frame: polygons are in the image as displayed, that is with its EXIF orientation applied (what a
  browser, a phone gallery and SpheroSeg's editor show). Decoding therefore applies the EXIF
  Orientation tag (1-8), and :func:`image_size_from_header` gives the displayed size (width and
  height swapped for orientations 5-8); the visualization has that size. 8-bit samples are kept as
  they are; any other depth (16-bit, 32-bit integer, float) is stretched linearly from its actual
  minimum..maximum (over all colour channels together, non-finite values ignored) to 0..255. An
  alpha channel is dropped (not composited): the stored colour values are shown as they are.
  Grayscale becomes three equal channels. Only the first page/frame of a multi-page file is used.
* Drawing order: every object's fill (outer ring minus its holes, alpha-blended at ``fill_opacity``),
  then the outer outlines, the hole outlines and orphan-hole outlines (internal colour), the polylines,
  and last the badges' leaders and discs, then the polyline labels. An object is filled and outlined in
  the external colour, a ``partClass: "core"`` one in :data:`CORE_COLOUR`, one with ``complete: false``
  in :data:`INCOMPLETE_COLOUR` (that wins over core). Polylines are drawn open at twice the stroke width
  with round ends, in the colour of their ``partClass`` (:data:`PART_COLOURS`, any other or none
  :data:`OTHER_PART_COLOUR`).
* Badges: each numbered object's number in a white disc with a dark border. Their text height scales
  with the image: ``font_size`` pixels on an image whose shorter side is 1000 px, in proportion to the
  shorter side otherwise, at least 10 px, at most four times ``font_size`` and at most a sixth of the
  shorter side.
* Polyline labels: one per polyline instance (the polylines sharing an ``instanceId``; one without
  it is an instance of its own), ``<prefix><n>`` with n in order of the instance's first polyline
  (``S`` for sperm, ``MT`` for microtubules, ``P`` otherwise; the caller passes the prefix), white text
  in a dark pill outlined in the colour of the instance's first polyline, at the text height of the
  badges, centred at the mean of its polylines' middle points and moved wholly inside the image. An
  instance none of whose polylines reaches the image gets no label (its n is still used up).
* A badge sits on its object, centred in its material (outer ring minus holes) on a pixel of its mask
  far from its boundary, found with an exact distance transform of the mask, so it lies inside concave
  objects too and never in a hole: for an object with holes the pole of inaccessibility of its material
  (the pixel farthest from the outer ring and every hole), for a hole-free one the pixel nearest its
  centroid among those within 10 % of that largest distance. It stays there when the disc clears the
  outline there and covers at most a fifth of the object's visible material. Otherwise (small or thin
  objects) the badge is set beside the object, outside its outer ring (holes included) with a small
  gap, wholly inside the image, joined to the object's nearest pixel by a thin leader (white with dark
  edges). Among the allowed centres near the object the one whose disc covers the fewest pixels
  already drawn on (other objects, polylines, earlier badges) wins, then the one nearest the pole, then
  the first in row order. Objects on their poles come first, then the others in number order. A badge
  that finds no room beside its object (a tiny image) is drawn at the pole. Objects under one square
  pixel, or covering no pixel, get no number.
* Encoding: PNG at compression level 3; JPEG at quality 95 with 4:4:4 chroma; WebP lossy at quality 95
  (WebP is limited to 16383 pixels per side; larger images give a ``render_failed`` problem).

All drawing uses integer OpenCV primitives, so the same input always gives the same bytes.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .geometry import ring_signed_area
from .options import VisualizationSettings
from .png import encode_png_rgb
from .polygons import ImagePolygons, PolygonObject, Polyline, id_text
from .problems import Problem
from .raster import COORD_LIMIT, ONE, SHIFT, fixed_point, object_mask  # noqa: F401 - object_mask is part of this API

STAGE = "visualize"

_MIN_NUMBERED_AREA = 1.0  # objects smaller than one pixel get no number
_POLE_TIE = 1e-6  # relative slack that makes float32 distances of symmetric pixels tie
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_DISC_FILL = (255, 255, 255)
_DISC_BORDER = (32, 32, 32)
_TEXT_COLOUR = (0, 0, 0)
_REFERENCE_SIDE = 1000  # shorter image side on which badge text is ``font_size`` pixels high
_MIN_TEXT_HEIGHT = 10  # badge text is never smaller (the smallest font size accepted)...
_MAX_TEXT_FACTOR = 4  # ...nor larger than this many times the font size...
_MAX_TEXT_SHARE = 6  # ...nor than this fraction (1/6) of the shorter image side
_MAX_COVER = 0.2  # a badge on its object covers at most this share of the object's material
_SEARCH_STEPS = 8  # a badge set beside its shape is sought on a grid of radius / 8 pixels (at least 1)
_LEADER_GAP = (
    2  # least gap in pixels (plus a third of the radius) between a badge set beside its shape and the shape's outline
)
#: Fill and outline of an external object with ``partClass: "core"`` (#22C55E).
CORE_COLOUR: tuple[int, int, int] = (0x22, 0xC5, 0x5E)
#: Fill and outline of an object with ``complete: false`` (#969696).
INCOMPLETE_COLOUR: tuple[int, int, int] = (0x96, 0x96, 0x96)
#: Polyline colour by ``partClass`` (matched exactly): head #22C55E, midpiece #F59E0B, tail #06B6D4.
PART_COLOURS: dict[str, tuple[int, int, int]] = {
    "head": (0x22, 0xC5, 0x5E),
    "midpiece": (0xF5, 0x9E, 0x0B),
    "tail": (0x06, 0xB6, 0xD4),
}
#: Polyline colour of any other part class, or none (#A855F7).
OTHER_PART_COLOUR: tuple[int, int, int] = (0xA8, 0x55, 0xF7)
_PILL_FILL = (32, 32, 32)
_PILL_TEXT = (255, 255, 255)
_JPEG_QUALITY = 95
_WEBP_QUALITY = 95


class ImageDecodeError(ValueError):
    """The bytes could not be decoded as an image."""


# --------------------------------------------------------------------------- decoding


#: EXIF tag of the orientation (1 = as stored; 2-8 mirrored and/or rotated).
ORIENTATION_TAG = 0x0112
#: Orientations whose displayed image has width and height swapped.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_HEADER_LOCK = threading.Lock()


@contextmanager
def _header_only_open(data: bytes) -> Iterator[Image.Image]:
    """Pillow's lazy open of ``data`` without its decompression-bomb refusal: only the header is read
    here, and the callers check the pixel count themselves before any decode."""
    with _HEADER_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            img = Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    with img:
        yield img


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation found while opening (JPEG, WebP, a PNG's eXIf before its pixels) or in a
    TIFF's tags; Pillow's ``getexif`` of a PNG would decode the whole image, so it is not called."""
    try:
        raw = img.info.get("exif")
        if raw:
            exif = Image.Exif()
            exif.load(raw)
        elif img.format == "TIFF":
            exif = img.getexif()
        else:
            return 1
        value = exif.get(ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def header_info(data: bytes) -> tuple[int, int, int] | None:
    """``(stored width, stored height, EXIF orientation)`` from the header only, or None when it cannot
    be read. Nothing is decoded, whatever the image's size."""
    try:
        with _header_only_open(data) as img:
            width, height = img.size
            orientation = _orientation(img)
    except Exception:
        return None
    if width <= 0 or height <= 0:
        return None
    return int(width), int(height), orientation


def image_size_from_header(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of the image as displayed (EXIF orientation applied), read from the header
    only, or None when it cannot be read."""
    info = header_info(data)
    if info is None:
        return None
    width, height, orientation = info
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)


def apply_orientation(samples: np.ndarray, orientation: int) -> np.ndarray:
    """Stored samples ``(H, W, ...)`` turned into the displayed frame of an EXIF ``orientation``
    (as Pillow's ``ImageOps.exif_transpose``)."""
    if orientation == 2:
        return samples[:, ::-1]
    if orientation == 3:
        return samples[::-1, ::-1]
    if orientation == 4:
        return samples[::-1]
    if orientation == 5:
        return samples.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(samples, k=-1)
    if orientation == 7:
        return samples.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(samples, k=1)
    return samples


def decode_image_rgb8(data: bytes) -> np.ndarray:
    """Decode JPEG/PNG/TIFF/... bytes to an ``(H, W, 3)`` uint8 RGB array in the displayed frame (EXIF
    orientation applied).

    Raises :class:`ImageDecodeError` when neither OpenCV nor Pillow can decode the data.
    """
    if not data:
        raise ImageDecodeError("image data is empty")
    samples = _decode_with_cv2(data)
    if samples is None:
        samples = _decode_with_pillow(data)
    if samples.ndim < 2 or samples.shape[0] == 0 or samples.shape[1] == 0:
        raise ImageDecodeError(f"decoded image has no pixels (shape {samples.shape})")
    info = header_info(data)
    if info is not None:
        samples = apply_orientation(samples, info[2])
    colour = _colour_channels(samples)
    stretched = _stretch_to_uint8(colour)
    if stretched.ndim == 2:
        return cv2.cvtColor(stretched, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(stretched)


def _decode_with_cv2(data: bytes) -> np.ndarray | None:
    """Samples in RGB(A) channel order, or None when OpenCV cannot decode the data."""
    try:
        buffer = np.frombuffer(data, dtype=np.uint8)
        # IMREAD_UNCHANGED keeps the stored depth, channels and alpha and ignores EXIF orientation,
        # which decode_image_rgb8 applies itself (the same way for both decoders).
        decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if decoded is None or decoded.size == 0:
        return None
    if decoded.ndim == 3 and decoded.shape[2] >= 3:
        # OpenCV gives BGR / BGRA; reorder the colour channels, keep any further ones behind them.
        order = [2, 1, 0, *range(3, decoded.shape[2])]
        decoded = decoded[:, :, order]
    return decoded


def _decode_with_pillow(data: bytes) -> np.ndarray:
    """Samples in RGB(A) channel order decoded by Pillow (first frame)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                img.seek(0)
                img.load()
                mode = img.mode
                if mode == "1":
                    img = img.convert("L")
                elif mode in ("P", "PA"):
                    img = img.convert("RGBA")
                elif mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                    return np.asarray(img).astype(np.uint16, copy=False)
                elif mode not in ("L", "LA", "I", "F", "RGB", "RGBA", "RGBa", "La"):
                    img = img.convert("RGB")
                return np.asarray(img)
    except Exception as exc:
        raise ImageDecodeError(f"not a decodable image ({type(exc).__name__})") from exc


def _colour_channels(samples: np.ndarray) -> np.ndarray:
    """Drop alpha and extra channels: 2-D gray or ``(H, W, 3)`` RGB."""
    if samples.ndim == 2:
        return samples
    channels = samples.shape[2]
    if channels in (1, 2):
        return samples[:, :, 0]
    return samples[:, :, :3]


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """8-bit samples unchanged; any other depth stretched from its actual min..max to 0..255."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * np.uint8(255)
    if values.dtype.kind not in "uif":
        raise ImageDecodeError(f"unsupported sample type {values.dtype}")
    if values.dtype == np.float16:
        values = values.astype(np.float32)
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            fill = values[finite].min() if finite.any() else 0.0
            values = np.where(finite, values, fill)
    elif values.dtype.itemsize > 4 or values.dtype == np.uint32:
        values = values.astype(np.float64)
    lo = float(values.min())
    hi = float(values.max())
    span = hi - lo
    if span > 0 and math.isfinite(span):
        scale = 255.0 / span
        stretched = cv2.convertScaleAbs(values, alpha=scale, beta=-lo * scale)
        return stretched.reshape(values.shape)
    # Constant image: integers keep their place in the type's range, floats are read as 0..1.
    if values.dtype.kind == "f":
        level = min(max(lo, 0.0), 1.0) * 255.0 if math.isfinite(lo) else 0.0
    else:
        level = min(max(lo, 0.0) * 255.0 / float(np.iinfo(values.dtype).max), 255.0)
    return np.full(values.shape, round(level), dtype=np.uint8)


# --------------------------------------------------------------------------- geometry helpers


def _pole(mask: np.ndarray, ring_shaped: bool) -> tuple[int, int, float] | None:
    """``(x, y, clearance)``: the pixel :func:`pole_of_inaccessibility` picks and its distance to the
    nearest pixel outside the mask."""
    if not mask.any():
        return None
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    largest = float(distance.max())
    threshold = largest * (1.0 - _POLE_TIE) if ring_shaped else largest * 0.9
    rows, cols = np.nonzero(distance >= threshold)
    moments = cv2.moments(mask, binaryImage=True)
    centroid_x = moments["m10"] / moments["m00"]
    centroid_y = moments["m01"] / moments["m00"]
    nearest = int(np.argmin((cols - centroid_x) ** 2 + (rows - centroid_y) ** 2))
    row, col = int(rows[nearest]), int(cols[nearest])
    return col, row, float(distance[row, col])


def pole_of_inaccessibility(mask: np.ndarray, ring_shaped: bool = False) -> tuple[int, int] | None:
    """``(x, y)`` of a mask pixel as far as possible from the mask's boundary, holes' edges included.

    The distance is the exact Euclidean distance transform of the mask (zero pixels, the border of the
    mask's box included, are the outside). For a ``ring_shaped`` mask (an object with holes, whose
    centroid often lies in a hole) the pixel of largest distance is taken: the pole of inaccessibility
    of the material, the centre of the largest disc that fits in it. Otherwise, among the pixels whose
    distance is within 10 % of the largest, the one closest to the mask's centroid is taken, so
    elongated and concave shapes get a central point that still lies well inside them. Ties go to the
    pixel closest to the centroid, then to the first in row order.
    """
    found = _pole(mask, ring_shaped)
    return None if found is None else (found[0], found[1])


# --------------------------------------------------------------------------- badges


@dataclass(frozen=True)
class Badge:
    """One label: ``text`` (``text_height`` pixels high) in a white disc of ``radius`` with a dark
    border centred at pixel ``(x, y)``; ``leader`` is the ``(x0, y0, x1, y1)`` line from the disc's edge
    to the labelled shape for a badge set beside it, None for a badge on its object."""

    text: str
    x: int
    y: int
    radius: int
    text_height: int
    leader: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class _Site:
    """Where an object's material can hold its badge: the pole ``(x, y)`` in image pixels, its
    ``clearance`` to the material's edge, the material's visible ``area`` and box size."""

    x: int
    y: int
    clearance: float
    area: int
    box_width: int
    box_height: int


def badge_text_height(width: int, height: int, font_size: int) -> int:
    """Text height in pixels of the badges on a ``width`` x ``height`` image.

    ``font_size`` is the height on an image whose shorter side is 1000 px; it scales with the shorter
    side, is at least 10 px and at most four times ``font_size``, and never more than a sixth of the
    shorter side (so tiny images keep room for their objects).
    """
    short = max(1, min(width, height))
    size = max(font_size * short / _REFERENCE_SIDE, _MIN_TEXT_HEIGHT)
    size = min(size, _MAX_TEXT_FACTOR * font_size, short / _MAX_TEXT_SHARE)
    return max(1, math.floor(size + 0.5))


def _line_thickness(text_height: int) -> int:
    """Thickness of the text strokes and of the disc border for text ``text_height`` pixels high."""
    return max(1, round(text_height / 16))


def _text_metrics(text: str, text_height: int) -> tuple[float, int, int, int]:
    """``(scale, thickness, text_width, text_height)`` for a label drawn ``text_height`` pixels high."""
    thickness = _line_thickness(text_height)
    scale = cv2.getFontScaleFromHeight(_FONT, int(text_height), thickness)
    (text_width, drawn_height), _baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    return scale, thickness, text_width, drawn_height


def disc_radius(text: str | int, text_height: int) -> int:
    """Radius in pixels of the white disc that holds ``text`` drawn ``text_height`` pixels high."""
    _scale, thickness, text_width, drawn_height = _text_metrics(str(text), text_height)
    return math.ceil(math.hypot(text_width, drawn_height) / 2) + thickness + 2


def _outer_radius(radius: int, text_height: int) -> int:
    """Radius of everything a disc of ``radius`` paints, its anti-aliased border included."""
    return radius + _line_thickness(text_height) // 2 + 1


def _leader_width(text_height: int) -> int:
    """Width of a leader's white core (it gets a one-pixel dark edge on each side)."""
    return max(1, _line_thickness(text_height) // 2)


def object_colour(obj: PolygonObject, external: tuple[int, int, int]) -> tuple[int, int, int]:
    """Fill and outline colour of an object: grey when incomplete, green when a core, else ``external``."""
    if not obj.complete:
        return INCOMPLETE_COLOUR
    if obj.part_class == "core":
        return CORE_COLOUR
    return external


def part_colour(part_class: Any) -> tuple[int, int, int]:
    """Colour of a polyline of ``part_class`` (head, midpiece, tail; anything else purple)."""
    return PART_COLOURS.get(part_class, OTHER_PART_COLOUR) if isinstance(part_class, str) else OTHER_PART_COLOUR


def polyline_width(stroke: int) -> int:
    """Width in pixels of the polylines drawn with outlines ``stroke`` pixels wide."""
    return 2 * stroke


def _site(obj: PolygonObject, mask: np.ndarray, x0: int, y0: int) -> _Site | None:
    """The badge site of an object from its visible fill mask."""
    pole = _pole(mask, ring_shaped=any(len(hole) >= 3 for hole in obj.holes))
    if pole is None:
        return None
    area = int(np.count_nonzero(mask))
    return _Site(pole[0] + x0, pole[1] + y0, pole[2], area, mask.shape[1], mask.shape[0])


def _fits_inside(site: _Site, outer: int, stroke: int) -> bool:
    """Whether a disc painting ``outer`` pixels around the pole stays clear of the outline and holes
    and covers at most :data:`_MAX_COVER` of the material."""
    return site.clearance >= outer + (stroke + 1) // 2 + 1 and math.pi * outer * outer <= _MAX_COVER * site.area


def _reaches_image(points: np.ndarray, width: int, height: int) -> bool:
    """Whether some part of the open polyline ``points`` lies on the image (pixel centres 0..size-1)."""
    inside = (points[:, 0] >= 0) & (points[:, 0] <= width - 1) & (points[:, 1] >= 0) & (points[:, 1] <= height - 1)
    if inside.any():
        return True
    start = points[:-1]
    delta = points[1:] - start
    lo = np.zeros(len(delta))
    hi = np.ones(len(delta))
    visible = np.ones(len(delta), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis, limit in ((0, width - 1), (1, height - 1)):
            d = delta[:, axis]
            for p, q in ((-d, start[:, axis]), (d, limit - start[:, axis])):
                ratio = q / p
                lo = np.where(p < 0, np.maximum(lo, ratio), lo)
                hi = np.where(p > 0, np.minimum(hi, ratio), hi)
                visible &= ~((p == 0) & (q < 0))
    return bool(np.any(visible & (hi > lo)))


class _Layout:
    """Everything drawn on the image, rasterised on demand into windows: the filled outer rings, the
    polylines and orphan holes, and the badges placed so far (discs and leaders)."""

    def __init__(self, parsed: ImagePolygons, stroke: int, capacity: int) -> None:
        rings = [obj.outer for obj in parsed.objects if len(obj.outer) >= 3]
        lines = [line.points for line in parsed.polylines if len(line.points) >= 2]
        loops = [hole for hole in parsed.orphan_holes if len(hole) >= 2]
        self._stroke = stroke
        self._line_width = polyline_width(stroke)
        self._rings = [fixed_point(ring) for ring in rings]
        self._lines = [fixed_point(line) for line in lines]
        self._loops = [fixed_point(loop) for loop in loops]
        self._ring_boxes = _boxes(rings, 0.0)
        self._line_boxes = _boxes(lines, self._line_width / 2 + 1)
        self._loop_boxes = _boxes(loops, stroke / 2)
        self._discs: list[tuple[int, int, int]] = []
        self._leaders: list[tuple[np.ndarray, int] | None] = []
        self._badge_boxes = np.zeros((capacity, 4), dtype=np.float64)

    def add(self, badge: Badge) -> None:
        """Record a placed badge so that later ones avoid it."""
        outer = _outer_radius(badge.radius, badge.text_height)
        box = [badge.x - outer, badge.y - outer, badge.x + outer, badge.y + outer]
        leader = None
        if badge.leader is not None:
            x0, y0, x1, y1 = badge.leader
            box = [min(box[0], x0, x1) - 2, min(box[1], y0, y1) - 2, max(box[2], x0, x1) + 2, max(box[3], y0, y1) + 2]
            leader = (fixed_point(np.array(badge.leader)).reshape(2, 2), _leader_width(badge.text_height) + 2)
        self._badge_boxes[len(self._discs)] = box
        self._discs.append((badge.x, badge.y, outer))
        self._leaders.append(leader)

    def rasterise(self, canvas: np.ndarray, ox: int, oy: int) -> None:
        """Set every pixel of ``canvas`` (image pixel ``(ox, oy)`` at its top-left) that is drawn on."""
        window = (ox, oy, ox + canvas.shape[1] - 1, oy + canvas.shape[0] - 1)
        shift = np.array([ox * ONE, oy * ONE], dtype=np.int32)
        for index in _meeting(self._ring_boxes, window):
            cv2.fillPoly(canvas, [self._rings[index] - shift], 1, cv2.LINE_8, SHIFT)
        for shapes, boxes, closed, width in (
            (self._lines, self._line_boxes, False, self._line_width),
            (self._loops, self._loop_boxes, True, self._stroke),
        ):
            chosen = [shapes[index] - shift for index in _meeting(boxes, window)]
            if chosen:
                cv2.polylines(canvas, chosen, closed, 1, width, cv2.LINE_8, SHIFT)
        for index in _meeting(self._badge_boxes[: len(self._discs)], window):
            x, y, outer = self._discs[index]
            cv2.circle(canvas, (x - ox, y - oy), outer, 1, -1, cv2.LINE_8)
            leader = self._leaders[index]
            if leader is not None:
                ends, width = leader[0] - shift, leader[1]
                start, end = (int(ends[0, 0]), int(ends[0, 1])), (int(ends[1, 0]), int(ends[1, 1]))
                cv2.line(canvas, start, end, 1, width, cv2.LINE_8, SHIFT)


def _boxes(shapes: list[np.ndarray], pad: float) -> np.ndarray:
    """``(n, 4)`` boxes ``[x_min, y_min, x_max, y_max]`` of point arrays, grown by ``pad`` pixels."""
    if not shapes:
        return np.zeros((0, 4), dtype=np.float64)
    lows = np.array([shape.min(axis=0) for shape in shapes]) - pad
    highs = np.array([shape.max(axis=0) for shape in shapes]) + pad
    return np.hstack([lows, highs])


def _meeting(boxes: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """Indices of the boxes that reach into the pixel ``window`` ``(x0, y0, x1, y1)`` (inclusive)."""
    x0, y0, x1, y1 = window
    hit = (boxes[:, 2] >= x0 - 1) & (boxes[:, 0] <= x1 + 1) & (boxes[:, 3] >= y0 - 1) & (boxes[:, 1] <= y1 + 1)
    return np.nonzero(hit)[0]


def _disc_sums(drawn: np.ndarray, cols: np.ndarray, rows: np.ndarray, radius: int) -> np.ndarray:
    """How many set pixels of ``drawn`` lie under a disc of ``radius`` at each centre ``(cols, rows)``,
    the disc taken as the union of two crossed rectangles (exact integer sums from one integral image)."""
    inner = math.floor(radius * math.sqrt(0.5))
    padded = cv2.copyMakeBorder(drawn, radius, radius, radius, radius, cv2.BORDER_CONSTANT, value=0)
    integral = cv2.integral(padded, sdepth=cv2.CV_32S)
    xs, ys = cols + radius, rows + radius

    def box(half_x: int, half_y: int) -> np.ndarray:
        x0, x1, y0, y1 = xs - half_x, xs + half_x + 1, ys - half_y, ys + half_y + 1
        return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]

    return (box(radius, inner) + box(inner, radius) - box(inner, inner)).astype(np.int64)


def _badge_beside(
    text: str,
    text_height: int,
    anchor: tuple[int, int],
    extent: float,
    draw_shape: Callable[[np.ndarray, int, int], None],
    layout: _Layout,
    width: int,
    height: int,
    stroke: int,
) -> Badge | None:
    """A badge set beside a shape (outside it, wholly on the image) with a leader to its nearest pixel.

    The search runs in a window around ``anchor`` (a pixel of the shape) that reaches past the shape
    (of size ``extent``) by a few badge radii, over centres on a grid of :data:`_SEARCH_STEPS` steps per
    badge radius (every pixel for small badges). Allowed centres keep the disc clear of the shape and
    its outline and inside the image; among them the one whose disc covers the fewest pixels already
    drawn on (other objects, polylines, badges) wins, then the one nearest to ``anchor``, then the first
    in row order. None when there is no room.
    """
    radius = disc_radius(text, text_height)
    outer = _outer_radius(radius, text_height)
    clearance = outer + (stroke + 1) // 2 + _LEADER_GAP + outer // 3
    reach = math.ceil(min(extent / 2, 3 * outer)) + clearance + outer + 1
    ax, ay = anchor
    wx0, wy0 = max(0, ax - reach), max(0, ay - reach)
    wx1, wy1 = min(width, ax + reach + 1), min(height, ay + reach + 1)
    shape = np.zeros((wy1 - wy0, wx1 - wx0), dtype=np.uint8)
    draw_shape(shape, wx0, wy0)
    if not shape.any():
        return None
    # Distances between cells of step x step pixels, less the most two pixels can be off their cells' grid.
    step = max(1, outer // _SEARCH_STEPS)
    cells_y, cells_x = -(-shape.shape[0] // step), -(-shape.shape[1] // step)
    grid = np.zeros((cells_y * step, cells_x * step), dtype=np.uint8)
    grid[: shape.shape[0], : shape.shape[1]] = shape
    rows_max = functools.reduce(np.maximum, [grid[offset::step] for offset in range(step)])
    coarse = functools.reduce(np.maximum, [rows_max[:, offset::step] for offset in range(step)])
    distance = cv2.distanceTransform((coarse == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    far = distance * step - (step - 1) * math.sqrt(2.0) >= clearance
    rows, cols = np.nonzero(far)
    rows = rows.astype(np.int64) * step + (step - 1) // 2
    cols = cols.astype(np.int64) * step + (step - 1) // 2
    # Centres keep the disc on the image, and away from window edges inside the image (the shape may go on).
    lo_x = max(outer, wx0 + clearance if wx0 > 0 else 0) - wx0
    hi_x = min(width - 1 - outer, wx1 - 1 - clearance if wx1 < width else width) - wx0
    lo_y = max(outer, wy0 + clearance if wy0 > 0 else 0) - wy0
    hi_y = min(height - 1 - outer, wy1 - 1 - clearance if wy1 < height else height) - wy0
    keep = (cols >= lo_x) & (cols <= hi_x) & (rows >= lo_y) & (rows <= hi_y)
    if not keep.any():
        return None
    rows, cols = rows[keep], cols[keep]
    drawn = np.zeros_like(shape)
    layout.rasterise(drawn, wx0, wy0)
    nearness = (cols + wx0 - ax) ** 2 + (rows + wy0 - ay) ** 2
    key = _disc_sums(drawn, cols, rows, outer) * (int(nearness.max()) + 1) + nearness
    best = int(np.argmin(key))
    row, col = int(rows[best]), int(cols[best])
    ys, xs = np.nonzero(shape)
    nearest = int(np.argmin((xs.astype(np.int64) - col) ** 2 + (ys.astype(np.int64) - row) ** 2))
    centre_x, centre_y = int(col) + wx0, int(row) + wy0
    target_x, target_y = float(xs[nearest] + wx0), float(ys[nearest] + wy0)
    dx, dy = target_x - centre_x, target_y - centre_y
    length = math.hypot(dx, dy)
    ux, uy = dx / length, dy / length
    leader = (centre_x + ux * radius, centre_y + uy * radius, target_x - ux * 0.5, target_y - uy * 0.5)
    return Badge(text, centre_x, centre_y, radius, text_height, leader)


def _object_shape(obj: PolygonObject) -> Callable[[np.ndarray, int, int], None]:
    """Rasteriser of an object's filled outer ring (its holes count as the object) into a window."""
    ring = fixed_point(obj.outer)

    def draw(canvas: np.ndarray, ox: int, oy: int) -> None:
        cv2.fillPoly(canvas, [ring - np.array([ox * ONE, oy * ONE], dtype=np.int32)], 1, cv2.LINE_8, SHIFT)

    return draw


def _place_badges(
    parsed: ImagePolygons,
    sites: list[tuple[PolygonObject, _Site]],
    width: int,
    height: int,
    settings: VisualizationSettings,
) -> list[Badge]:
    """Badges of the numbered objects, in the order of ``sites``.

    An object whose pole leaves room for its disc, which then covers at most :data:`_MAX_COVER` of its
    material, keeps its badge there; the others are set beside their object in number order, each
    avoiding what was drawn or placed before it.
    """
    text_height = badge_text_height(width, height, settings.font_size)
    stroke = int(settings.stroke_width)
    layout = _Layout(parsed, stroke, len(sites))
    placed: list[Badge | None] = [None] * len(sites)
    for index, (obj, site) in enumerate(sites):
        text = str(obj.number)
        radius = disc_radius(text, text_height)
        if _fits_inside(site, _outer_radius(radius, text_height), stroke):
            placed[index] = Badge(text, site.x, site.y, radius, text_height)
            layout.add(placed[index])
    for index, (obj, site) in enumerate(sites):
        if placed[index] is not None:
            continue
        text = str(obj.number)
        extent = max(site.box_width, site.box_height)
        badge = _badge_beside(
            text, text_height, (site.x, site.y), extent, _object_shape(obj), layout, width, height, stroke
        )
        if badge is None:  # no room beside it: on the object after all
            badge = Badge(text, site.x, site.y, disc_radius(text, text_height), text_height)
        placed[index] = badge
        layout.add(badge)
    return [badge for badge in placed if badge is not None]


def _object_sites(parsed: ImagePolygons, width: int, height: int) -> list[tuple[PolygonObject, _Site]]:
    """The badge sites of the objects that get a number."""
    sites = []
    for obj in parsed.objects:
        if abs(ring_signed_area(obj.outer)) < _MIN_NUMBERED_AREA:
            continue
        found = object_mask(obj, width, height)
        site = None if found is None else _site(obj, *found)
        if site is not None:
            sites.append((obj, site))
    return sites


def place_badges(parsed: ImagePolygons, width: int, height: int, settings: VisualizationSettings) -> list[Badge]:
    """Every object badge of an overlay, in number order."""
    return _place_badges(parsed, _object_sites(parsed, width, height), width, height, settings)


def number_disc(
    obj: PolygonObject, width: int, height: int, settings: VisualizationSettings
) -> tuple[int, int, int] | None:
    """``(centre_x, centre_y, radius)`` of the object's number disc when it is drawn alone, or None when
    it gets no number."""
    badges = place_badges(ImagePolygons(objects=[obj]), width, height, settings)
    return (badges[0].x, badges[0].y, badges[0].radius) if badges else None


# --------------------------------------------------------------------------- polyline labels


@dataclass(frozen=True)
class PolylineLabel:
    """One polyline instance's label: ``text`` (``text_height`` pixels high) in a pill centred at pixel
    ``(x, y)``, ``half_width`` x ``half_height`` pixels around it (its ends are half discs of radius
    ``half_height``), outlined in ``colour``."""

    text: str
    x: int
    y: int
    half_width: int
    half_height: int
    text_height: int
    colour: tuple[int, int, int]


def polyline_instances(polylines: list[Polyline]) -> list[list[Polyline]]:
    """The polylines grouped by instance, in order of each instance's first polyline; a polyline
    without ``instanceId`` is an instance of its own."""
    groups: dict[str | int, list[Polyline]] = {}
    for index, line in enumerate(polylines):
        key = id_text(line.instance_id)
        groups.setdefault(index if key is None else key, []).append(line)
    return list(groups.values())


def _middle(points: np.ndarray) -> np.ndarray:
    """The middle vertex of a polyline (the mean of the two middle ones for an even count)."""
    count = len(points)
    return (points[(count - 1) // 2] + points[count // 2]) / 2.0


def _pill_size(text: str, text_height: int) -> tuple[int, int, int]:
    """``(half_width, half_height, border)`` of the pill holding ``text`` ``text_height`` pixels high."""
    _scale, thickness, text_width, drawn_height = _text_metrics(text, text_height)
    half_height = math.ceil(drawn_height / 2) + thickness + max(2, text_height // 5)
    return math.ceil(text_width / 2) + half_height, half_height, thickness


def _inside(centre: float, half: int, size: int) -> int:
    """A centre coordinate that keeps ``half`` pixels on each side within ``0..size-1`` (the image's
    middle when it is too small)."""
    lo, hi = half, size - 1 - half
    if lo > hi:
        return (size - 1) // 2
    return min(max(math.floor(centre + 0.5), lo), hi)


def polyline_labels(
    parsed: ImagePolygons, width: int, height: int, settings: VisualizationSettings, prefix: str = "P"
) -> list[PolylineLabel]:
    """The label of every polyline instance that reaches the image: ``<prefix><n>``, n counting the
    instances in order of first appearance, centred at the mean of the middle vertices of the
    instance's polylines and moved wholly inside the image."""
    text_height = badge_text_height(width, height, settings.font_size)
    labels = []
    for number, lines in enumerate(polyline_instances(parsed.polylines), start=1):
        if not any(_reaches_image(line.points, width, height) for line in lines):
            continue
        text = f"{prefix}{number}"
        half_width, half_height, border = _pill_size(text, text_height)
        centre = np.mean([_middle(line.points) for line in lines], axis=0)
        margin = border // 2 + 1  # the border's anti-aliased edge
        x = _inside(float(centre[0]), half_width + margin, width)
        y = _inside(float(centre[1]), half_height + margin, height)
        colour = part_colour(lines[0].part_class)
        labels.append(PolylineLabel(text, x, y, half_width, half_height, text_height, colour))
    return labels


# --------------------------------------------------------------------------- drawing


def _blend_mask(image: np.ndarray, mask: np.ndarray, x0: int, y0: int, colour: np.ndarray, opacity: float) -> None:
    """Alpha-blend ``colour`` into ``image`` where ``mask`` is set (in place, bbox region only)."""
    region = image[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
    selected = mask.astype(bool)
    pixels = region[selected].astype(np.float32)
    blended = pixels * np.float32(1.0 - opacity) + colour * np.float32(opacity)
    region[selected] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _draw_badges(image: np.ndarray, badges: list[Badge]) -> None:
    """Draw every leader (white with dark edges), then every disc with its text on top."""
    for badge in badges:
        if badge.leader is None:
            continue
        ends = fixed_point(np.array(badge.leader).reshape(2, 2)).reshape(2, 2)
        start, end = (int(ends[0, 0]), int(ends[0, 1])), (int(ends[1, 0]), int(ends[1, 1]))
        core = _leader_width(badge.text_height)
        cv2.line(image, start, end, _DISC_BORDER, core + 2, cv2.LINE_AA, SHIFT)
        cv2.line(image, start, end, _DISC_FILL, core, cv2.LINE_AA, SHIFT)
    for badge in badges:
        scale, thickness, text_width, text_height = _text_metrics(badge.text, badge.text_height)
        centre = (badge.x, badge.y)
        cv2.circle(image, centre, badge.radius, _DISC_FILL, -1, cv2.LINE_AA)
        cv2.circle(image, centre, badge.radius, _DISC_BORDER, thickness, cv2.LINE_AA)
        origin = (badge.x - text_width // 2, badge.y + text_height // 2)
        cv2.putText(image, badge.text, origin, _FONT, scale, _TEXT_COLOUR, thickness, cv2.LINE_AA)


def _draw_polylines(image: np.ndarray, polylines: list[Polyline], stroke: int) -> None:
    """Draw every polyline open in its part's colour at :func:`polyline_width`, with round ends (a
    filled disc of the line's radius at each end point, sub-pixel placed; joints are rounded by OpenCV)."""
    width = polyline_width(stroke)
    radius = width * ONE // 2
    for line in polylines:
        if len(line.points) < 2:
            continue
        colour = part_colour(line.part_class)
        points = fixed_point(line.points)
        cv2.polylines(image, [points], False, colour, width, cv2.LINE_AA, SHIFT)
        for end in (points[0, 0], points[-1, 0]):
            cv2.circle(image, (int(end[0]), int(end[1])), radius, colour, -1, cv2.LINE_AA, SHIFT)


def _draw_pills(image: np.ndarray, labels: list[PolylineLabel]) -> None:
    """Draw every polyline label: a dark pill outlined in the instance's colour, white text in it."""
    for label in labels:
        scale, thickness, text_width, text_height = _text_metrics(label.text, label.text_height)
        x, y, r = label.x, label.y, label.half_height
        left, right = x - label.half_width + r, x + label.half_width - r
        cv2.rectangle(image, (left, y - r), (right, y + r), _PILL_FILL, -1, cv2.LINE_8)
        for cx in (left, right):
            cv2.circle(image, (cx, y), r, _PILL_FILL, -1, cv2.LINE_AA)
        cv2.ellipse(image, (left, y), (r, r), 0, 90, 270, label.colour, thickness, cv2.LINE_AA)
        cv2.ellipse(image, (right, y), (r, r), 0, -90, 90, label.colour, thickness, cv2.LINE_AA)
        for edge in (y - r, y + r):
            cv2.line(image, (left, edge), (right, edge), label.colour, thickness, cv2.LINE_AA)
        origin = (x - text_width // 2, y + text_height // 2)
        cv2.putText(image, label.text, origin, _FONT, scale, _PILL_TEXT, thickness, cv2.LINE_AA)


def render_overlay(
    rgb: np.ndarray, parsed: ImagePolygons, settings: VisualizationSettings, polyline_label: str = "P"
) -> np.ndarray:
    """Draw the objects, holes, polylines, badges and polyline labels (``<polyline_label><n>``) of
    ``parsed`` on a copy of ``rgb`` (RGB uint8)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    image = np.ascontiguousarray(rgb).copy()
    height, width = image.shape[:2]
    external = VisualizationSettings.rgb(settings.external_color)
    internal = VisualizationSettings.rgb(settings.internal_color)
    opacity = float(settings.fill_opacity)
    stroke = int(settings.stroke_width)

    sites: list[tuple[PolygonObject, _Site]] = []
    for obj in parsed.objects:
        found = object_mask(obj, width, height)
        if found is None:
            continue
        mask, x0, y0 = found
        if opacity > 0:
            _blend_mask(image, mask, x0, y0, np.asarray(object_colour(obj, external), dtype=np.float32), opacity)
        if settings.show_numbers and abs(ring_signed_area(obj.outer)) >= _MIN_NUMBERED_AREA:
            site = _site(obj, mask, x0, y0)
            if site is not None:
                sites.append((obj, site))

    outlined = [obj for obj in parsed.objects if len(obj.outer) >= 2]
    for colour, run in itertools.groupby(outlined, key=lambda obj: object_colour(obj, external)):
        cv2.polylines(image, [fixed_point(obj.outer) for obj in run], True, colour, stroke, cv2.LINE_AA, SHIFT)
    holes = [fixed_point(hole) for obj in parsed.objects for hole in obj.holes if len(hole) >= 2]
    holes += [fixed_point(hole) for hole in parsed.orphan_holes if len(hole) >= 2]
    if holes:
        cv2.polylines(image, holes, True, internal, stroke, cv2.LINE_AA, SHIFT)
    _draw_polylines(image, parsed.polylines, stroke)

    if settings.show_numbers:
        _draw_badges(image, _place_badges(parsed, sites, width, height, settings))
        _draw_pills(image, polyline_labels(parsed, width, height, settings, polyline_label))
    return image


# --------------------------------------------------------------------------- encoding


def encode_image(rgb: np.ndarray, fmt: str) -> bytes:
    """Encode an RGB uint8 image as ``png`` (:mod:`ray_export.png`), ``jpeg`` or ``webp`` bytes (deterministic)."""
    if fmt == "png":
        return encode_png_rgb(rgb)  # lossless, several times faster than libpng at the same size
    if fmt == "jpeg":
        extension, params = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]
        if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
            params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    elif fmt == "webp":
        extension, params = ".webp", [cv2.IMWRITE_WEBP_QUALITY, _WEBP_QUALITY]
    else:
        raise ValueError(f"unknown visualization format {fmt!r}")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(extension, bgr, params)
    if not ok or encoded is None:
        raise ValueError(f"the {fmt} encoder rejected a {rgb.shape[1]}x{rgb.shape[0]} image")
    return encoded.tobytes()


def render_visualization(
    data: bytes, parsed: ImagePolygons, settings: VisualizationSettings, polyline_label: str = "P"
) -> tuple[bytes | None, tuple[int, int] | None, list[Problem]]:
    """Decode, draw and encode one image; never raises for bad data. ``polyline_label``: the prefix of
    the polyline instances' labels (``S``, ``MT`` or ``P``).

    Returns ``(encoded bytes or None, (width, height) or None, problems)``. An image without objects
    and polylines gets no visualization; its size then comes from the header when that can be read
    (without a full decode).
    """
    has_content = bool(parsed.objects or parsed.polylines)
    if not has_content:
        size = image_size_from_header(data)
        if size is not None:
            return None, size, []
    try:
        rgb = decode_image_rgb8(data)
    except Exception as exc:
        message = str(exc) if isinstance(exc, ImageDecodeError) else f"{type(exc).__name__}: {exc}"
        return None, None, [Problem("image_decode_failed", STAGE, message[:300])]
    size = (int(rgb.shape[1]), int(rgb.shape[0]))
    if not has_content:
        return None, size, []
    try:
        encoded = encode_image(render_overlay(rgb, parsed, settings, polyline_label), settings.format)
    except Exception as exc:
        message = f"visualization failed: {type(exc).__name__}: {exc}"
        return None, size, [Problem("render_failed", STAGE, message[:300])]
    return encoded, size, []
