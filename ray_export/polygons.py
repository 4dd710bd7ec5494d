"""Reading the stored polygon JSON (``segmentations.polygons``) into numbered objects.

The rules: non-finite points are dropped, closed rings need 3 points (after repeats are removed) and
polylines 2, elements with a missing or unknown ``type`` are dropped, holes belong to the external
named by a valid ``parent_id`` (among externals sharing that id: the smallest one containing the hole)
or else to the smallest external that contains all their vertices, and
the valid external closed polygons are numbered 1, 2, ... in array order. Every drop is a
:class:`~ray_export.problems.Problem`; nothing here raises on bad input.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .geometry import points_in_ring, ring_signed_area
from .problems import Problem

STAGE = "parse"


@dataclass
class PolygonObject:
    """One external closed polygon with the holes it owns."""

    number: int
    outer: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)
    confidence: float | None = None
    complete: bool = True
    element_id: Any = None
    part_class: Any = None
    instance_id: Any = None
    object_class: Any = None


@dataclass
class Polyline:
    """One open curve (``geometry: "polyline"``)."""

    number: int
    points: np.ndarray
    confidence: float | None = None
    element_id: Any = None
    part_class: Any = None
    instance_id: Any = None
    track_id: Any = None
    mt_type: Any = None
    name: Any = None


@dataclass
class ImagePolygons:
    """Everything read from one image's polygon JSON."""

    objects: list[PolygonObject] = field(default_factory=list)
    polylines: list[Polyline] = field(default_factory=list)
    orphan_holes: list[np.ndarray] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


#: Coordinates beyond this many pixels from the origin are treated like non-finite ones: no image is
#: that large, and such values would overflow areas and rasterisation.
MAX_COORDINATE = 1e9


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)
    except OverflowError:  # a JSON integer beyond the float range
        return None
    return f if math.isfinite(f) else None


def _coordinate(value: Any) -> float | None:
    f = _finite_number(value)
    return f if f is not None and abs(f) <= MAX_COORDINATE else None


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid_text(text: str) -> str:
    """``text`` with lone surrogates (``"\\udc80"`` in JSON: no Unicode character) replaced by U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


def json_safe(value: Any) -> Any:
    """A value copied from the polygon JSON: non-finite numbers (``NaN``, ``Infinity``) become None and
    lone surrogates in text become U+FFFD, so that every output can encode it as UTF-8."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _valid_text(value)
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {_valid_text(str(k)): json_safe(v) for k, v in value.items()}
    return value


def id_text(value: Any) -> str | None:
    """An id copied from the polygon JSON (``instanceId``, ``trackId``, ``mtType``) as text, None when
    missing or empty: numbers in decimal with integral floats as integers (``7``, ``7.0`` and ``"7"`` are
    one id), ``true``/``false``, other JSON values as compact JSON with sorted keys."""
    value = json_safe(value)
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _has_invalid_text(value: Any) -> bool:
    if isinstance(value, str):
        return _valid_text(value) is not value
    if isinstance(value, list):
        return any(_has_invalid_text(v) for v in value)
    if isinstance(value, dict):
        return any(_has_invalid_text(str(k)) or _has_invalid_text(v) for k, v in value.items())
    return False


_COPIED_KEYS = ("id", "partClass", "instanceId", "class")


def _copied_values(el: dict, where: str, problems: list[Problem]) -> dict[str, Any]:
    """The element's attributes that outputs copy, made JSON- and UTF-8-safe; a lone surrogate is reported."""
    values = {key: json_safe(el.get(key)) for key in _COPIED_KEYS}
    changed = [key for key in _COPIED_KEYS if _has_invalid_text(el.get(key))]
    if changed:
        names = ", ".join(changed)
        problems.append(
            Problem("text_invalid_unicode", STAGE, f"{where}: {names} held invalid Unicode, replaced by U+FFFD")
        )
    return values


def _read_points(raw: Any) -> tuple[np.ndarray, int]:
    """Points as an ``(n, 2)`` array plus the number of points dropped as non-finite/malformed."""
    if not isinstance(raw, list):
        return np.empty((0, 2)), 0 if raw is None else 1
    kept: list[tuple[float, float]] = []
    dropped = 0
    for p in raw:
        if isinstance(p, dict):
            x, y = _coordinate(p.get("x")), _coordinate(p.get("y"))
        elif isinstance(p, (list, tuple)) and len(p) >= 2:
            x, y = _coordinate(p[0]), _coordinate(p[1])
        else:
            x = y = None
        if x is None or y is None:
            dropped += 1
        else:
            kept.append((x, y))
    pts = np.asarray(kept, dtype=np.float64).reshape(-1, 2)
    return pts, dropped


def _without_repeats(pts: np.ndarray, closed: bool) -> np.ndarray:
    """Drop consecutive repeated vertices (and, for rings, a closing copy of the first vertex)."""
    if len(pts) < 2:
        return pts
    keep = np.ones(len(pts), dtype=bool)
    keep[1:] = np.any(pts[1:] != pts[:-1], axis=1)
    pts = pts[keep]
    if closed and len(pts) > 1 and np.array_equal(pts[0], pts[-1]):
        pts = pts[:-1]
    return pts


def load_polygon_elements(raw: Any) -> tuple[list[Any], list[Problem]]:
    """The polygon elements of the stored value: an array, {"polygons": array}, or null/empty (none)."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw).decode("utf-8", errors="replace")
    if raw is None:
        return [], []
    if isinstance(raw, str):
        text = raw.strip()
        if text in ("", "null"):
            return [], []
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as exc:
            msg = f"polygon JSON could not be parsed: {exc}"
            return [], [Problem("polygons_invalid_json", STAGE, msg[:300])]
    if raw is None:
        return [], []
    if isinstance(raw, dict) and isinstance(raw.get("polygons"), list):
        return raw["polygons"], []
    if isinstance(raw, dict) and raw.get("polygons") is None and "polygons" in raw:
        return [], []
    if isinstance(raw, list):
        return raw, []
    kind = type(raw).__name__
    return [], [Problem("polygons_unexpected_shape", STAGE, f"polygon JSON is a {kind}, not an array")]


def parse_polygons(raw: Any) -> ImagePolygons:
    """Parse one image's polygon JSON (text, bytes, already-decoded JSON, or None)."""
    elements, problems = load_polygon_elements(raw)
    result = ImagePolygons(problems=problems)
    holes: list[tuple[int, np.ndarray, Any]] = []  # (element position, ring, parent_id)
    externals_by_id: dict[str, list[PolygonObject]] = {}

    for pos, el in enumerate(elements):
        where = f"element {pos}"
        if not isinstance(el, dict):
            result.problems.append(
                Problem("element_not_object", STAGE, f"{where} is a {type(el).__name__}, not an object")
            )
            continue
        is_polyline = el.get("geometry") == "polyline"
        el_type = el.get("type")
        if not is_polyline and el_type not in ("external", "internal"):
            result.problems.append(
                Problem("element_unknown_type", STAGE, f"{where} has type {el_type!r}; dropped")
            )
            continue
        pts, dropped = _read_points(el.get("points"))
        if dropped:
            result.problems.append(
                Problem(
                    "points_not_finite",
                    STAGE,
                    f"{where}: {dropped} point(s) without finite x/y within ±{MAX_COORDINATE:g} px dropped",
                )
            )
        pts = _without_repeats(pts, closed=not is_polyline)
        need = 2 if is_polyline else 3
        if len(pts) < need:
            kind = "polyline" if is_polyline else f"{el_type} polygon"
            result.problems.append(
                Problem(
                    "polygon_too_few_points",
                    STAGE,
                    f"{where} ({kind}) has {len(pts)} distinct valid point(s), needs {need}; dropped",
                )
            )
            continue
        confidence = _finite_number(el.get("confidence"))
        copied = _copied_values(el, where, result.problems)
        if is_polyline:
            result.polylines.append(
                Polyline(
                    number=len(result.polylines) + 1,
                    points=pts,
                    confidence=confidence,
                    element_id=copied["id"],
                    part_class=copied["partClass"],
                    instance_id=copied["instanceId"],
                    track_id=json_safe(el.get("trackId")),
                    mt_type=json_safe(el.get("mtType")),
                    name=json_safe(el.get("name")),
                )
            )
        elif el_type == "external":
            obj = PolygonObject(
                number=len(result.objects) + 1,
                outer=pts,
                confidence=confidence,
                complete=el.get("complete") is not False,
                element_id=copied["id"],
                part_class=copied["partClass"],
                instance_id=copied["instanceId"],
                object_class=copied["class"],
            )
            result.objects.append(obj)
            if el.get("id") is not None:
                externals_by_id.setdefault(str(el.get("id")), []).append(obj)
        else:
            holes.append((pos, pts, el.get("parent_id")))

    for element_id, shared in externals_by_id.items():
        if len(shared) > 1:
            numbers = ", ".join(str(o.number) for o in shared)
            result.problems.append(
                Problem(
                    "polygon_id_duplicate",
                    STAGE,
                    f"id {_valid_text(element_id)!r} is shared by objects {numbers}; "
                    "holes naming it go to the one that contains them",
                )
            )
    if holes:
        outer_areas = [abs(ring_signed_area(o.outer)) for o in result.objects]
        for pos, ring, parent_id in holes:
            named = externals_by_id.get(str(parent_id), []) if parent_id is not None else []
            owner = named[0] if len(named) == 1 else None
            if len(named) > 1:
                # an id shared by several externals: the smallest of them that contains the hole
                areas = [abs(ring_signed_area(o.outer)) for o in named]
                owner = _smallest_container(ring, named, areas)
            elif parent_id is not None and owner is None:
                result.problems.append(
                    Problem(
                        "hole_parent_invalid",
                        STAGE,
                        f"element {pos}: parent_id {json_safe(parent_id)!r} names no valid external polygon",
                    )
                )
            if owner is None:
                owner = _smallest_container(ring, result.objects, outer_areas)
            if owner is None:
                result.orphan_holes.append(ring)
                result.problems.append(
                    Problem("hole_orphan", STAGE, f"element {pos}: hole inside no external polygon")
                )
            else:
                owner.holes.append(ring)
    return result


def _all_inside(points: np.ndarray, ring: np.ndarray) -> bool:
    """Whether every point lies in the ring, tested in blocks that bound memory (stops at the first miss)."""
    block = max(1, (1 << 20) // max(1, len(ring)))
    return all(bool(np.all(points_in_ring(points[i : i + block], ring))) for i in range(0, len(points), block))


def _smallest_container(
    ring: np.ndarray, objects: list[PolygonObject], outer_areas: list[float]
) -> PolygonObject | None:
    best: PolygonObject | None = None
    best_area = math.inf
    lo, hi = ring.min(axis=0), ring.max(axis=0)
    for obj, area in zip(objects, outer_areas, strict=True):
        if not area < best_area:
            continue
        if np.any(lo < obj.outer.min(axis=0)) or np.any(hi > obj.outer.max(axis=0)):
            continue  # the hole's box is not inside the outer ring's box
        if _all_inside(ring, obj.outer):
            best, best_area = obj, area
    return best
