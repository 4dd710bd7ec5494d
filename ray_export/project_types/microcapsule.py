"""Microcapsule projects: size and shape of every complete capsule (table ``microcapsule_metrics``).

Every value comes from :func:`ray_export.metrics.object_metrics`, so a capsule's numbers are exactly those
of its row in the per-object metrics table. Values are in image pixels; the caller adds the key columns
(``image_id``, ``image_name``) and applies the scale (the kinds in :data:`COLUMNS` say how).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..metrics import object_metrics
from ..polygons import ImagePolygons, PolygonObject
from ..statistics import metric_float, summary_statistics
from .base import ProjectType, TypeImage, TypeTable

TABLE = "microcapsule_metrics"
XLSX_SHEET = "Microcapsule Metrics"

#: Columns after the key columns, in order, with their kind: "length" (× scale), "area" (× scale²),
#: "unitless", "int" or "text".
COLUMNS: tuple[tuple[str, str], ...] = (
    ("capsule_id", "int"),
    ("area", "area"),
    ("perimeter", "length"),
    ("width", "length"),
    ("height", "length"),
    ("feret_max", "length"),
    ("feret_min", "length"),
    ("diameter", "length"),
    ("equivalent_diameter", "length"),
    ("circularity", "unitless"),
    ("ovality", "unitless"),
    ("confidence", "unitless"),
)

#: The columns summarised (count, mean, std, min, median, max): every measured one, not the id.
SUMMARY_COLUMNS: tuple[str, ...] = tuple(name for name, kind in COLUMNS if kind in ("length", "area", "unitless"))

#: Problem codes found here -> one-line meaning. None: an undefined value is already reported as
#: ``metric_undefined`` by the per-object metrics table, which holds the same objects.
PROBLEM_CODES: dict[str, str] = {}

FORMULAS = """\
## Microcapsule metrics (`microcapsule_metrics`)

One row per capsule: every external closed polygon whose `complete` flag is not `false`, in object
number order. The values are those of the same object in the per-object metrics table (same exact
geometry, same formulas); lengths are in pixels (`px`) and areas in `px^2`, or `um` and `um^2` when the
export has a scale (lengths × µm per pixel, areas × its square).

| column | formula | unit |
|---|---|---|
| `capsule_id` | the object number (as drawn on the visualization and in the per-object table) | (integer) |
| `area` | `A = abs(S(outer)) − Σ_holes abs(S(hole))` (as `area`) | px^2 or um^2 |
| `perimeter` | `P = L(outer)` (as `perimeter`) | px or um |
| `width`, `height` | `max x − min x`, `max y − min y` over the outer ring (as `bbox_width`, `bbox_height`) | px or um |
| `feret_max` | largest caliper: the convex hull's diameter | px or um |
| `feret_min` | smallest caliper width of the convex hull | px or um |
| `diameter` | `(feret_max + feret_min)/2`: the mean caliper diameter | px or um |
| `equivalent_diameter` | `√(4·A/π)`: diameter of the disc with the same area | px or um |
| `circularity` | `min(1, 4π·A/P²)` (1 for a disc) | (unitless) |
| `ovality` | `feret_max/feret_min` (as `feret_aspect_ratio`; 1 for a disc, ≥ 1 always) | (unitless) |
| `confidence` | the polygon's `confidence` as stored; empty when missing | (unitless) |

Undefined (empty) values: `ovality` when `feret_min` is 0 (all vertices on one line);
`circularity` when the perimeter is 0; `equivalent_diameter` and `circularity` when the area is
negative (holes covering more than the outer ring). Such objects are reported as `metric_undefined`
by the per-object table.

The "Microcapsule Summary" sheet of `metrics/metrics.xlsx` gives, for every column except `capsule_id`:
`count` (defined values), `mean`, `std` (sample standard deviation, ddof = 1), `min`, `median`, `max`;
an empty cell where there are too few values.
"""


def _defined(value: Any) -> float | None:
    return None if value is None else metric_float(value)


def capsule_row(obj: PolygonObject) -> dict:
    """The :data:`COLUMNS` of one capsule, in pixels (``None`` where undefined)."""
    values, _ = object_metrics(obj, None)
    feret_max = _defined(values["feret_max"])
    feret_min = _defined(values["feret_min"])
    diameter = None
    if feret_max is not None and feret_min is not None:
        diameter = _defined((feret_max + feret_min) / 2.0)
    confidence = obj.confidence
    return {
        "capsule_id": int(obj.number),
        "area": _defined(values["area"]),
        "perimeter": _defined(values["perimeter"]),
        "width": _defined(values["bbox_width"]),
        "height": _defined(values["bbox_height"]),
        "feret_max": feret_max,
        "feret_min": feret_min,
        "diameter": diameter,
        "equivalent_diameter": _defined(values["equivalent_diameter"]),
        "circularity": _defined(values["circularity"]),
        "ovality": _defined(values["feret_aspect_ratio"]),
        "confidence": None if confidence is None or not math.isfinite(confidence) else float(confidence),
    }


def microcapsule_rows(polygons: ImagePolygons) -> list[dict]:
    """Rows of one image's complete capsules in object number order, values in pixels."""
    return [capsule_row(obj) for obj in sorted(polygons.objects, key=lambda o: o.number) if obj.complete]


def summary(rows: Iterable[Mapping[str, Any]]) -> list[tuple[str, list[float | None]]]:
    """``(column, [count, mean, std (ddof 1), min, median, max])`` for every :data:`SUMMARY_COLUMNS` column,
    over its defined values (rows in any units, as long as they agree)."""
    values: dict[str, list[float]] = {name: [] for name in SUMMARY_COLUMNS}
    for row in rows:
        for name in SUMMARY_COLUMNS:
            value = _defined(row.get(name))
            if value is not None:
                values[name].append(value)
    return [(name, summary_statistics(values[name])) for name in SUMMARY_COLUMNS]


def _image_rows(image: TypeImage) -> tuple[list[dict], list]:
    return microcapsule_rows(image.parsed), []


TYPE = ProjectType(
    name="microcapsule",
    tables=(
        TypeTable(
            name=TABLE,
            sheet=XLSX_SHEET,
            columns=COLUMNS,
            rows=_image_rows,
            description="size and shape of every complete capsule (diameter, ovality, ...)",
            summary_sheet="Microcapsule Summary",
        ),
    ),
    formulas=FORMULAS,
    problem_codes=PROBLEM_CODES,
    readme="Microcapsule projects add `microcapsule_metrics`: size and shape of every complete capsule "
    "(area, perimeter, bounding box, Feret diameters, mean diameter, equivalent diameter, circularity, "
    f'ovality, confidence), in every chosen metrics format and as the XLSX sheets "{XLSX_SHEET}" and '
    '"Microcapsule Summary".',
)
