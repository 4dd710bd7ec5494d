"""Microtubule projects: filaments traced as open polylines in the frames of a video.

Per video (a group of frames) this module makes:

* :func:`cvat_xml` — ``annotations/cvat/<video>.xml``, CVAT for images 1.1;
* :func:`imagej_roiset` — ``annotations/imagej/<video>_RoiSet.zip``, one ImageJ ``.roi`` per polyline
  plus one per background band (the encoder follows ImageJ's published ROI file layout);
* :func:`frame_metric_rows` / :func:`polyline_intensities` — the rows of table ``microtubule_metrics``,
  intensities measured on the original pixels along each polyline, and :func:`channel_totals` — the rows
  of table ``microtubule_channel_totals``.

Polylines are :class:`~ray_export.polygons.Polyline` objects (points, ``mt_type``, ``track_id``,
``instance_id``, ``name``, ``number``). Coordinates are image pixels as stored (integer coordinates are
pixel centres). Every output is a pure, deterministic function of its arguments. Formulas and undefined
cases: :data:`FORMULAS`.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import re
import struct
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry import ring_length
from ..naming import BIDI_CONTROLS, sanitize_member_name, stem_key
from ..polygons import Polyline, id_text, json_safe
from ..problems import Problem
from .base import ProjectType, TypeImage, TypeTable

STAGE = "metrics"
METRICS_TABLE = "microtubule_metrics"
METRICS_SHEET = "Microtubule Metrics"
TOTALS_TABLE = "microtubule_channel_totals"
TOTALS_SHEET = "Microtubule Channel Totals"

#: Label of a polyline whose ``mtType`` names no entry of the project's ``mtTypeLabels`` (or has none).
DEFAULT_LABEL = "microtubule"
#: Default band width (``--mt-thickness``), pixels.
DEFAULT_THICKNESS = 5.0
#: Default background margin (``--mt-margin``), in band widths on each side.
DEFAULT_MARGIN = 2.0
#: Colours of labels without a valid ``#rrggbb`` colour, by the label's position among the labels used.
PALETTE: tuple[str, ...] = (
    "#22c55e",
    "#f59e0b",
    "#06b6d4",
    "#a855f7",
    "#ef4444",
    "#3b82f6",
    "#ec4899",
    "#84cc16",
)
#: Alpha of the background-band ROIs' stroke colour (the signal ROIs are opaque).
BACKGROUND_ALPHA = 0x4D

#: Columns of ``microtubule_metrics`` in order, with their kind: "length" (× scale), "count", "int",
#: "intensity" (grey values of the original, unscaled) or "text".
METRICS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("frame_index", "int"),
    ("image_name", "text"),
    ("label", "text"),
    ("mt_type", "text"),
    ("instance_id", "text"),
    ("track_id", "text"),
    ("channel", "int"),
    ("length", "length"),
    ("pixel_count", "count"),
    ("sum_intensity", "intensity"),
    ("mean_intensity", "intensity"),
    ("median_intensity", "intensity"),
    ("std_intensity", "intensity"),
    ("median_background", "intensity"),
    ("mean_background", "intensity"),
    ("signal_minus_background", "intensity"),
)
#: Columns of ``microtubule_channel_totals`` in order, with their kind (as :data:`METRICS_COLUMNS`).
TOTALS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("video", "text"),
    ("channel", "int"),
    ("frames", "count"),
    ("polylines", "count"),
    ("total_length", "length"),
    ("mean_length", "length"),
    ("pixel_count", "count"),
    ("sum_intensity", "intensity"),
    ("mean_intensity", "intensity"),
    ("mean_of_means", "intensity"),
    ("mean_signal_minus_background", "intensity"),
)
#: Both tables' columns, by table name.
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {METRICS_TABLE: METRICS_COLUMNS, TOTALS_TABLE: TOTALS_COLUMNS}

#: Problem codes found here -> one-line meaning (for the documented list of problem codes).
PROBLEM_CODES: dict[str, str] = {
    "mt_type_unknown": "a polyline's mtType names no entry of the project's mtTypeLabels; it is labelled `microtubule`",
    "mt_band_empty": "no pixel centre of the frame lies within the band of a polyline; its intensities are empty",
    "mt_background_empty": "no pixel centre of the frame lies in a polyline's background band; its background "
    "values and signal_minus_background are empty",
    "mt_pixels_unavailable": "the frame's original pixels could not be read; its polylines have one row each "
    "without channel or intensities",
    "mt_frame_without_video": "an image with filaments has no parentVideoId; it is exported in the group `video` "
    "(frame index: its frameIndex, else its export position)",
}

FORMULAS = """\
## Microtubule metrics (`microtubule_metrics`, `microtubule_channel_totals`)

Frames are grouped into videos (`parentVideoId`, ordered by `frameIndex`). Each polyline
(`geometry: "polyline"`) of a frame is one filament; `label` is `MT<n>`, n numbered 1, 2, … per video
in the order in which each `instanceId` first appears (frames by `frameIndex`, polylines in array
order); a polyline without `instanceId` gets a number of its own. `mt_type` is the name of the
polyline's `mtType` in the project's `mtTypeLabels` (matched on `id`, then on `name`), else
`microtubule`. `instance_id` and `track_id` are the polyline's `instanceId` and `trackId` as text.

**Geometry.** Coordinates are image pixels; integer coordinates are pixel centres, so pixel (column c,
row r) has its centre at (c, r). For a polyline P with points p₀ … p₍ₙ₋₁₎, d(q) is the exact Euclidean
distance from a point q to the nearest of its segments [pᵢ, pᵢ₊₁] (to p₀ when it has one point).
With band width t (`--mt-thickness`, default 5 px) and margin m (`--mt-margin`, default 2):

- signal band S = pixels of the frame whose centre has d ≤ t/2 (a band of width t along the polyline,
  with round ends);
- background band B = pixels whose centre has t/2 < d ≤ t/2 · (1 + 2m) (a band of width t·(1+2m),
  minus S: m band widths on each side of it).

Only pixels inside the frame count. The background of one polyline is not cleared of other filaments
(the median keeps it robust to a neighbour crossing it).

**Values.** Intensities are the original pixel values of one channel (8- and 16-bit integers as
stored, no scaling; non-finite values of floating-point images are left out). One row per (frame,
polyline, channel); `channel` is the 0-based index of the channel in the original (0 for grayscale).
With S's values v₁ … v_N:

| column | formula | unit |
|---|---|---|
| `length` | open polyline length Σ \\|pᵢ₊₁ − pᵢ\\| | px, or um with a scale |
| `pixel_count` | N | count |
| `sum_intensity` | Σ vᵢ | grey value |
| `mean_intensity` | Σ vᵢ / N | grey value |
| `median_intensity` | median of the vᵢ (mean of the two middle values when N is even) | grey value |
| `std_intensity` | sample standard deviation √(Σ (vᵢ − mean)² / (N − 1)) (as ImageJ's StdDev) | grey value |
| `median_background` | median of the values in B | grey value |
| `mean_background` | mean of the values in B | grey value |
| `signal_minus_background` | `mean_intensity − median_background` | grey value |

Undefined values are empty (CSV/XLSX) or null (JSON/Parquet): with N = 0 (the band lies outside the
frame, or is thinner than the pixel grid around the polyline) `mean_intensity`, `median_intensity`
and `std_intensity` (and `pixel_count` = 0, `sum_intensity` = 0); `std_intensity` also with N = 1;
the background values when B holds no pixel; `signal_minus_background` when either term is undefined.
A frame whose original cannot be read gets one row per polyline with `length` only.

**Totals.** `microtubule_channel_totals`: one row per (video, channel) over that video's rows of the
channel: `frames` (distinct frames with a row), `polylines` (rows), `total_length` (Σ length),
`mean_length` (total_length / polylines), `pixel_count` (Σ N: a pixel in the bands of two polylines
counts twice), `sum_intensity` (Σ sum_intensity), `mean_intensity` (sum_intensity / pixel_count:
the pixel-weighted mean; empty when pixel_count = 0), `mean_of_means` (mean of the rows' defined
`mean_intensity`), `mean_signal_minus_background` (mean of the rows' defined
`signal_minus_background`). Sums are exactly rounded (`math.fsum`).

**CVAT and ImageJ files.** `annotations/cvat/<video>.xml` holds every polyline with its label and its
`track_id` attribute; image `name` is `frame_<frameIndex, 4 digits>`. `annotations/imagej/<video>_RoiSet.zip`
holds one polyline ROI per polyline (float coordinates as in the JSON export, stored as 32-bit floats;
position = frameIndex + 1; stroke width t; the label's colour; name `<mt_type>_<n>` with n of `MT<n>`,
or the polyline's `name`) and one `<name>_bg` ROI for its background band: the same polyline with
stroke width t·(1 + 2m) and a translucent colour. That ROI covers S as well; ImageJ measures the
background band alone after Edit ▸ Selection ▸ Line to Area on both ROIs and XOR. ImageJ places integer
coordinates on pixel corners, so its overlay sits half a pixel up and left of the pixels measured here.
"""


@dataclass
class FrameInput:
    """One frame of a video: its ``frameIndex``, size (0 when unknown) and polylines in array order."""

    frame_index: int
    width: int
    height: int
    polylines: Sequence[Polyline] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Labels, numbers and text


_COLOUR = re.compile(r"#([0-9a-fA-F]{6}|[0-9a-fA-F]{3})")


def _colour(value: Any) -> str | None:
    """``#rrggbb`` (lower case) from ``#rrggbb`` or ``#rgb`` text, else None."""
    if not isinstance(value, str) or not _COLOUR.fullmatch(value.strip()):
        return None
    digits = value.strip()[1:].lower()
    if len(digits) == 3:
        digits = "".join(ch * 2 for ch in digits)
    return "#" + digits


@dataclass(frozen=True)
class _TypeLabel:
    name: str
    colour: str | None


def _type_labels(labels: Any) -> list[tuple[str | None, _TypeLabel]]:
    """``(id as text, label)`` of each usable entry of ``mtTypeLabels`` (entries without a name are skipped)."""
    if not isinstance(labels, (list, tuple)):
        return []
    out: list[tuple[str | None, _TypeLabel]] = []
    for entry in labels:
        if not isinstance(entry, Mapping):
            continue
        name = id_text(entry.get("name"))
        if name is None:
            continue
        out.append((id_text(entry.get("id")), _TypeLabel(name.strip(), _colour(entry.get("color")))))
    return out


def _resolve(mt_type: Any, table: list[tuple[str | None, _TypeLabel]]) -> _TypeLabel | None:
    key = id_text(mt_type)
    if key is None:
        return None
    for label_id, label in table:
        if label_id is not None and label_id == key:
            return label
    for _, label in table:
        if label.name == key.strip():
            return label
    return None


def type_label(mt_type: Any, labels: Any) -> str:
    """The name of ``mt_type`` in ``labels`` (the project's ``mtTypeLabels``: ``[{id, name, color}]``),
    matched on ``id`` (as text: ``1`` and ``"1"`` match) and then on ``name``; else :data:`DEFAULT_LABEL`."""
    found = _resolve(mt_type, _type_labels(labels))
    return found.name if found is not None else DEFAULT_LABEL


def _sorted_frames(frames: Sequence[FrameInput]) -> list[FrameInput]:
    """Frames by ``frame_index`` (stable for equal indices)."""
    return sorted(frames, key=lambda f: f.frame_index)


def label_colours(frames: Sequence[FrameInput], labels: Any) -> dict[str, str]:
    """Every label used by the frames' polylines -> ``#rrggbb``, in ``mtTypeLabels`` order with
    :data:`DEFAULT_LABEL` last (unless the project defines it). The colour is the first entry's valid
    colour of that name, else :data:`PALETTE` at the label's position in this mapping."""
    table = _type_labels(labels)
    used: set[str] = set()
    for frame in frames:
        for line in frame.polylines:
            found = _resolve(line.mt_type, table)
            used.add(found.name if found is not None else DEFAULT_LABEL)
    order: dict[str, str | None] = {}
    for _, label in table:
        if label.name in used and order.get(label.name) is None:
            order[label.name] = label.colour
    if DEFAULT_LABEL in used and DEFAULT_LABEL not in order:
        order[DEFAULT_LABEL] = None
    return {name: colour or PALETTE[i % len(PALETTE)] for i, (name, colour) in enumerate(order.items())}


def instance_numbers(frames: Sequence[FrameInput]) -> list[list[int]]:
    """The n of ``MT<n>`` for every polyline, aligned with ``frames`` and their polylines.

    n counts 1, 2, ... over the video in first-appearance order of ``instanceId`` (as text, so ``7`` and
    ``"7"`` are one instance), frames taken by ``frame_index`` and polylines in array order; a polyline
    without ``instanceId`` gets a number of its own.
    """
    numbers: list[list[int]] = [[0] * len(frame.polylines) for frame in frames]
    seen: dict[str, int] = {}
    count = 0
    order = sorted(range(len(frames)), key=lambda i: frames[i].frame_index)
    for i in order:
        for j, line in enumerate(frames[i].polylines):
            key = id_text(line.instance_id)
            if key is not None and key in seen:
                numbers[i][j] = seen[key]
                continue
            count += 1
            numbers[i][j] = count
            if key is not None:
                seen[key] = count
    return numbers


def frame_member(frame_index: int) -> str:
    """``frame_<NNNN>``: the frame's name in the CVAT file and the ROI entries (at least 4 digits)."""
    return f"frame_{frame_index:04d}"


def _number(x: float) -> str:
    """Shortest round-trip text of a float (``-0.0`` written as ``0.0``)."""
    return repr(float(x) + 0.0)


# --------------------------------------------------------------------------------------------------
# CVAT for images 1.1

_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    text = _XML_INVALID.sub("\ufffd", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _xml_attr(text: str) -> str:
    return _xml_text(text).replace('"', "&quot;").replace("\t", "&#9;").replace("\n", "&#10;")


def _cvat_points(points: np.ndarray) -> str:
    return ";".join(f"{_number(x)},{_number(y)}" for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2))


def cvat_xml(video_name: str, frames: Sequence[FrameInput], labels: Any) -> bytes:
    """CVAT for images 1.1 XML of one video's polylines (UTF-8 bytes).

    ``<meta><task>`` holds the task name (``video_name``), its size (the number of frames given) and every
    label used (:func:`label_colours`: name, colour, type ``polyline``, a text attribute ``track_id``).
    Then one ``<image id="<frame_index>" name="frame_<NNNN>" width height>`` per frame with a polyline, by
    ``frame_index``, each ``<polyline label source="manual" occluded="0" points="x,y;x,y" z_order="0">``
    with ``<attribute name="track_id">`` when the polyline has a ``trackId``. Coordinates are written as
    their shortest round-trip text, so they read back exactly.
    """
    table = _type_labels(labels)
    colours = label_colours(frames, labels)
    out: list[str] = [
        '<?xml version="1.0" encoding="utf-8"?>',
        "<annotations>",
        "  <version>1.1</version>",
        "  <meta>",
        "    <task>",
        f"      <name>{_xml_text(str(video_name))}</name>",
        f"      <size>{len(frames)}</size>",
        "      <mode>annotation</mode>",
        "      <labels>",
    ]
    for name, colour in colours.items():
        out += [
            "        <label>",
            f"          <name>{_xml_text(name)}</name>",
            f"          <color>{colour}</color>",
            "          <type>polyline</type>",
            "          <attributes>",
            "            <attribute>",
            "              <name>track_id</name>",
            "              <mutable>False</mutable>",
            "              <input_type>text</input_type>",
            "              <default_value></default_value>",
            "              <values></values>",
            "            </attribute>",
            "          </attributes>",
            "        </label>",
        ]
    out += ["      </labels>", "    </task>", "  </meta>"]
    for frame in _sorted_frames(frames):
        lines = [line for line in frame.polylines if len(line.points) > 0]
        if not lines:
            continue
        out.append(
            f'  <image id="{int(frame.frame_index)}" name="{frame_member(int(frame.frame_index))}" '
            f'width="{int(frame.width)}" height="{int(frame.height)}">'
        )
        for line in lines:
            found = _resolve(line.mt_type, table)
            label = found.name if found is not None else DEFAULT_LABEL
            out.append(
                f'    <polyline label="{_xml_attr(label)}" source="manual" occluded="0" '
                f'points="{_cvat_points(line.points)}" z_order="0">'
            )
            track = id_text(line.track_id)
            if track is not None:
                out.append(f'      <attribute name="track_id">{_xml_text(track)}</attribute>')
            out.append("    </polyline>")
        out.append("  </image>")
    out.append("</annotations>")
    return ("\n".join(out) + "\n").encode("utf-8")


# --------------------------------------------------------------------------------------------------
# ImageJ ROI files

#: ROI file header version written (ImageJ 1.52+ reads it; sub-pixel polylines need at least 222).
ROI_VERSION = 228
ROI_TYPE_POLYLINE = 5
ROI_SUB_PIXEL_RESOLUTION = 128
_HEADER_SIZE = 64
_HEADER2_SIZE = 64
_INT16_MIN, _INT16_MAX = -32768, 32767


def _int16(value: float) -> int:
    return int(min(max(value, _INT16_MIN), _INT16_MAX))


def _java_property(text: str) -> str:
    """``text`` escaped for a ``java.util.Properties`` value: ASCII only, ``\\uXXXX`` for the rest."""
    out: list[str] = []
    specials = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}
    for i, ch in enumerate(text):
        if ch in specials:
            out.append(specials[ch])
        elif i == 0 and ch == " ":
            out.append("\\ ")
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            units = ch.encode("utf-16-be")
            out += [f"\\u{units[k]:02x}{units[k + 1]:02x}" for k in range(0, len(units), 2)]
    return "".join(out)


def encode_polyline_roi(
    points: np.ndarray,
    name: str,
    position: int,
    stroke_width: float,
    stroke_argb: int,
    properties: Sequence[tuple[str, str]] = (),
) -> bytes:
    """One ImageJ ``.roi`` file (big-endian) of a polyline with sub-pixel coordinates.

    Header (64 bytes): ``Iout``, version :data:`ROI_VERSION`, type 5 (polyline), top/left/bottom/right of
    the integer bounding box, the number of points (0 here and the count as int32 at offset 18 from
    65,536 points on), stroke width (int16, truncated), stroke colour (ARGB), options
    ``SUB_PIXEL_RESOLUTION``, ``position`` (int32 at 56) and the offset of header 2. Then the integer x and
    y coordinates (int16, relative to left/top), the float x and y coordinates (float32, absolute), header 2
    (64 bytes: name offset and length, stroke width as float32 at 36, properties offset and length), the
    name and the properties (``key: value`` lines) as UTF-16BE.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    n = len(pts)
    if n == 0:
        raise ValueError("a polyline ROI needs at least one point")
    floor_x, floor_y = np.floor(pts[:, 0]), np.floor(pts[:, 1])
    left, top = _int16(floor_x.min()), _int16(floor_y.min())
    right, bottom = _int16(floor_x.max() + 1), _int16(floor_y.max() + 1)
    int_x = np.clip(floor_x - left, _INT16_MIN, _INT16_MAX).astype(">i2")
    int_y = np.clip(floor_y - top, _INT16_MIN, _INT16_MAX).astype(">i2")
    coordinates = (
        int_x.tobytes() + int_y.tobytes() + pts[:, 0].astype(">f4").tobytes() + pts[:, 1].astype(">f4").tobytes()
    )

    header2_offset = _HEADER_SIZE + len(coordinates)
    name_bytes = name.encode("utf-16-be")
    props_text = "".join(f"{key}: {_java_property(value)}\n" for key, value in properties)
    props_bytes = props_text.encode("utf-16-be")
    name_offset = header2_offset + _HEADER2_SIZE if name_bytes else 0
    props_offset = header2_offset + _HEADER2_SIZE + len(name_bytes) if props_bytes else 0

    header = bytearray(_HEADER_SIZE)
    count = n if n < 65536 else 0
    struct.pack_into(
        ">4shBBhhhhH", header, 0, b"Iout", ROI_VERSION, ROI_TYPE_POLYLINE, 0, top, left, bottom, right, count
    )
    if n >= 65536:
        struct.pack_into(">i", header, 18, n)
    struct.pack_into(">h", header, 34, min(int(stroke_width), _INT16_MAX))
    struct.pack_into(">I", header, 40, stroke_argb & 0xFFFFFFFF)
    struct.pack_into(">h", header, 50, ROI_SUB_PIXEL_RESOLUTION)
    struct.pack_into(">i", header, 56, position)
    struct.pack_into(">i", header, 60, header2_offset)

    header2 = bytearray(_HEADER2_SIZE)
    # c, z and t positions stay 0: the ROI belongs to stack slice ``position``
    struct.pack_into(">ii", header2, 16, name_offset, len(name_bytes) // 2)
    struct.pack_into(">f", header2, 36, stroke_width)
    struct.pack_into(">ii", header2, 40, props_offset, len(props_bytes) // 2)
    return bytes(header) + coordinates + bytes(header2) + name_bytes + props_bytes


def _argb(colour: str, alpha: int = 0xFF) -> int:
    return (alpha << 24) | int(colour[1:], 16)


def _roi_name(text: str) -> str | None:
    """A ROI name made safe for a ZIP entry (member-name rules, ``/`` and ``\\`` -> ``_``), or None when
    nothing is left."""
    text = text.replace("/", "_").replace("\\", "_")
    if not text.translate(dict.fromkeys(map(ord, BIDI_CONTROLS))).strip(". "):
        return None
    return sanitize_member_name(text)


def _unique(base: str, frame_part: str, used: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3``, ... : the first whose entry name is not used yet."""
    name = base
    suffix = 2
    while stem_key(f"{name}{frame_part}") in used:
        name = f"{base}_{suffix}"
        suffix += 1
    used.add(stem_key(f"{name}{frame_part}"))
    return name


@dataclass(frozen=True)
class RoiEntry:
    """One ROI of the RoiSet: its entry name, ROI name, band (``signal`` or ``background``) and bytes."""

    entry: str
    name: str
    band: str
    data: bytes


def roiset_entries(
    frames: Sequence[FrameInput],
    labels: Any,
    thickness: float,
    video_name: str,
    margin: float = DEFAULT_MARGIN,
) -> list[RoiEntry]:
    """The ROIs of :func:`imagej_roiset`, in order: per frame (by ``frame_index``), per polyline (array
    order), its signal ROI and then its ``_bg`` ROI."""
    _check_band(thickness, margin)
    table = _type_labels(labels)
    colours = label_colours(frames, labels)
    numbers = instance_numbers(frames)
    order = sorted(range(len(frames)), key=lambda i: frames[i].frame_index)
    used: set[str] = set()
    entries: list[RoiEntry] = []
    outer_width = thickness * (1 + 2 * margin)
    for i in order:
        frame = frames[i]
        frame_part = f"__{frame_member(int(frame.frame_index))}"
        for j, line in enumerate(frame.polylines):
            if len(line.points) == 0:
                continue
            found = _resolve(line.mt_type, table)
            label = found.name if found is not None else DEFAULT_LABEL
            own = id_text(line.name)
            base = (_roi_name(own) if own is not None else None) or _roi_name(f"{label}_{numbers[i][j]}")
            name = _unique(base or f"{DEFAULT_LABEL}_{numbers[i][j]}", frame_part, used)
            bg_name = _unique(f"{name}_bg", frame_part, used)
            given = [
                ("video", str(video_name)),
                ("frame_index", str(int(frame.frame_index))),
                ("label", f"MT{numbers[i][j]}"),
                ("mt_type", label),
                ("instance_id", id_text(line.instance_id)),
                ("track_id", id_text(line.track_id)),
            ]
            props = [(key, value) for key, value in given if value is not None]
            position = int(frame.frame_index) + 1
            colour = colours[label]
            signal = encode_polyline_roi(
                line.points, name, position, thickness, _argb(colour), [*props, ("band", "signal")]
            )
            background = encode_polyline_roi(
                line.points,
                bg_name,
                position,
                outer_width,
                _argb(colour, BACKGROUND_ALPHA),
                [*props, ("band", "background")],
            )
            entries.append(RoiEntry(f"{name}{frame_part}.roi", name, "signal", signal))
            entries.append(RoiEntry(f"{bg_name}{frame_part}.roi", bg_name, "background", background))
    return entries


def imagej_roiset(
    frames: Sequence[FrameInput],
    labels: Any,
    thickness: float,
    video_name: str,
    margin: float = DEFAULT_MARGIN,
) -> bytes:
    """``<video>_RoiSet.zip``: an ImageJ ROI set of one video (deterministic bytes).

    Per polyline one polyline ROI (sub-pixel float coordinates as given, position = ``frame_index`` + 1,
    stroke width ``thickness``, stroke colour = the label's colour of :func:`label_colours`; name the
    polyline's ``name``, else ``<type>_<n>`` with n of ``MT<n>``) and one ``<name>_bg`` ROI for its
    background band: the same polyline with stroke width ``thickness · (1 + 2·margin)`` and the colour at
    alpha :data:`BACKGROUND_ALPHA`. Entries are ``<name>__frame_<NNNN>.roi``; a name whose entry is
    already used (Unicode NFC, case-folded) takes ``_2``, ``_3``, ... Both ROIs carry ImageJ properties
    ``video``, ``frame_index``, ``label``, ``mt_type``, ``instance_id``, ``track_id`` and ``band``.
    Entries are deflated, dated 1980-01-01 00:00:00, mode 0644.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for entry in roiset_entries(frames, labels, thickness, video_name, margin):
            info = zipfile.ZipInfo(entry.entry, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            archive.writestr(info, entry.data)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# Intensities


def _check_band(thickness: float, margin: float) -> None:
    """Raise ValueError unless thickness > 0 and margin >= 0 are finite numbers."""
    for name, value, least in (("thickness", thickness, 0.0), ("margin", margin, 0.0)):
        number = None if isinstance(value, (bool, str)) else _as_float(value)
        if number is None or not math.isfinite(number) or number < least or (name == "thickness" and number == 0):
            relation = "> 0" if name == "thickness" else ">= 0"
            raise ValueError(f"{name} must be a finite number {relation}, not {value!r}")


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def segment_distance(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance from the points ``(px, py)`` (broadcast) to the segment [a, b]."""
    ax, ay = float(a[0]), float(a[1])
    dx, dy = float(b[0]) - ax, float(b[1]) - ay
    length2 = dx * dx + dy * dy
    if length2 == 0.0:
        return np.hypot(px - ax, py - ay)
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / length2, 0.0, 1.0)
    return np.hypot(px - (ax + t * dx), py - (ay + t * dy))


#: Longest piece of a segment whose window is measured at once, pixels (at least the outer band width).
_WINDOW_STEP = 32.0


def band_pixels(
    points: np.ndarray, height: int, width: int, inner: float, outer: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted flat indices (``row * width + column``) of the pixels whose centre lies within ``inner`` of
    the polyline, and of those with ``inner < d <= outer``.

    Each segment is cut into pieces of at most ``max(32, 2·outer)`` px; the pixels of each piece's window
    (its box grown by ``outer`` + 1) are measured against the whole segment, so the result is the exact
    distance test over the image, at a cost proportional to the band's area.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    empty = np.empty(0, dtype=np.int64)
    if len(pts) == 0 or height <= 0 or width <= 0:
        return empty, empty
    segments = [(pts[0], pts[0])] if len(pts) == 1 else list(itertools.pairwise(pts))
    step = max(_WINDOW_STEP, 2.0 * outer)
    grow = outer + 1.0
    near_parts: list[np.ndarray] = []
    inner_parts: list[np.ndarray] = []
    for a, b in segments:
        pieces = max(1, math.ceil(float(np.hypot(*(b - a))) / step))
        for k in range(pieces):
            p0 = a + (b - a) * (k / pieces)
            p1 = a + (b - a) * ((k + 1) / pieces)
            x0 = max(0, math.floor(min(p0[0], p1[0]) - grow))
            x1 = min(width - 1, math.ceil(max(p0[0], p1[0]) + grow))
            y0 = max(0, math.floor(min(p0[1], p1[1]) - grow))
            y1 = min(height - 1, math.ceil(max(p0[1], p1[1]) + grow))
            if x0 > x1 or y0 > y1:
                continue
            cols = np.arange(x0, x1 + 1, dtype=np.int64)
            rows = np.arange(y0, y1 + 1, dtype=np.int64)
            d = segment_distance(cols[None, :].astype(np.float64), rows[:, None].astype(np.float64), a, b)
            flat = rows[:, None] * width + cols[None, :]
            near = d <= outer
            if near.any():
                near_parts.append(flat[near])
                inner_parts.append(flat[d <= inner])
    if not near_parts:
        return empty, empty
    inside = np.unique(np.concatenate(inner_parts))
    near_all = np.unique(np.concatenate(near_parts))
    return inside, np.setdiff1d(near_all, inside, assume_unique=True)


def _values(flat: np.ndarray, index: np.ndarray, channel: int) -> np.ndarray:
    values = flat[index, channel].astype(np.float64)
    if flat.dtype.kind in "fc":
        values = values[np.isfinite(values)]
    return values


def polyline_intensities(pixels: np.ndarray, points: np.ndarray, thickness: float, margin: float) -> dict:
    """Length and per-channel band intensities of one polyline on the original pixels.

    ``pixels``: ``(H, W)`` grayscale or ``(H, W, C)`` multi-channel, any integer or float type (values
    used as stored). Returns ``{"length": L, "channels": [row, ...]}``, one row per channel with
    ``channel``, ``pixel_count``, ``sum_intensity``, ``mean_intensity``, ``median_intensity``,
    ``std_intensity`` (sample, ddof 1), ``median_background``, ``mean_background`` and
    ``signal_minus_background`` (None where undefined; bands and formulas: :data:`FORMULAS`).
    """
    _check_band(thickness, margin)
    array = np.asarray(pixels)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"pixels must be (H, W) or (H, W, C), not shape {np.shape(pixels)}")
    height, width, count = array.shape
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    inner = thickness / 2.0
    inside, background = band_pixels(pts, height, width, inner, inner * (1 + 2 * margin))
    flat = array.reshape(height * width, count)
    rows: list[dict[str, Any]] = []
    for channel in range(count):
        signal = _values(flat, inside, channel)
        back = _values(flat, background, channel)
        n = int(signal.size)
        total = float(np.sum(signal)) if n else 0.0
        mean = total / n if n else None
        median_bg = float(np.median(back)) if back.size else None
        rows.append(
            {
                "channel": channel,
                "pixel_count": n,
                "sum_intensity": total,
                "mean_intensity": mean,
                "median_intensity": float(np.median(signal)) if n else None,
                "std_intensity": float(np.std(signal, ddof=1)) if n >= 2 else None,
                "median_background": median_bg,
                "mean_background": float(np.sum(back)) / back.size if back.size else None,
                "signal_minus_background": mean - median_bg if mean is not None and median_bg is not None else None,
            }
        )
    return {"length": ring_length(pts, closed=False), "channels": rows}


def frame_metric_rows(
    frame: FrameInput,
    image_name: str,
    pixels: np.ndarray | None,
    labels: Any,
    numbers: Sequence[int],
    thickness: float = DEFAULT_THICKNESS,
    margin: float = DEFAULT_MARGIN,
    scale: float | None = None,
) -> tuple[list[dict[str, Any]], list[Problem]]:
    """The ``microtubule_metrics`` rows of one frame (:data:`METRICS_COLUMNS`) and the problems found.

    One row per (polyline, channel), polylines in array order; ``numbers`` are the polylines' n of
    ``MT<n>`` (:func:`instance_numbers`). ``length`` is in pixels, times ``scale`` (µm per pixel) when
    given. Without ``pixels`` (the original could not be read) each polyline gets one row with its
    length and no channel or intensities.
    """
    table = _type_labels(labels)
    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    if pixels is None and frame.polylines:
        problems.append(
            Problem(
                "mt_pixels_unavailable",
                STAGE,
                f"{len(frame.polylines)} polyline(s) have no intensities: the original pixels are not available",
            )
        )
    for line, n in zip(frame.polylines, numbers, strict=True):
        found = _resolve(line.mt_type, table)
        if found is None and id_text(line.mt_type) is not None:
            problems.append(
                Problem(
                    "mt_type_unknown",
                    STAGE,
                    f"polyline {line.number}: mtType {id_text(line.mt_type)!r} is not in mtTypeLabels; "
                    f"labelled {DEFAULT_LABEL!r}",
                )
            )
        base = {
            "frame_index": int(frame.frame_index),
            "image_name": image_name,
            "label": f"MT{n}",
            "mt_type": found.name if found is not None else DEFAULT_LABEL,
            "instance_id": id_text(line.instance_id),
            "track_id": id_text(line.track_id),
        }
        factor = 1.0 if scale is None else float(scale)
        if pixels is None:
            row = dict.fromkeys(name for name, _ in METRICS_COLUMNS)
            row.update(base, length=ring_length(np.asarray(line.points, dtype=np.float64), closed=False) * factor)
            rows.append(row)
            continue
        measured = polyline_intensities(pixels, line.points, thickness, margin)
        channels = measured["channels"]
        if any(c["pixel_count"] == 0 for c in channels):
            problems.append(
                Problem("mt_band_empty", STAGE, f"polyline {line.number} ({base['label']}): no pixel in its band")
            )
        elif any(c["median_background"] is None for c in channels):
            problems.append(
                Problem(
                    "mt_background_empty",
                    STAGE,
                    f"polyline {line.number} ({base['label']}): no pixel in its background band",
                )
            )
        for values in channels:
            row = dict(base)
            row["channel"] = values["channel"]
            row["length"] = measured["length"] * factor
            for name, _ in METRICS_COLUMNS[8:]:
                row[name] = values[name]
            rows.append(row)
    return rows, problems


def channel_totals(video: str, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ``microtubule_channel_totals`` rows (:data:`TOTALS_COLUMNS`) of one video's metric rows, one per
    channel in channel order; rows without a channel (pixels unavailable) are not counted."""
    by_channel: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("channel") is not None:
            by_channel.setdefault(int(row["channel"]), []).append(row)
    out: list[dict[str, Any]] = []
    for channel in sorted(by_channel):
        group = by_channel[channel]
        total_length = math.fsum(float(r["length"]) for r in group)
        pixel_count = sum(int(r["pixel_count"]) for r in group)
        sum_intensity = math.fsum(float(r["sum_intensity"]) for r in group)
        means = [float(r["mean_intensity"]) for r in group if r.get("mean_intensity") is not None]
        differences = [
            float(r["signal_minus_background"]) for r in group if r.get("signal_minus_background") is not None
        ]
        out.append(
            {
                "video": video,
                "channel": channel,
                "frames": len({r["frame_index"] for r in group}),
                "polylines": len(group),
                "total_length": total_length,
                "mean_length": total_length / len(group),
                "pixel_count": pixel_count,
                "sum_intensity": sum_intensity,
                "mean_intensity": sum_intensity / pixel_count if pixel_count else None,
                "mean_of_means": math.fsum(means) / len(means) if means else None,
                "mean_signal_minus_background": math.fsum(differences) / len(differences) if differences else None,
            }
        )
    return out


# --------------------------------------------------------------------------------------------------
# The project type

#: The group of frames without a video container.
UNGROUPED_VIDEO = "video"
CVAT_FOLDER = "annotations/cvat/"
IMAGEJ_FOLDER = "annotations/imagej/"
FRAMES_TABLE = "microtubule_frames"


def read_context(target: Any, project_id: str) -> dict[str, Any]:
    """What the outputs need to know about a microtubule project: its ``mtTypeLabels`` and the name of
    each video container (its sanitized, unique file stem; frames without a container form ``video``)."""
    from ..naming import assign_member_names
    from ..sources import mt_type_labels, video_containers

    containers = video_containers(target, project_id)
    stems = [member.stem for member in assign_member_names([UNGROUPED_VIDEO] + [name for _, name in containers])]
    text = mt_type_labels(target, project_id)
    try:
        labels = json.loads(text) if text else None
    except ValueError:
        labels = None
    videos = {cid: stem for (cid, _), stem in zip(containers, stems[1:], strict=True)}
    return {"mt_type_labels": labels, "videos": videos}


def _video(image: TypeImage) -> str:
    parent = image.fields.get("parent_video_id")
    return str(image.context.get("videos", {}).get(str(parent), UNGROUPED_VIDEO)) if parent else UNGROUPED_VIDEO


def _frame(image: TypeImage) -> FrameInput:
    index = image.fields.get("frame_index")
    frame_index = int(index) if index is not None else image.index - 1
    return FrameInput(frame_index, image.width, image.height, list(image.parsed.polylines))


def decode_pixels(data: bytes | None) -> np.ndarray | None:
    """The original's pixels as stored (16-bit kept); None when there are no bytes or they do not decode."""
    if not data:
        return None
    import cv2

    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        return None
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):  # OpenCV gives BGR(A): channels in the file's order
        pixels = pixels[..., [2, 1, 0, *([3] if pixels.shape[2] == 4 else [])]]
    return pixels


def _metric_rows(image: TypeImage) -> tuple[list[dict[str, Any]], list[Problem]]:
    frame = _frame(image)
    context = image.context
    rows, problems = frame_metric_rows(
        frame, image.file_name, decode_pixels(image.original), context.get("mt_type_labels"),
        [0] * len(frame.polylines), float(context.get("mt_thickness", DEFAULT_THICKNESS)),
        float(context.get("mt_margin", DEFAULT_MARGIN)),
    )  # fmt: skip
    video = _video(image)
    for row in rows:
        row["video"] = video
    if video == UNGROUPED_VIDEO and not image.fields.get("parent_video_id") and frame.polylines:
        problems.append(
            Problem("mt_frame_without_video", STAGE, f"the frame has no parentVideoId: it is in the group {video!r}")
        )
    return rows, problems


def _by_video(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Rows grouped by video (videos in order of first appearance), frames by ``frame_index``."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row["video"]), []).append(row)
    return {video: sorted(group, key=lambda r: int(r["frame_index"])) for video, group in groups.items()}


def label_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``microtubule_metrics`` rows of every frame, per video by ``frame_index``, each polyline labelled
    ``MT<n>`` with n in first-appearance order of its ``instanceId`` over the video (a polyline without one
    has a number of its own; all channel rows of a polyline share it)."""
    out: list[dict[str, Any]] = []
    for group in _by_video(rows).values():
        seen: dict[str, int] = {}
        count = current = 0
        for row in group:
            if row.get("channel") in (None, 0):  # the first row of a polyline
                key = row.get("instance_id")
                if key is not None and key in seen:
                    current = seen[key]
                else:
                    count += 1
                    current = count
                    if key is not None:
                        seen[key] = current
            out.append({**row, "label": f"MT{current}"})
    return out


def totals_rows(metric_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``microtubule_channel_totals`` rows: per video, per channel."""
    return [total for video, group in _by_video(metric_rows).items() for total in channel_totals(video, group)]


def _frame_record(image: TypeImage) -> tuple[list[dict[str, Any]], list[Problem]]:
    frame = _frame(image)
    lines = [
        {"number": line.number, "points": np.asarray(line.points, dtype=np.float64).tolist(),
         "instance_id": json_safe(line.instance_id), "track_id": json_safe(line.track_id),
         "mt_type": json_safe(line.mt_type), "name": json_safe(line.name)}
        for line in frame.polylines
    ]  # fmt: skip
    record = {"video": _video(image), "frame_index": frame.frame_index, "width": frame.width,
              "height": frame.height, "polylines": lines}  # fmt: skip
    return [record], []


def video_members(records: list[dict[str, Any]], context: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """Per video (in order of first appearance): its CVAT 1.1 XML and its ImageJ RoiSet."""
    labels = context.get("mt_type_labels")
    thickness = float(context.get("mt_thickness", DEFAULT_THICKNESS))
    margin = float(context.get("mt_margin", DEFAULT_MARGIN))
    members: list[tuple[str, bytes]] = []
    for video, group in _by_video(records).items():
        frames = [
            FrameInput(
                int(record["frame_index"]), int(record["width"] or 0), int(record["height"] or 0),
                [Polyline(number=int(line["number"]), points=np.asarray(line["points"], dtype=np.float64),
                          instance_id=line["instance_id"], track_id=line["track_id"], mt_type=line["mt_type"],
                          name=line["name"]) for line in record["polylines"]],
            )
            for record in group
        ]
        members.append((f"{CVAT_FOLDER}{video}.xml", cvat_xml(video, frames, labels)))
        members.append((f"{IMAGEJ_FOLDER}{video}_RoiSet.zip", imagej_roiset(frames, labels, thickness, video, margin)))
    return members


_METRIC_TABLE_COLUMNS = (("video", "text"), *(column for column in METRICS_COLUMNS if column[0] != "image_name"))

TYPE = ProjectType(
    name="microtubules",
    tables=(
        TypeTable(
            name=METRICS_TABLE,
            sheet=METRICS_SHEET,
            columns=_METRIC_TABLE_COLUMNS,
            rows=_metric_rows,
            series=label_rows,
            description="length and band intensities of every filament per frame and channel (MT<n> labels)",
        ),
        TypeTable(
            name=TOTALS_TABLE,
            sheet=TOTALS_SHEET,
            columns=TOTALS_COLUMNS,
            rows=lambda image: ([], []),
            series=totals_rows,
            derived_from=METRICS_TABLE,
            keys=False,
            description="per video and channel: frames, filaments, total length and intensities",
        ),
        TypeTable(
            name=FRAMES_TABLE,
            sheet="",
            columns=(("video", "text"), ("frame_index", "int"), ("width", "int"), ("height", "int"),
                     ("polylines", "json")),
            rows=_frame_record,
            hidden=True,
            members=video_members,
            member_folders=(
                (CVAT_FOLDER, "`<video>.xml`: every frame's filaments as CVAT for images 1.1 polylines (labels from "
                 "mtTypeLabels, a `track_id` attribute)"),
                (IMAGEJ_FOLDER, "`<video>_RoiSet.zip`: ImageJ ROI sets (one sub-pixel polyline ROI per filament and "
                 "frame, position = frame + 1, and its background band `<name>_bg`)"),
            ),
            description="the frames' filaments (for the CVAT and ImageJ files)",
        ),
    ),
    read_columns=("parent_video_id", "frame_index"),
    formulas=FORMULAS,
    problem_codes=PROBLEM_CODES,
    readme="Microtubule projects add, per video (the frames of one video container, by `frameIndex`), "
    f"`{CVAT_FOLDER}<video>.xml` (CVAT for images 1.1) and `{IMAGEJ_FOLDER}<video>_RoiSet.zip` (ImageJ "
    f"RoiSet), and the tables `{METRICS_TABLE}` (length and intensities measured on the original pixels, "
    f"16-bit kept, per filament, frame and channel) and `{TOTALS_TABLE}`, in every chosen metrics format and "
    f'as the XLSX sheets "{METRICS_SHEET}" and "{TOTALS_SHEET}". The per-object metrics table is left out.',
    object_metrics=False,
    polyline_label="MT",
    needs_pixels=True,
    read_context=read_context,
    options=("mt_thickness", "mt_margin"),
)
