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
  then the outer outlines (external colour), the hole outlines and orphan-hole outlines (internal
  colour), the polylines (open, external colour), and last the number discs.
* Each number sits in a white disc with a dark border centred in the object's material (outer ring
  minus holes), on a pixel of its mask far from its boundary, found with an exact distance transform of
  the mask, so it lies inside concave objects too and never in a hole. An object with holes gets the
  pole of inaccessibility of its material (the pixel farthest from the outer ring and every hole); a
  hole-free one the pixel nearest its centroid among those within 10 % of that largest distance.
  Objects under one square pixel, or covering no pixel, get no number.
  ``font_size`` is the font's full height in pixels.
* Encoding: PNG at compression level 3; JPEG at quality 95 with 4:4:4 chroma; WebP lossy at quality 95
  (WebP is limited to 16383 pixels per side; larger images give a ``render_failed`` problem).

All drawing uses integer OpenCV primitives, so the same input always gives the same bytes.
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import cv2
import numpy as np
from PIL import Image

from .geometry import ring_signed_area
from .options import VisualizationSettings
from .png import encode_png_rgb
from .polygons import ImagePolygons, PolygonObject
from .problems import Problem

STAGE = "visualize"

_SHIFT = 4
_ONE = 1 << _SHIFT
_COORD_LIMIT = float(1 << 22)  # keeps fixed-point coordinates far inside int32
_MIN_NUMBERED_AREA = 1.0  # objects smaller than one pixel get no number
_POLE_TIE = 1e-6  # relative slack that makes float32 distances of symmetric pixels tie
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_DISC_FILL = (255, 255, 255)
_DISC_BORDER = (32, 32, 32)
_TEXT_COLOUR = (0, 0, 0)
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


def _fixed_point(points: np.ndarray, offset_x: int = 0, offset_y: int = 0) -> np.ndarray:
    """Float pixel coordinates -> ``(n, 1, 2)`` int32 fixed point for OpenCV's ``shift``."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) - (offset_x, offset_y)
    pts = np.clip(pts, -_COORD_LIMIT, _COORD_LIMIT)
    return np.rint(pts * _ONE).astype(np.int32).reshape(-1, 1, 2)


def object_mask(obj: PolygonObject, width: int, height: int) -> tuple[np.ndarray, int, int] | None:
    """The object's fill mask (outer minus holes) cut to its bounding box inside the image.

    Returns ``(mask, x0, y0)`` with a uint8 0/1 mask whose top-left pixel is image pixel ``(x0, y0)``,
    or None when the object covers no pixel of the image.
    """
    outer = obj.outer
    if len(outer) < 3 or width <= 0 or height <= 0:
        return None
    min_xy = np.floor(outer.min(axis=0))
    max_xy = np.ceil(outer.max(axis=0))
    x0 = int(max(min_xy[0], 0))
    y0 = int(max(min_xy[1], 0))
    x1 = int(min(max_xy[0] + 1, width))
    y1 = int(min(max_xy[1] + 1, height))
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    cv2.fillPoly(mask, [_fixed_point(outer, x0, y0)], 1, cv2.LINE_8, _SHIFT)
    holes = [_fixed_point(hole, x0, y0) for hole in obj.holes if len(hole) >= 3]
    if holes:
        for hole in holes:
            cv2.fillPoly(mask, [hole], 0, cv2.LINE_8, _SHIFT)
    if not mask.any():
        return None
    return mask, x0, y0


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
    return int(cols[nearest]), int(rows[nearest])


def _text_metrics(text: str, font_size: int) -> tuple[float, int, int, int]:
    """``(scale, thickness, text_width, text_height)`` for a label drawn at ``font_size`` pixels."""
    thickness = max(1, round(font_size / 16))
    scale = cv2.getFontScaleFromHeight(_FONT, int(font_size), thickness)
    (text_width, text_height), _baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    return scale, thickness, text_width, text_height


def disc_radius(number: int, font_size: int) -> int:
    """Radius in pixels of the white disc that holds ``number``."""
    _scale, thickness, text_width, text_height = _text_metrics(str(number), font_size)
    return math.ceil(math.hypot(text_width, text_height) / 2) + thickness + 2


def _clamp_centre(centre: int, size: int) -> int:
    """Keep a disc centre on the image; the disc itself may be cut by the border rather than leave its
    object (a corner object keeps its number on it)."""
    return min(max(centre, 0), size - 1)


def _disc_from_mask(
    obj: PolygonObject, mask: np.ndarray, x0: int, y0: int, width: int, height: int, font_size: int
) -> tuple[int, int, int] | None:
    pole = pole_of_inaccessibility(mask, ring_shaped=any(len(hole) >= 3 for hole in obj.holes))
    if pole is None:
        return None
    radius = disc_radius(obj.number, font_size)
    centre_x = _clamp_centre(pole[0] + x0, width)
    centre_y = _clamp_centre(pole[1] + y0, height)
    return centre_x, centre_y, radius


def number_disc(
    obj: PolygonObject, width: int, height: int, settings: VisualizationSettings
) -> tuple[int, int, int] | None:
    """``(centre_x, centre_y, radius)`` of the object's number disc, or None when it gets no number."""
    if abs(ring_signed_area(obj.outer)) < _MIN_NUMBERED_AREA:
        return None
    found = object_mask(obj, width, height)
    if found is None:
        return None
    mask, x0, y0 = found
    return _disc_from_mask(obj, mask, x0, y0, width, height, settings.font_size)


# --------------------------------------------------------------------------- drawing


def _blend_mask(image: np.ndarray, mask: np.ndarray, x0: int, y0: int, colour: np.ndarray, opacity: float) -> None:
    """Alpha-blend ``colour`` into ``image`` where ``mask`` is set (in place, bbox region only)."""
    region = image[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
    selected = mask.astype(bool)
    pixels = region[selected].astype(np.float32)
    blended = pixels * np.float32(1.0 - opacity) + colour * np.float32(opacity)
    region[selected] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _draw_number(image: np.ndarray, number: int, disc: tuple[int, int, int], font_size: int) -> None:
    centre_x, centre_y, radius = disc
    text = str(number)
    scale, thickness, text_width, text_height = _text_metrics(text, font_size)
    cv2.circle(image, (centre_x, centre_y), radius, _DISC_FILL, -1, cv2.LINE_AA)
    cv2.circle(image, (centre_x, centre_y), radius, _DISC_BORDER, max(1, thickness), cv2.LINE_AA)
    origin = (centre_x - text_width // 2, centre_y + text_height // 2)
    cv2.putText(image, text, origin, _FONT, scale, _TEXT_COLOUR, thickness, cv2.LINE_AA)


def render_overlay(rgb: np.ndarray, parsed: ImagePolygons, settings: VisualizationSettings) -> np.ndarray:
    """Draw the objects, holes, polylines and numbers of ``parsed`` on a copy of ``rgb`` (RGB uint8)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    image = np.ascontiguousarray(rgb).copy()
    height, width = image.shape[:2]
    external = VisualizationSettings.rgb(settings.external_color)
    internal = VisualizationSettings.rgb(settings.internal_color)
    fill_colour = np.asarray(external, dtype=np.float32)
    opacity = float(settings.fill_opacity)
    stroke = int(settings.stroke_width)

    discs: list[tuple[int, tuple[int, int, int]]] = []
    for obj in parsed.objects:
        found = object_mask(obj, width, height)
        if found is None:
            continue
        mask, x0, y0 = found
        if opacity > 0:
            _blend_mask(image, mask, x0, y0, fill_colour, opacity)
        if settings.show_numbers and abs(ring_signed_area(obj.outer)) >= _MIN_NUMBERED_AREA:
            disc = _disc_from_mask(obj, mask, x0, y0, width, height, settings.font_size)
            if disc is not None:
                discs.append((obj.number, disc))

    outers = [_fixed_point(obj.outer) for obj in parsed.objects if len(obj.outer) >= 2]
    if outers:
        cv2.polylines(image, outers, True, external, stroke, cv2.LINE_AA, _SHIFT)
    holes = [_fixed_point(hole) for obj in parsed.objects for hole in obj.holes if len(hole) >= 2]
    holes += [_fixed_point(hole) for hole in parsed.orphan_holes if len(hole) >= 2]
    if holes:
        cv2.polylines(image, holes, True, internal, stroke, cv2.LINE_AA, _SHIFT)
    lines = [_fixed_point(line.points) for line in parsed.polylines if len(line.points) >= 2]
    if lines:
        cv2.polylines(image, lines, False, external, stroke, cv2.LINE_AA, _SHIFT)

    for number, disc in discs:
        _draw_number(image, number, disc, settings.font_size)
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
    data: bytes, parsed: ImagePolygons, settings: VisualizationSettings
) -> tuple[bytes | None, tuple[int, int] | None, list[Problem]]:
    """Decode, draw and encode one image; never raises for bad data.

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
        encoded = encode_image(render_overlay(rgb, parsed, settings), settings.format)
    except Exception as exc:
        message = f"visualization failed: {type(exc).__name__}: {exc}"
        return None, size, [Problem("render_failed", STAGE, message[:300])]
    return encoded, size, []
