"""Wound projects: wound area and closure over time, a chart of it, and its XLSX sheet.

The per-image values come from :func:`wound_image_values` (exact shoelace areas of the parsed
polygons, in pixels); :func:`wound_time_series` turns the images' values, in export order, into the
rows of the ``wound_time_series`` table; :func:`wound_chart_png` draws
``wound_healing/wound_area_chart.png`` and :func:`write_wound_sheet` writes the "WoundTimeSeries"
sheet of ``metrics.xlsx`` with the chart embedded. Every output is a pure function of its inputs: the
chart is drawn with Pillow's built-in Aileron font (no system fonts) and encoded by
:func:`ray_export.png.encode_png_rgb` (no time or text chunks).
"""

from __future__ import annotations

import functools
import io
import math
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..geometry import region_area
from ..metrics import header_name
from ..png import encode_png_rgb
from ..polygons import ImagePolygons
from ..problems import Problem
from .base import ProjectType, TypeImage, TypeTable

TABLE = "wound_time_series"
SHEET = "WoundTimeSeries"
CHART_MEMBER = "wound_healing/wound_area_chart.png"
CHART_WIDTH = 1200
CHART_HEIGHT = 600
#: Most image names written under the x axis; with more images every k-th image is labelled.
MAX_X_LABELS = 12

#: The table's columns in order, with the kind of value each holds: ``area`` (px², or µm² once the caller
#: multiplies by the squared scale), ``length``, ``count``, ``percent`` (unitless), ``text``, ``int``.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("order", "int"),
    ("image_id", "text"),
    ("image_name", "text"),
    ("created_at", "text"),
    ("wound_area", "area"),
    ("wound_area_pct", "percent"),
    ("closure_pct", "percent"),
    ("polygons", "count"),
    ("note", "text"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)

NOTE_UNKNOWN_SIZE = "unknown image size: wound_area_pct undefined"
NOTE_UNREADABLE = "unreadable polygons: wound area unknown"
NOTE_AREA_UNKNOWN = "wound area unknown"
NOTE_CLOSURE_ZERO = "closure_pct undefined: the first known wound area is 0"
NOTE_CREATED_UNREADABLE = "created_at unreadable"
#: Problem codes of :func:`ray_export.polygons.parse_polygons` meaning the stored polygons could not be read.
UNREADABLE_CODES = frozenset({"polygons_invalid_json", "polygons_unexpected_shape"})

_CREATED_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


# --------------------------------------------------------------------------------------------------
# Values


def _join_notes(notes: Sequence[str | None]) -> str | None:
    kept = [n for n in notes if n]
    return "; ".join(kept) if kept else None


def _finite(value: Any) -> float | None:
    """A finite float, or ``None``."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def wound_image_values(polygons: ImagePolygons, width: int | None, height: int | None) -> dict[str, Any]:
    """One image's wound values, in pixels.

    ``wound_area`` = Σ over external polygons of (|shoelace(outer)| − Σ |shoelace(hole)|) (objects cut by
    the border included, orphan holes and polylines left out); ``wound_area_pct`` = wound_area / (W·H) ×
    100 (``None`` when the size is unknown, i.e. not positive); ``polygons`` = number of externals;
    ``note`` says why a value is missing. Unreadable polygon JSON gives no area and no count.
    """
    notes: list[str] = []
    if any(p.code in UNREADABLE_CODES for p in polygons.problems):
        area: float | None = None
        count: int | None = None
        notes.append(NOTE_UNREADABLE)
    else:
        area = math.fsum(region_area(obj.outer, obj.holes) for obj in polygons.objects)
        count = len(polygons.objects)
    known_size = width is not None and height is not None and width > 0 and height > 0
    if not known_size:
        notes.append(NOTE_UNKNOWN_SIZE)
    pct = area / (float(width) * float(height)) * 100.0 if known_size and area is not None else None
    return {"wound_area": area, "wound_area_pct": pct, "polygons": count, "note": _join_notes(notes)}


def created_at_text(value: datetime | str | None) -> str | None:
    """A timestamp as UTC ISO text (``2024-01-02T03:04:05.000000Z``); naive times are taken as UTC.

    Raises ``ValueError`` for text that is not an ISO timestamp.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        value = datetime.fromisoformat(text)
    if not isinstance(value, datetime):
        raise ValueError(f"not a timestamp: {type(value).__name__}")
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return value.strftime(_CREATED_FORMAT)


def wound_time_series(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ``wound_time_series`` rows from per-image rows in export order.

    Each input row holds ``image_id``, ``image_name``, ``created_at`` (datetime or ISO text) and the values
    of :func:`wound_image_values`. ``closure_pct`` = (A₀ − Aₜ)/A₀ × 100 with A₀ the wound area of the first
    row whose area is known; ``None`` where Aₜ is unknown, before that row, or when A₀ = 0.
    """
    out: list[dict[str, Any]] = []
    reference: float | None = None
    for order, row in enumerate(rows):
        notes: list[str | None] = [row.get("note")]
        try:
            created = created_at_text(row.get("created_at"))
        except (ValueError, TypeError, OverflowError):
            created = None
            notes.append(NOTE_CREATED_UNREADABLE)
        area = _finite(row.get("wound_area"))
        if reference is None and area is not None:
            reference = area
        closure: float | None = None
        if area is None:
            if not row.get("note"):
                notes.append(NOTE_AREA_UNKNOWN)
        elif reference == 0.0:
            notes.append(NOTE_CLOSURE_ZERO)
        elif reference is not None:
            closure = (reference - area) / reference * 100.0
        count = row.get("polygons")
        image_id = row.get("image_id")
        out.append(
            {
                "order": order,
                "image_id": None if image_id is None else str(image_id),
                "image_name": str(row.get("image_name") or ""),
                "created_at": created,
                "wound_area": area,
                "wound_area_pct": _finite(row.get("wound_area_pct")),
                "closure_pct": closure,
                "polygons": None if count is None else int(count),
                "note": _join_notes(notes),
            }
        )
    return out


def column_units(scaled: bool) -> dict[str, str | None]:
    """Unit of every column (``None`` for unitless ones), for pixel or µm output."""
    length = "um" if scaled else "px"
    units: dict[str, str | None] = {}
    for name, kind in COLUMNS:
        units[name] = {"area": length + "^2", "length": length}.get(kind)
    return units


def header_names(scaled: bool) -> list[str]:
    """CSV/XLSX headers: ``wound_area (px^2)`` or ``wound_area (um^2)``, the other columns bare."""
    units = column_units(scaled)
    return [header_name(name, units[name]) for name in COLUMN_NAMES]


def scale_series(series: Sequence[Mapping[str, Any]], scale_um_per_px: float | None) -> list[dict[str, Any]]:
    """Copies of the rows with areas × scale² and lengths × scale (unchanged without a scale)."""
    if scale_um_per_px is None:
        return [dict(row) for row in series]
    s = float(scale_um_per_px)
    factors = {name: {"area": s * s, "length": s}.get(kind) for name, kind in COLUMNS}
    out: list[dict[str, Any]] = []
    for row in series:
        copy = dict(row)
        for name, factor in factors.items():
            if factor is not None and copy.get(name) is not None:
                copy[name] = float(copy[name]) * factor
        out.append(copy)
    return out


# --------------------------------------------------------------------------------------------------
# Chart

_BACKGROUND = (255, 255, 255)
_INK = (33, 37, 41)
_GRID = (226, 228, 232)
_MUTED = (108, 117, 125)
_LINE = (37, 99, 235)
_MARKER_EDGE = (23, 62, 148)

# Plot area (pixels of the 1200×600 chart).
_LEFT, _RIGHT, _TOP, _BOTTOM = 110, CHART_WIDTH - 40, 70, CHART_HEIGHT - 100
_X_PAD = 24  # space between the y axis and the first point
_TICK = 6
_ELLIPSIS = "…"
#: Stand-ins for common characters the built-in font lacks (others fall back to their unaccented letter or "?").
_SUBSTITUTES = {
    "\u2010": "-",
    "\u2011": "-",
    "\u2013": "-",
    "\u2014": "-",
    "\u2212": "-",
    "µ": "u",
    "²": "2",
    "³": "3",
    "×": "x",
}


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in Aileron Regular (embedded in Pillow, basic layout: no system font involved)."""
    return ImageFont.load_default(size=size)


@functools.lru_cache(maxsize=4096)
def _has_glyph(char: str) -> bool:
    """Whether the built-in font draws ``char`` with a glyph of its own (not the missing-glyph box)."""
    font = _font(12)
    mask, missing = font.getmask(char), font.getmask("\uffff")
    return not (mask.size == missing.size and bytes(mask) == bytes(missing))


def displayable(text: str) -> str:
    """``text`` with whitespace and control characters as spaces and characters the font lacks replaced."""
    out: list[str] = []
    for char in text:
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Cs"):
            out.append(" ")
        elif _has_glyph(char):
            out.append(char)
        elif char in _SUBSTITUTES:
            out.append(_SUBSTITUTES[char])
        else:
            base = "".join(
                c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c) and _has_glyph(c)
            )
            out.append(base or "?")
    return "".join(out)


def nice_axis(low: float, high: float, max_ticks: int = 8) -> tuple[float, float, float]:
    """``(bottom, top, step)``: a range covering [low, high] (and 0) with a step of 1, 2, 2.5 or 5 × 10ᵏ."""
    low, high = min(0.0, low), max(0.0, high)
    if high - low <= 0.0:
        return 0.0, 10.0, 1.0
    raw = (high - low) / max_ticks
    exponent = math.floor(math.log10(raw))
    step = 10.0 * 10.0**exponent
    for mantissa in (1.0, 2.0, 2.5, 5.0):
        if mantissa * 10.0**exponent >= raw:
            step = mantissa * 10.0**exponent
            break
    bottom = math.floor(low / step) * step
    top = math.ceil(high / step) * step
    if top < high:  # rounding of high / step
        top += step
    return bottom, top, step


def _tick_text(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if not math.isclose(round(step, decimals), step, rel_tol=1e-9):
        decimals += 1  # a step of 2.5 × 10ᵏ needs one more digit
    if decimals > 6:
        return f"{value:.3g}"
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0.0 else text


def shorten(text: str, font: Any, max_width: float) -> str:
    """``text`` (made :func:`displayable`), or its start and end joined by an ellipsis, as long as fits in
    ``max_width`` pixels."""
    text = displayable(text)
    if font.getlength(text) <= max_width:
        return text
    for keep in range(len(text) - 1, 0, -1):
        head = (keep + 1) // 2
        candidate = text[:head] + _ELLIPSIS + text[len(text) - (keep - head) :]
        if font.getlength(candidate) <= max_width:
            return candidate
    return _ELLIPSIS


def label_indices(count: int, max_labels: int = MAX_X_LABELS) -> list[int]:
    """The images whose names label the x axis: all, or every k-th from the first (at most ``max_labels``)."""
    if count <= max_labels:
        return list(range(count))
    step = math.ceil(count / max_labels)
    return list(range(0, count, step))


def _x_positions(count: int) -> list[int]:
    if count == 1:
        return [(_LEFT + _RIGHT) // 2]
    span = _RIGHT - _LEFT - 2 * _X_PAD
    return [round(_LEFT + _X_PAD + i * span / (count - 1)) for i in range(count)]


def _vertical_text(image: Image.Image, text: str, font: Any, center: tuple[int, int], fill: tuple) -> None:
    """Draw text turned 90° anticlockwise (read bottom to top), centred at ``center``."""
    left, top, right, bottom = font.getbbox(text)
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, font=font, fill=255)
    mask = mask.transpose(Image.Transpose.ROTATE_90)
    x = center[0] - mask.width // 2
    y = center[1] - mask.height // 2
    image.paste(Image.new("RGB", mask.size, fill), (x, y), mask)


def wound_chart_png(series: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """A 1200×600 PNG line chart of ``wound_area_pct`` against ``order``; missing values are gaps."""
    image = Image.new("RGB", (CHART_WIDTH, CHART_HEIGHT), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    title_font, axis_font, tick_font = _font(22), _font(15), _font(12)

    count = len(series)
    values = [_finite(row.get("wound_area_pct")) for row in series]
    names = [str(row.get("image_name") or "") for row in series]
    known = [v for v in values if v is not None]
    bottom, top, step = nice_axis(min(known, default=0.0), max(known, default=0.0))

    def y_of(value: float) -> int:
        return round(_BOTTOM - (value - bottom) / (top - bottom) * (_BOTTOM - _TOP))

    # Title, axis labels.
    draw.text(
        (CHART_WIDTH // 2, 22),
        shorten(title, title_font, CHART_WIDTH - 40),
        font=title_font,
        fill=_INK,
        anchor="mt",
    )
    draw.text(
        ((_LEFT + _RIGHT) // 2, CHART_HEIGHT - 12), "image (export order)", font=axis_font, fill=_INK, anchor="md"
    )
    _vertical_text(image, "wound area (% of image)", axis_font, (24, (_TOP + _BOTTOM) // 2), _INK)

    # Y grid, ticks and labels.
    ticks = round((top - bottom) / step)
    for i in range(ticks + 1):
        value = bottom + i * step
        y = y_of(value)
        if _TOP <= y < _BOTTOM:
            draw.line([(_LEFT + 1, y), (_RIGHT, y)], fill=_GRID, width=1)
        draw.line([(_LEFT - _TICK, y), (_LEFT, y)], fill=_INK, width=1)
        draw.text((_LEFT - _TICK - 4, y), _tick_text(value, step), font=tick_font, fill=_INK, anchor="rm")

    # Axes.
    draw.line([(_LEFT, _TOP), (_LEFT, _BOTTOM)], fill=_INK, width=2)
    draw.line([(_LEFT, _BOTTOM), (_RIGHT, _BOTTOM)], fill=_INK, width=2)

    xs = _x_positions(count)
    # X ticks and image names: one row when every name fits between its neighbours, else two staggered rows.
    shown = label_indices(count)
    if shown:
        spacing = (xs[shown[1]] - xs[shown[0]]) if len(shown) > 1 else (_RIGHT - _LEFT)
        one_row = all(tick_font.getlength(displayable(names[i])) <= spacing - 8 for i in shown)
        width = spacing - 8 if one_row else 2 * spacing - 8
        for k, i in enumerate(shown):
            x = xs[i]
            draw.line([(x, _BOTTOM), (x, _BOTTOM + _TICK)], fill=_INK, width=1)
            label = shorten(names[i], tick_font, max(width, 12))
            row = 0 if one_row else k % 2
            y = _BOTTOM + _TICK + 4 + row * 18
            half = tick_font.getlength(label) / 2
            x_text = min(max(x, math.ceil(half) + 2), CHART_WIDTH - math.ceil(half) - 2)
            draw.text((x_text, y), label, font=tick_font, fill=_INK, anchor="ma")
    else:
        draw.text(
            ((_LEFT + _RIGHT) // 2, (_TOP + _BOTTOM) // 2), "no wound images", font=axis_font, fill=_MUTED, anchor="mm"
        )

    # The line (broken at missing values), then one marker per image with a value.
    points = [None if v is None else (xs[i], y_of(v)) for i, v in enumerate(values)]
    run: list[tuple[int, int]] = []
    for point in [*points, None]:
        if point is not None:
            run.append(point)
            continue
        if len(run) > 1:
            draw.line(run, fill=_LINE, width=3, joint="curve")
        run = []
    radius = 5 if count <= 50 else 4 if count <= 100 else 3
    for point in points:
        if point is not None:
            x, y = point
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=_LINE, outline=_MARKER_EDGE)

    return encode_png_rgb(np.asarray(image, dtype=np.uint8))


# --------------------------------------------------------------------------------------------------
# XLSX


def insert_chart_image(worksheet: Any, png: bytes, cell: str, scale: float = 1.0) -> None:
    """Embed the chart PNG in an xlsxwriter worksheet with its top-left corner at ``cell`` (e.g. ``"K2"``)."""
    worksheet.insert_image(
        cell,
        CHART_MEMBER.rsplit("/", 1)[-1],
        {
            "image_data": io.BytesIO(png),
            "x_scale": scale,
            "y_scale": scale,
            "description": "Wound area (% of image) per image, in export order",
            "object_position": 3,  # neither moved nor sized with cells
        },
    )


# --------------------------------------------------------------------------------------------------
# Metrics guide

FORMULAS = """## Wound healing (`wound_time_series`, sheet "WoundTimeSeries")

One row per image whose segmentation was made by the `wound` model, in export order. Every value is
computed in pixels from the stored polygon vertices (exact shoelace areas, no pixel mask); with a scale,
`wound_area` is then multiplied by the squared scale. Percentages are ratios of pixel areas and carry no
unit.

| column | formula |
|---|---|
| `order` | position of the image in the export, 0-based |
| `image_id`, `image_name` | the image's id and its file name in the ZIP |
| `created_at` | the image's creation time in UTC, `YYYY-MM-DDTHH:MM:SS.ffffffZ` |
| `wound_area` | `A_t = Σ_externals (abs(S(outer)) − Σ_holes abs(S(hole)))` |
| `wound_area_pct` | `A_t[px²] / (W·H) × 100`, W × H the image size in pixels |
| `closure_pct` | `(A_0 − A_t) / A_0 × 100` |
| `polygons` | number of external polygons |
| `note` | why a value is missing (empty when none is) |

- `S(R)` is the shoelace signed area of ring R (see the geometry conventions above). Every external
  polygon counts, also one cut by the image border; holes subtract from the polygon that owns them;
  orphan holes and polylines are left out; overlapping polygons are counted twice.
- A_0 is the wound area of the first row (in export order) whose area is known: `closure_pct` is 0 for
  that row, 100 for a closed wound and negative when the wound grew.
- A time stored without a zone is taken as UTC.

Undefined values (empty in CSV/XLSX, null in JSON/Parquet, explained in `note`):
- `wound_area`, `polygons`, `wound_area_pct` and `closure_pct`: the polygon JSON could not be read;
- `wound_area_pct`: the image size is unknown;
- `closure_pct`: the row's area is unknown, it comes before the first row with a known area, or A_0 = 0
  (no wound in the reference image);
- `created_at`: the stored time is missing or unreadable.

### Chart (`wound_healing/wound_area_chart.png`)

A line chart (1200 × 600 pixels) of `wound_area_pct` (y axis, 0 to the maximum rounded up to a step of
1, 2, 2.5 or 5 × 10^k) against `order` (x axis, images evenly spaced in export order). Each image with a
value has a marker; the line is broken where a value is missing. The x axis is labelled with image
names: all of them up to 12 images, otherwise every k-th image from the first (at most 12 labels); long
names are shortened with an ellipsis in the middle. The same chart is embedded in the "WoundTimeSeries"
sheet of `metrics.xlsx` when XLSX is chosen.
"""


# --------------------------------------------------------------------------------------------------
# The project type

#: Problem codes found here -> one-line meaning.
PROBLEM_CODES: dict[str, str] = {
    "wound_size_unknown": "the size of an image of the wound series is unknown, so its wound_area_pct (and its "
    "point on the chart) is empty",
}

#: The segmentation model whose images form the time series.
WOUND_MODEL = "wound"


def _image_rows(image: TypeImage) -> tuple[list[dict[str, Any]], list]:
    """One row for an image segmented by the wound model (none for other images)."""
    if image.fields.get("seg_model") != WOUND_MODEL:
        return [], []
    values = wound_image_values(image.parsed, image.width, image.height)
    problems = []
    if values["wound_area_pct"] is None and values["wound_area"] is not None:
        problems.append(Problem("wound_size_unknown", "metrics", "the image size is unknown: wound_area_pct is empty"))
    return [{"created_at": image.fields.get("created_at"), **values}], problems


def _chart(series: list[dict[str, Any]]) -> bytes:
    return wound_chart_png(series, "Wound area over time")


TYPE = ProjectType(
    name="wound",
    tables=(
        TypeTable(
            name=TABLE,
            sheet=SHEET,
            columns=COLUMNS,
            rows=_image_rows,
            description="wound area, % of the image and closure per image of the wound model, in export order",
            series=wound_time_series,
            chart=_chart,
            chart_member=CHART_MEMBER,
        ),
    ),
    read_columns=("seg_model", "created_at"),
    formulas=FORMULAS,
    problem_codes=PROBLEM_CODES,
    readme="Wound projects add `wound_time_series`: for every image segmented by the `wound` model, in export "
    "order, the wound area, its share of the image and the closure against the first image, in every chosen "
    f'metrics format and as the XLSX sheet "{SHEET}", and `{CHART_MEMBER}`, a chart of the wound area (% of '
    "the image) over the series, also embedded in that sheet.",
)
