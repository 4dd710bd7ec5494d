"""Per-object shape metrics from exact polygon geometry (formulas and units: docs/metrics.md).

Every value is computed in image pixels from the polygon vertices (no rasterisation, no
simplification); lengths are then multiplied by the scale (µm/px) and areas by its square.
Centroids and angles stay unscaled. A metric whose formula has no value for an object (a zero
denominator, a non-positive area where the area is needed) is ``None`` and reported.
"""

from __future__ import annotations

import math

from .geometry import (
    FERET_TIE_RELATIVE,
    convex_hull,
    convex_hull_area,
    convex_hull_perimeter,
    feret_diameters,
    moment_axes,
    region_area,
    region_moments,
    ring_bbox,
    ring_length,
)
from .polygons import ImagePolygons, PolygonObject
from .problems import Problem

STAGE = "metrics"

KEY_COLUMNS: list[str] = ["image_id", "image_name", "number"]

METRIC_COLUMNS: list[str] = [
    "area",
    "perimeter",
    "perimeter_with_holes",
    "equivalent_diameter",
    "circularity",
    "compactness",
    "sphericity",
    "convexity",
    "solidity",
    "extent",
    "bbox_width",
    "bbox_height",
    "feret_max",
    "feret_angle",
    "feret_min",
    "feret_aspect_ratio",
    "major_axis",
    "minor_axis",
    "aspect_ratio",
    "roundness",
    "centroid_x",
    "centroid_y",
    "holes",
]

#: Metrics measured as lengths (scaled by µm/px).
LENGTH_METRICS: frozenset[str] = frozenset(
    {
        "perimeter",
        "perimeter_with_holes",
        "equivalent_diameter",
        "bbox_width",
        "bbox_height",
        "feret_max",
        "feret_min",
        "major_axis",
        "minor_axis",
    }
)
#: Metrics measured as areas (scaled by (µm/px)²).
AREA_METRICS: frozenset[str] = frozenset({"area"})
#: Metrics that stay in image pixels whatever the scale.
PIXEL_METRICS: frozenset[str] = frozenset({"centroid_x", "centroid_y"})
#: Integer-valued metrics.
INTEGER_METRICS: frozenset[str] = frozenset({"holes"})


def metric_units(scaled: bool) -> dict[str, str | None]:
    """Unit of every metric column (``None`` for unitless ones), for pixel or µm output."""
    length = "um" if scaled else "px"
    units: dict[str, str | None] = {}
    for name in METRIC_COLUMNS:
        if name in LENGTH_METRICS:
            units[name] = length
        elif name in AREA_METRICS:
            units[name] = length + "^2"
        elif name in PIXEL_METRICS:
            units[name] = "px"
        elif name == "feret_angle":
            units[name] = "deg"
        else:
            units[name] = None
    return units


def header_name(column: str, unit: str | None) -> str:
    """CSV/XLSX header of a column: ``"area (um^2)"``, or the bare name when unitless."""
    return f"{column} ({unit})" if unit else column


def _ratio(numerator: float, denominator: float) -> float | None:
    if denominator == 0.0:
        return None
    return numerator / denominator


def object_metrics(
    obj: PolygonObject, scale_um_per_px: float | None
) -> tuple[dict[str, float | int | None], list[str]]:
    """Metrics of one object (``METRIC_COLUMNS`` order) and the names of those left undefined."""
    outer = obj.outer
    holes = list(obj.holes)
    area = region_area(outer, holes)
    perimeter = ring_length(outer, closed=True)
    perimeter_with_holes = perimeter + sum(ring_length(h, closed=True) for h in holes)
    hull = convex_hull(outer)
    hull_area = convex_hull_area(hull)
    hull_perimeter = convex_hull_perimeter(hull)
    _, _, bbox_width, bbox_height = ring_bbox(outer)
    feret_max, feret_angle, feret_min = feret_diameters(hull)
    moments = region_moments(outer, holes)

    area_valid = area >= 0.0
    shape_valid = area > 0.0 and moments.area > 0.0
    values: dict[str, float | int | None] = dict.fromkeys(METRIC_COLUMNS)
    values["area"] = area
    values["perimeter"] = perimeter
    values["perimeter_with_holes"] = perimeter_with_holes
    values["bbox_width"] = bbox_width
    values["bbox_height"] = bbox_height
    values["feret_max"] = feret_max
    values["feret_angle"] = feret_angle
    values["feret_min"] = feret_min
    values["feret_aspect_ratio"] = _ratio(feret_max, feret_min)
    values["convexity"] = _ratio(hull_perimeter, perimeter)
    values["holes"] = len(holes)
    if area_valid:
        values["equivalent_diameter"] = math.sqrt(4.0 * area / math.pi)
        circularity = _ratio(4.0 * math.pi * area, perimeter * perimeter)
        values["circularity"] = None if circularity is None else min(1.0, circularity)
        values["sphericity"] = _ratio(math.sqrt(4.0 * math.pi * area), perimeter)
        values["solidity"] = _ratio(area, hull_area)
        values["extent"] = _ratio(area, bbox_width * bbox_height)
    if area > 0.0:
        values["compactness"] = perimeter * perimeter / (4.0 * math.pi * area)
    if shape_valid:
        major, minor = moment_axes(moments.mu20, moments.mu02, moments.mu11)
        values["major_axis"] = major
        values["minor_axis"] = minor
        values["aspect_ratio"] = _ratio(major, minor)
        values["roundness"] = _ratio(4.0 * area, math.pi * major * major)
        values["centroid_x"] = moments.centroid_x
        values["centroid_y"] = moments.centroid_y

    if scale_um_per_px is not None:
        scale = float(scale_um_per_px)
        for name in LENGTH_METRICS:
            if values[name] is not None:
                values[name] = values[name] * scale
        for name in AREA_METRICS:
            if values[name] is not None:
                values[name] = values[name] * scale * scale

    undefined: list[str] = []
    for name in METRIC_COLUMNS:
        value = values[name]
        if name in INTEGER_METRICS:
            continue
        if value is None or not math.isfinite(value):
            values[name] = None
            undefined.append(name)
        else:
            values[name] = float(value)
    return values, undefined


def _undefined_reason(values: dict[str, float | int | None]) -> str:
    reasons = []
    area = values["area"]
    if area is None:
        reasons.append("area is not finite")
    elif area == 0.0:
        reasons.append("area is 0")
    elif area < 0.0:
        reasons.append("area is negative (holes cover more than the outer ring)")
    if values["perimeter"] == 0.0:
        reasons.append("perimeter is 0")
    if values["feret_min"] == 0.0:
        reasons.append("feret_min is 0")
    return "; ".join(reasons) if reasons else "a value is not finite"


def image_metric_rows(
    image_id: str, image_name: str, parsed: ImagePolygons, scale_um_per_px: float | None
) -> tuple[list[dict], list[Problem]]:
    """Metric rows (key columns first) of an image's complete objects in number order, and the problems found."""
    rows: list[dict] = []
    problems: list[Problem] = []
    for obj in sorted(parsed.objects, key=lambda o: o.number):
        if not obj.complete:
            continue
        values, undefined = object_metrics(obj, scale_um_per_px)
        row: dict = {"image_id": image_id, "image_name": image_name, "number": int(obj.number)}
        row.update(values)
        rows.append(row)
        if undefined:
            reason = _undefined_reason(values)
            problems.append(
                Problem(
                    "metric_undefined",
                    STAGE,
                    f"object {obj.number}: {', '.join(undefined)} undefined ({reason})",
                )
            )
    return rows, problems


def metrics_guide_markdown(scale_um_per_px: float | None) -> str:
    """Text of ``documentation/metrics_guide.md``: every metric's formula, unit and undefined cases."""
    scaled = scale_um_per_px is not None
    units = metric_units(scaled)
    if scaled:
        scale_text = (
            f"This export uses a scale of **{float(scale_um_per_px)!r} µm per pixel**: lengths are in µm (`um`), "
            "areas in µm² (`um^2`). Every value is first computed in pixels; lengths are then multiplied by the "
            "scale and areas by its square."
        )
    else:
        scale_text = (
            "This export has no physical scale: lengths are in pixels (`px`) and areas in square pixels (`px^2`)."
        )
    unit_rows = "\n".join(f"| `{name}` | {units[name] or '(unitless)'} |" for name in METRIC_COLUMNS)
    return f"""# Metrics guide

One row per external closed polygon (an *object*) whose `complete` flag is not `false`, ordered by
image (export order) and object number. The key columns `image_id`, `image_name` (the image's file name
in the ZIP, without `images/`) and `number` (the object number also drawn on the visualization and
stored in the annotations) come first.

{scale_text}
Centroids are always in image pixels and the Feret angle in degrees, whatever the scale.

## Geometry conventions

- Coordinates are the stored polygon vertices in original-image pixels: x grows to the right, y grows
  **downwards**. A ring `(x_0, y_0) … (x_(n-1), y_(n-1))` is closed implicitly: indices run modulo n.
- The geometry is exact: the polygon itself is measured, not a pixel mask, and it is not simplified.
- A *region* is the outer ring minus the rings of its holes (hole ownership is decided when the
  polygons are read; orphan holes are not part of any region).
- Before summing, every ring is translated so that its own vertices are near the origin (the outer
  ring's bounding-box corner or the ring's first vertex, and for second moments the centroid), which
  keeps full float64 precision for large pixel coordinates. Values are never rounded.

Notation: `c_i = x_i·y_(i+1) − x_(i+1)·y_i`, `S(R) = ½·Σ c_i` (shoelace signed area of ring R),
`L(R) = Σ √((x_(i+1) − x_i)² + (y_(i+1) − y_i)²)` (closed length of ring R).

## Metrics

| column | formula |
|---|---|
| `area` | `A = abs(S(outer)) − Σ_holes abs(S(hole))` |
| `perimeter` | `P = L(outer)` |
| `perimeter_with_holes` | `P + Σ_holes L(hole)` |
| `equivalent_diameter` | `√(4·A/π)`: diameter of the disc with the same area |
| `circularity` | `min(1, 4π·A/P²)` (ImageJ "Circ."; 1 for a disc) |
| `compactness` | `P²/(4π·A)` (the reciprocal of circularity before the cap) |
| `sphericity` | `√(4π·A)/P` |
| `convexity` | `P_hull/P`, with `P_hull = L(H)` the perimeter of the convex hull H of the outer ring |
| `solidity` | `A/A_hull`, with `A_hull = abs(S(H))` |
| `extent` | `A/(bbox_width·bbox_height)` |
| `bbox_width`, `bbox_height` | `max x − min x`, `max y − min y` over the outer ring's vertices |
| `feret_max` | largest distance between two points of the object = the diameter of H |
| `feret_angle` | direction of that diameter: `atan2(−Δy, Δx)` in degrees, taken modulo 180 into `[0, 180)` |
| `feret_min` | smallest caliper width of H |
| `feret_aspect_ratio` | `feret_max/feret_min` |
| `major_axis`, `minor_axis` | `4·√λ1`, `4·√λ2` (full axis lengths of the ellipse with the same second moments) |
| `aspect_ratio` | `major_axis/minor_axis` |
| `roundness` | `4·A/(π·major_axis²)` |
| `centroid_x`, `centroid_y` | area centroid `(m10/m00, m01/m00)` of the region, image pixels |
| `holes` | number of holes of the object (an integer) |

### Convex hull

H is the convex hull of the outer ring's vertices (holes cannot change it), computed with Andrew's
monotone chain: the vertices are sorted by (x, y), a lower and an upper chain are built keeping only
strict turns, so collinear vertices are dropped. Points strictly inside the octagon spanned by the
extreme vertices in x, y, x+y and x−y are discarded first; they cannot be hull vertices.

### Feret diameters (rotating calipers)

The hull's edge directions turn monotonically. For every hull edge e_i the farthest hull vertex from
the edge's line is the start of the first following edge that has turned by 180° or more (found by a
binary search on the sign of the cross product `e_i × e_k`); that distance,
`(e_i × (v_far − v_i))/|e_i|`, is the caliper width perpendicular to e_i. `feret_min` is the smallest of
these widths: the minimum width of a convex polygon is always attained with one caliper flush with an
edge. The vertices antipodal to vertex v_i are those from the farthest vertex of edge e_(i−1) to the
farthest vertex of edge e_i; `feret_max` is the largest distance over all these antipodal pairs, which
is the hull's diameter. When several pairs reach the maximum (squared lengths within a relative
{FERET_TIE_RELATIVE:g} of it), `feret_angle` is the smallest of their angles. Because y grows downwards, the
angle is measured with `−Δy` so that 45° points up and to the right on screen, as in ImageJ.

### Second moments (Green's theorem)

For each ring (with its vertices relative to the local origin), summing over its edges:

- `m00 = ½·Σ c_i`
- `m10 = (1/6)·Σ (x_i + x_(i+1))·c_i`, `m01 = (1/6)·Σ (y_i + y_(i+1))·c_i`
- `m20 = (1/12)·Σ (x_i² + x_i·x_(i+1) + x_(i+1)²)·c_i`
- `m02 = (1/12)·Σ (y_i² + y_i·y_(i+1) + y_(i+1)²)·c_i`
- `m11 = (1/24)·Σ (x_i·y_(i+1) + 2·x_i·y_i + 2·x_(i+1)·y_(i+1) + x_(i+1)·y_i)·c_i`

Each ring's sums are multiplied by the sign of its own `m00`, so that the outer ring adds and every
hole subtracts regardless of the direction in which its vertices run. The centroid is
`(m10/m00, m01/m00)` of the region; the second moments are then recomputed about the centroid and
normalised by the area: `μ20 = m20/m00`, `μ02 = m02/m00`, `μ11 = m11/m00`. The eigenvalues of
`[[μ20, μ11], [μ11, μ02]]` are `λ1,2 = (μ20 + μ02)/2 ± √(((μ20 − μ02)/2)² + μ11²)` (λ2 is clamped at
0 against rounding), and the axes are `4·√λ`. For a solid ellipse these are exactly its axis lengths;
for a 10 × 10 square both are `4·√(100/12) ≈ 11.547`.

## Undefined values

A metric is undefined, and left empty, when its formula has no value:

- a denominator is 0: `perimeter` 0 (circularity, compactness, sphericity, convexity), `feret_min` 0
  (feret_aspect_ratio), hull area 0 (solidity), bounding-box area 0 (extent), area 0 (compactness),
  `minor_axis` 0 (aspect_ratio), `major_axis` 0 (roundness);
- the area is not positive: the centroid, the second moments and everything derived from them
  (major_axis, minor_axis, aspect_ratio, roundness) need a positive area;
- the area is negative (holes that together cover more than the outer ring): additionally
  equivalent_diameter, circularity, sphericity, solidity and extent;
- a value does not fit in float64 (overflow).

Every object with an undefined metric gets a `metric_undefined` entry in
`documentation/export_report.json` naming the object number, the metrics and the reason. A degenerate
polygon whose vertices are all collinear has area 0, so it typically lacks compactness, solidity,
feret_aspect_ratio, the moment axes and the centroid.

## Units

| column | unit |
|---|---|
{unit_rows}

## File formats

All files hold the same rows and columns in the same order: `image_id`, `image_name`, `number`, then
the metrics in the order of the table above.

- **metrics.csv** — UTF-8, comma-separated, `\\n` line ends, quoting only where needed (names that
  contain commas, quotes or line breaks). The header carries the units: `area (px^2)`,
  `perimeter (px)`, … (`um`/`um^2` when scaled); unitless columns keep the bare name. Numbers are written
  as the shortest text that reads back to exactly the same float64 (`0.1`, `1e-05`, `12.5`); `number`
  and `holes` are integers. An undefined value is an empty field.
  Load: `pandas.read_csv("metrics.csv")`.
- **metrics.xlsx** — sheet "Polygon Metrics": one header row with units, then one row per object with
  the exact float64 values (stored unrounded, no number format). Rows beyond Excel's limit of 1,048,576
  per sheet continue on "Polygon Metrics (2)", … with the same header. Sheet "Summary": one row per
  metric with `count`, `mean`, `std` (sample standard deviation, ddof = 1), `min`, `median`, `max` over
  the defined values; an empty cell where there are too few values. Undefined values are empty cells.
  Load: `pandas.read_excel("metrics.xlsx", sheet_name="Polygon Metrics")`.
- **metrics.json** — `{{"scale_um_per_px": <number or null>, "units": {{<metric>: <unit or null>}},
  "rows": [{{"image_id": …, "image_name": …, "number": …, "area": …, …}}, …]}}`; bare column names, the
  units beside them; undefined values are `null`. Load: `json.load(open("metrics.json"))["rows"]`.
- **metrics.parquet** — one table with a fixed schema: `image_id` and `image_name` string, `number`
  and `holes` int32, every other metric a nullable float64 (null when undefined). Bare column names; the
  units are in the schema metadata under the key `units` (a JSON object like the JSON file's), and the
  scale under `scale_um_per_px`. Load: `pyarrow.parquet.read_table("metrics.parquet")` or
  `pandas.read_parquet("metrics.parquet")`; units:
  `json.loads(pyarrow.parquet.read_schema("metrics.parquet").metadata[b"units"])`.
"""
