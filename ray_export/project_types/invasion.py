"""Invasive spheroid projects: how far a spheroid has disintegrated (table ``image_metrics``).

One row per image. A spheroid is drawn as external polygons: the cores (``partClass: "core"``, the
compact centre) and the rest (the whole spheroid outline and the cells or clusters that left it).
Areas come from the exact polygon geometry; the shape of the spread comes from the rasterised union
of every external on the image grid, measured against the core. Values are in image pixels; the
caller adds the key columns (``image_id``, ``image_name``) and applies the scale (the kinds in
:data:`COLUMNS` say how each column scales). Everything here is a pure, deterministic function of the
polygons and the image size.

Rasterisation: each external's region (outer ring minus its holes) is filled exactly like its
visualization fill mask (:func:`ray_export.visualize.object_mask`): OpenCV ``fillPoly`` with 8-connected
edges and 4 fractional bits, integer coordinates being pixel centres, so a pixel belongs to a region
when its centre lies inside the ring or the ring's rasterised edge passes through it.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from ..geometry import convex_hull, convex_hull_area, region_area
from ..polygons import ImagePolygons, PolygonObject
from ..problems import Problem
from ..raster import object_mask
from .base import ProjectType, TypeImage, TypeTable

STAGE = "metrics"
TABLE = "image_metrics"
XLSX_SHEET = "Image Metrics"

#: The ``partClass`` that marks a core polygon (matched exactly).
CORE_CLASS = "core"

#: Radius in pixels of the disc used for the morphological closing before fragments are counted.
CLOSING_RADIUS_PX = 2
#: Smallest fragment (pixels after the closing) and smallest hole (pixels) that are counted.
MIN_COMPONENT_PX = 30
#: Probability of the radial reach percentile.
REACH_QUANTILE = 0.95

#: Background pixels kept around the rasterised window (where it does not meet the image border);
#: wider than the closing's reach (2 × radius), so the window gives the same values as the full image.
_WINDOW_MARGIN_PX = 4 * CLOSING_RADIUS_PX

MODE_CORE = "core"
MODE_NO_CORE = "no_core"
MODE_NONE = "none"

#: Columns after the key columns, in order, with their kind: "area" (× scale²), "length" (× scale),
#: "count" (integer), "unitless" (float, never scaled) or "text".
COLUMNS: tuple[tuple[str, str], ...] = (
    ("total_area", "area"),
    ("core_area", "area"),
    ("invasion_area", "area"),
    ("reference_mode", "text"),
    ("disintegration_index", "unitless"),
    ("radial_reach_q95", "unitless"),
    ("dispersed_mass_fraction", "unitless"),
    ("fragment_count", "count"),
    ("largest_fragment_fraction", "unitless"),
    ("solidity", "unitless"),
    ("hole_count", "count"),
    ("core_equivalent_diameter", "length"),
    ("whole_equivalent_diameter", "length"),
)

#: The columns measured on the raster; they are filled only in the ``core`` mode.
RASTER_COLUMNS: tuple[str, ...] = (
    "disintegration_index",
    "radial_reach_q95",
    "dispersed_mass_fraction",
    "fragment_count",
    "largest_fragment_fraction",
    "solidity",
    "hole_count",
    "core_equivalent_diameter",
    "whole_equivalent_diameter",
)

#: Problem codes found here -> one-line meaning (for the documented list of problem codes).
PROBLEM_CODES: dict[str, str] = {
    "invasion_no_objects": "the image has no external polygon (or no segmentation); only the areas (0) are "
    "filled in the invasion metrics",
    "invasion_no_core": "the image has no complete core polygon (partClass core); only the areas are filled in "
    "the invasion metrics",
    "invasion_size_unknown": "the image size is unknown, so nothing can be rasterised; only the areas are filled "
    "in the invasion metrics",
    "invasion_core_outside": "the core polygons cover no pixel of the image; only the areas are filled in the "
    "invasion metrics",
    "invasion_objects_cut": "external polygons cut by the image border (complete: false) count with their "
    "visible part in the invasion metrics",
    "invasion_no_fragment": "every connected component is smaller than 30 pixels; largest_fragment_fraction is empty",
}

FORMULAS = """\
## Invasive spheroid metrics (`image_metrics`)

One row per exported image (also images without a segmentation), in export order. The external
polygons with `partClass` `core` (matched exactly) are the **cores**; every other external polygon
(the outline of the whole spheroid, detached cells and clusters) is a **non-core external**. Polygons
cut by the image border (`complete: false`) count with their visible part: they are real tissue, and
leaving them out would under-state the spread (the report says when an image has such polygons:
`invasion_objects_cut`). Orphan holes belong to no polygon and are ignored.

### Areas (exact geometry)

For a region (outer ring minus its holes) `A = abs(S(outer)) − Σ_holes abs(S(hole))`, with `S` the
shoelace area of a ring (as in the per-object metrics). Areas are in px², or µm² with a scale.

| column | formula | unit |
|---|---|---|
| `total_area` | Σ `A` over the non-core externals (the whole spheroid outline encloses its core) | px² or um² |
| `core_area` | Σ `A` over the cores | px² or um² |
| `invasion_area` | `max(0, total_area − core_area)` | px² or um² |
| `reference_mode` | `core`, `no_core` or `none` (below) | (text) |

`reference_mode` is `core` when the image has at least one complete core and a known size, `no_core`
when it has external polygons but no complete core, `none` when it has no external polygon or its
size is unknown.

### Raster metrics (only when `reference_mode` is `core`)

Each region is filled on the image grid like its visualization mask: OpenCV `fillPoly` (8-connected
edges, 4 fractional bits), pixel `(x, y)` centred on integer coordinates, so a pixel is filled when
its centre lies inside the ring or the ring's edge passes through it; a hole clears its pixels the
same way. Only pixels inside the image count.

- **FG** = union of the filled non-core externals and the filled cores; `N_FG` its pixel count.
- **C** = union of the filled cores; `N_C` its pixel count; `c` = mean `(x, y)` of the pixels of C;
  `R_C = √(N_C/π)` (the radius of a disc with the core's pixel area).
- For every pixel `p` of FG: `d(p) = |p − c| / R_C`; sorted `d_(1) ≤ … ≤ d_(M)`, `M = N_FG`.
- Fragments: FG closed morphologically (dilation then erosion) with the disc of radius 2 px
  `{(dx, dy): dx² + dy² ≤ 4}` (13 pixels; OpenCV's border rule: outside the image counts as
  background for the dilation and as foreground for the erosion, so the closing only adds pixels),
  then its 8-connected components; those of at least 30 pixels are **kept**.
- Holes: the 4-connected components of the background (not FG) that do not touch the image border
  and have at least 30 pixels (FG itself, not the closed FG).
- Hull: the convex hull of the centres of the FG pixels; `H` its area by the shoelace formula.

| column | formula | unit |
|---|---|---|
| `disintegration_index` | `tanh( (1/M) · Σ_i abs(d_(i) − √((i − 0.5)/M)) )`, in [0, 1) | — |
| `radial_reach_q95` | 95th percentile of `d`: `d_(1 + 0.95·(M − 1))`, interpolated linearly | — |
| `dispersed_mass_fraction` | `(N_FG − N_C) / N_FG` | — |
| `fragment_count` | number of kept components | integer |
| `largest_fragment_fraction` | pixels of the largest kept component / Σ pixels of the kept components | — |
| `solidity` | `min(1, N_FG / H)`; 1 when `H` = 0 (FG on one line of pixel centres) | — |
| `hole_count` | number of holes of FG of at least 30 pixels | integer |
| `core_equivalent_diameter` | `2·√(N_C/π)` | px or um |
| `whole_equivalent_diameter` | `2·√(N_FG/π)` | px or um |

`√((i − 0.5)/M)` are the quantiles of `d` for a solid disc centred on its core (a uniform disc has
`P(d ≤ t) = t²`), so `disintegration_index` is about 0 for a solid round spheroid and grows as mass
lies farther out (detached cells, strands, a ragged rim). `radial_reach_q95` is how far out, in core
radii, 95 % of the mass lies (about 0.97 for a solid disc).

`d`, the index, the reach, the fractions and the counts are unitless (ratios of pixel measures) and do
not change with the scale; the diameters are multiplied by the scale.

### Empty values

- `reference_mode` `no_core` or `none`: every raster metric is empty (null); the areas are filled
  (0 when there is no polygon), and the report says why (`invasion_no_core`, `invasion_no_objects`,
  `invasion_size_unknown`). A core cut by the image border alone does not make a reference (its centre
  would be wrong): such an image is `no_core`, its core still counts in `core_area`.
- `core` mode but the cores cover no pixel of the image (outside it, or thinner than a pixel): the
  raster metrics are empty (`invasion_core_outside`).
- No component reaches 30 pixels: `fragment_count` is 0 and `largest_fragment_fraction` is empty
  (`invasion_no_fragment`).
"""


def is_core(obj: PolygonObject) -> bool:
    """Whether an external polygon is a core (``partClass`` exactly ``"core"``)."""
    return isinstance(obj.part_class, str) and obj.part_class == CORE_CLASS


def _disc(radius: int) -> np.ndarray:
    """The digital disc ``{(dx, dy): dx² + dy² ≤ radius²}`` as a uint8 structuring element."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius * radius).astype(np.uint8)


_CLOSING_DISC = _disc(CLOSING_RADIUS_PX)


def rasterise(polygons: ImagePolygons, width: int, height: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(fg, core)`` boolean masks of one window of the image, or None when no external covers a pixel.

    ``fg`` is the union of every external's filled region, ``core`` that of the cores. The window is
    the box of ``fg`` grown by a margin of background (cut at the image border), which gives the same
    raster metrics as the whole image.
    """
    if width <= 0 or height <= 0:
        return None
    filled: list[tuple[np.ndarray, int, int, bool]] = []
    for obj in polygons.objects:
        found = object_mask(obj, width, height)
        if found is not None:
            mask, x0, y0 = found
            filled.append((mask, x0, y0, is_core(obj)))
    if not filled:
        return None
    wx0 = max(0, min(x0 for _, x0, _, _ in filled) - _WINDOW_MARGIN_PX)
    wy0 = max(0, min(y0 for _, _, y0, _ in filled) - _WINDOW_MARGIN_PX)
    wx1 = min(width, max(x0 + m.shape[1] for m, x0, _, _ in filled) + _WINDOW_MARGIN_PX)
    wy1 = min(height, max(y0 + m.shape[0] for m, _, y0, _ in filled) + _WINDOW_MARGIN_PX)
    fg = np.zeros((wy1 - wy0, wx1 - wx0), dtype=bool)
    core = np.zeros_like(fg)
    for mask, x0, y0, core_object in filled:
        rows = slice(y0 - wy0, y0 - wy0 + mask.shape[0])
        cols = slice(x0 - wx0, x0 - wx0 + mask.shape[1])
        region = mask.astype(bool)
        fg[rows, cols] |= region
        if core_object:
            core[rows, cols] |= region
    return fg, core


def disintegration_index(d_sorted: np.ndarray) -> float:
    """``tanh(mean_i |d_(i) − √((i − 0.5)/M)|)`` of ascending normalised distances (M ≥ 1)."""
    m = len(d_sorted)
    expected = np.sqrt((np.arange(1, m + 1, dtype=np.float64) - 0.5) / m)
    return float(np.tanh(np.mean(np.abs(d_sorted - expected))))


def sorted_quantile(d_sorted: np.ndarray, q: float) -> float:
    """Quantile ``q`` of ascending values, interpolated linearly between order statistics (numpy's
    default ``linear`` method): the value at 0-based position ``q·(M − 1)``."""
    pos = q * (len(d_sorted) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(d_sorted) - 1)
    return float(d_sorted[lo] + (pos - lo) * (d_sorted[hi] - d_sorted[lo]))


def _component_sizes(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and pixel counts (label 0 = not in ``mask``) of the connected components of ``mask``."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S)
    sizes = np.bincount(labels.ravel(), minlength=count)
    return labels, sizes


def _hole_count(fg: np.ndarray) -> int:
    """Background components (4-connected) of ``fg`` that touch no window border and have ≥ 30 pixels."""
    labels, sizes = _component_sizes(~fg, 4)
    border = np.zeros(len(sizes), dtype=bool)
    for edge in (labels[0, :], labels[-1, :], labels[:, 0], labels[:, -1]):
        border[edge] = True
    border[0] = True  # label 0 is FG itself
    return int(np.count_nonzero((sizes >= MIN_COMPONENT_PX) & ~border))


def _hull_area(fg: np.ndarray) -> float:
    """Shoelace area of the convex hull of the FG pixel centres (each row's end pixels span it)."""
    rows = np.flatnonzero(fg.any(axis=1))
    sub = fg[rows]
    first = np.argmax(sub, axis=1)
    last = sub.shape[1] - 1 - np.argmax(sub[:, ::-1], axis=1)
    points = np.concatenate([np.stack([first, rows], axis=1), np.stack([last, rows], axis=1)], axis=0).astype(
        np.float64
    )
    return convex_hull_area(convex_hull(points))


def mask_metrics(fg: np.ndarray, core: np.ndarray) -> tuple[dict[str, Any], list[Problem]]:
    """The raster metrics (:data:`RASTER_COLUMNS`) of FG and core boolean masks of one image grid.

    ``core`` must be a non-empty subset of ``fg``. The masks may be a window of the image when every
    window edge is either the image border or more than 2 × the closing radius away from FG.
    """
    problems: list[Problem] = []
    fg = np.asarray(fg, dtype=bool)
    core = np.asarray(core, dtype=bool)
    n_fg = int(np.count_nonzero(fg))
    n_c = int(np.count_nonzero(core))
    cy, cx = (float(v) for v in np.argwhere(core).mean(axis=0))
    r_c = math.sqrt(n_c / math.pi)
    ys, xs = np.nonzero(fg)
    d = np.sort(np.hypot(xs - cx, ys - cy) / r_c)

    closed = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_CLOSE, _CLOSING_DISC)
    _, sizes = _component_sizes(closed.astype(bool), 8)
    kept = sizes[1:][sizes[1:] >= MIN_COMPONENT_PX]
    largest: float | None = None
    if len(kept):
        largest = float(kept.max()) / float(kept.sum())
    else:
        problems.append(
            Problem(
                "invasion_no_fragment",
                STAGE,
                f"no connected component reaches {MIN_COMPONENT_PX} pixels; largest_fragment_fraction left empty",
            )
        )
    hull_area = _hull_area(fg)
    values: dict[str, Any] = {
        "disintegration_index": disintegration_index(d),
        "radial_reach_q95": sorted_quantile(d, REACH_QUANTILE),
        "dispersed_mass_fraction": (n_fg - n_c) / n_fg,
        "fragment_count": len(kept),
        "largest_fragment_fraction": largest,
        "solidity": min(1.0, n_fg / hull_area) if hull_area > 0.0 else 1.0,
        "hole_count": _hole_count(fg),
        "core_equivalent_diameter": 2.0 * math.sqrt(n_c / math.pi),
        "whole_equivalent_diameter": 2.0 * math.sqrt(n_fg / math.pi),
    }
    return values, problems


def image_invasion_metrics(
    polygons: ImagePolygons, width: int | None, height: int | None
) -> tuple[dict[str, Any], list[Problem]]:
    """One image's row (the :data:`COLUMNS`, in pixels; None = empty) and the problems explaining it.

    ``width``/``height`` are the image size in pixels (0 or None when unknown).
    """
    objects = polygons.objects
    cores = [obj for obj in objects if is_core(obj)]
    others = [obj for obj in objects if not is_core(obj)]
    total_area = float(sum(region_area(obj.outer, obj.holes) for obj in others))
    core_area = float(sum(region_area(obj.outer, obj.holes) for obj in cores))
    row: dict[str, Any] = dict.fromkeys(name for name, _ in COLUMNS)
    row["total_area"] = total_area
    row["core_area"] = core_area
    row["invasion_area"] = max(0.0, total_area - core_area)

    problems: list[Problem] = []
    cut = [obj.number for obj in objects if not obj.complete]
    if cut:
        numbers = ", ".join(str(n) for n in cut)
        problems.append(
            Problem(
                "invasion_objects_cut",
                STAGE,
                f"polygon(s) {numbers} are cut by the image border (complete: false); "
                "their visible part counts in the invasion metrics",
            )
        )
    size_known = bool(width and height and width > 0 and height > 0)
    complete_cores = [obj for obj in cores if obj.complete]
    empty = "the invasion raster metrics are left empty"
    if not objects:
        row["reference_mode"] = MODE_NONE
        problems.append(Problem("invasion_no_objects", STAGE, f"no external polygon; {empty}"))
        return row, problems
    if not size_known:
        row["reference_mode"] = MODE_NONE
        problems.append(Problem("invasion_size_unknown", STAGE, f"the image size is unknown; {empty}"))
        return row, problems
    if not complete_cores:
        row["reference_mode"] = MODE_NO_CORE
        why = (
            f"every core polygon ({', '.join(str(o.number) for o in cores)}) is cut by the image border"
            if cores
            else f"no external polygon has partClass {CORE_CLASS!r}"
        )
        problems.append(Problem("invasion_no_core", STAGE, f"{why}; {empty}"))
        return row, problems

    row["reference_mode"] = MODE_CORE
    masks = rasterise(polygons, int(width or 0), int(height or 0))
    if masks is None or not masks[1].any():
        problems.append(
            Problem("invasion_core_outside", STAGE, f"the core polygons cover no pixel of the image; {empty}")
        )
        return row, problems
    values, raster_problems = mask_metrics(*masks)
    row.update(values)
    problems.extend(raster_problems)
    return row, problems


def _image_rows(image: TypeImage) -> tuple[list[dict[str, Any]], list[Problem]]:
    values, problems = image_invasion_metrics(image.parsed, image.width, image.height)
    return [values], problems


TYPE = ProjectType(
    name="spheroid_invasive",
    tables=(
        TypeTable(
            name=TABLE,
            sheet=XLSX_SHEET,
            columns=COLUMNS,
            rows=_image_rows,
            description="per image: core, total and invasion areas, disintegration index and the panel metrics",
        ),
    ),
    formulas=FORMULAS,
    problem_codes=PROBLEM_CODES,
    readme="Invasive spheroid projects add `image_metrics`, one row per image: total, core and invasion areas, "
    "the disintegration index, radial reach, dispersed mass fraction, fragments, solidity, holes and the "
    f'equivalent diameters, in every chosen metrics format and as the XLSX sheet "{XLSX_SHEET}".',
)
