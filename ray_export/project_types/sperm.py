"""Sperm projects: head, midpiece and tail lengths of every sperm cell (table ``sperm_metrics``).

A sperm cell is drawn as open polylines that share an ``instanceId``; each polyline's ``partClass``
says which part it traces (``head``, ``midpiece`` or ``tail``). Lengths are open polyline lengths in
image pixels; the caller adds the key columns (``image_id``, ``image_name``) and applies the scale
(the kinds in :data:`COLUMNS` say how each column scales).
"""

from __future__ import annotations

from ..geometry import ring_length
from ..polygons import ImagePolygons, Polyline, id_text
from ..problems import Problem
from .base import ProjectType, TypeImage, TypeTable

STAGE = "metrics"
TABLE = "sperm_metrics"
XLSX_SHEET = "Sperm Metrics"

#: The part classes measured, in column order.
PARTS: tuple[str, ...] = ("head", "midpiece", "tail")

#: Columns after the key columns, in order, with their kind: "length" (× scale), "area" (× scale²),
#: "unitless", "int" or "text".
COLUMNS: tuple[tuple[str, str], ...] = (
    ("instance_id", "text"),
    ("head_length", "length"),
    ("midpiece_length", "length"),
    ("tail_length", "length"),
    ("total_length", "length"),
)

#: Problem codes found here -> one-line meaning (for the documented list of problem codes).
PROBLEM_CODES: dict[str, str] = {
    "sperm_polyline_without_instance": "a polyline has no instanceId, so it belongs to no sperm cell; it was left "
    "out of the sperm metrics",
    "sperm_part_missing": "a sperm cell has no polyline of a part (head, midpiece or tail); that part's length "
    "counts as 0",
    "sperm_part_repeated": "a sperm cell has several polylines of one part; their lengths were added up",
    "sperm_part_unknown": "a polyline of a sperm cell has a partClass other than head, midpiece or tail (or none); "
    "it was left out of the part lengths and the total",
}

FORMULAS = """\
## Sperm metrics (`sperm_metrics`)

One row per sperm cell: the polylines (`geometry: "polyline"`) of one image that share an `instanceId`,
in the order in which each cell's first polyline appears in the polygon array. `instance_id` is the
`instanceId` as text (a number is written in decimal, so `7` and `"7"` name the same cell).
Lengths are in pixels (`px`), or in µm (`um`) when the export has a scale (pixel length × µm per pixel).

For an open polyline with points `(x_0, y_0) … (x_(n−1), y_(n−1))`:
`L = Σ_(i<n−1) √((x_(i+1) − x_i)² + (y_(i+1) − y_i)²)` (the last point is **not** joined to the first).

| column | formula | unit |
|---|---|---|
| `instance_id` | the cell's `instanceId`, as text | (text) |
| `head_length` | Σ L over the cell's polylines with `partClass` `head` | px or um |
| `midpiece_length` | Σ L over the cell's polylines with `partClass` `midpiece` | px or um |
| `tail_length` | Σ L over the cell's polylines with `partClass` `tail` | px or um |
| `total_length` | `head_length + midpiece_length + tail_length` | px or um |

- Part classes are matched exactly (`head`, `midpiece`, `tail`). A polyline of a cell with any other
  `partClass`, or none, counts in no part and not in the total (`sperm_part_unknown`).
- A part without any polyline counts as 0 (`sperm_part_missing`); the value is then 0, not empty.
- Several polylines of one part in one cell: their lengths add up (`sperm_part_repeated`).
- A polyline without `instanceId` (missing, null or an empty text) belongs to no cell and is left out
  (`sperm_polyline_without_instance`).
- Every value is defined: no length has a denominator.
"""


def polyline_length(line: Polyline) -> float:
    """Open length of a polyline in pixels."""
    return ring_length(line.points, closed=False)


def _numbers(lines: list[Polyline]) -> str:
    return ", ".join(str(line.number) for line in lines)


def sperm_rows(polygons: ImagePolygons) -> tuple[list[dict], list[Problem]]:
    """Rows of one image's sperm cells (instance order of first appearance) and the problems found.

    Each row holds the :data:`COLUMNS` with lengths in pixels.
    """
    problems: list[Problem] = []
    cells: dict[str, list[Polyline]] = {}
    for line in polygons.polylines:
        key = id_text(line.instance_id)
        if key is None:
            problems.append(
                Problem(
                    "sperm_polyline_without_instance",
                    STAGE,
                    f"polyline {line.number} has no instanceId; left out of the sperm metrics",
                )
            )
            continue
        cells.setdefault(key, []).append(line)

    rows: list[dict] = []
    for key, lines in cells.items():
        by_part: dict[str, list[Polyline]] = {part: [] for part in PARTS}
        for line in lines:
            part = line.part_class
            if isinstance(part, str) and part in by_part:
                by_part[part].append(line)
            else:
                shown = "no partClass" if part is None else f"partClass {part!r}"
                problems.append(
                    Problem(
                        "sperm_part_unknown",
                        STAGE,
                        f"instance {key!r}: polyline {line.number} has {shown}; "
                        "left out of the part lengths and the total",
                    )
                )
        row: dict = {"instance_id": key}
        total = 0.0
        missing: list[str] = []
        for part in PARTS:
            part_lines = by_part[part]
            if not part_lines:
                missing.append(part)
            elif len(part_lines) > 1:
                problems.append(
                    Problem(
                        "sperm_part_repeated",
                        STAGE,
                        f"instance {key!r}: {len(part_lines)} {part} polylines ({_numbers(part_lines)}); "
                        "their lengths were added up",
                    )
                )
            length = float(sum(polyline_length(line) for line in part_lines))
            row[f"{part}_length"] = length
            total += length
        row["total_length"] = total
        if missing:
            problems.append(
                Problem(
                    "sperm_part_missing",
                    STAGE,
                    f"instance {key!r}: no {', '.join(missing)} polyline; counted as 0",
                )
            )
        rows.append(row)
    return rows, problems


def _image_rows(image: TypeImage) -> tuple[list[dict], list[Problem]]:
    return sperm_rows(image.parsed)


TYPE = ProjectType(
    name="sperm",
    tables=(
        TypeTable(
            name=TABLE,
            sheet=XLSX_SHEET,
            columns=COLUMNS,
            rows=_image_rows,
            description="head, midpiece, tail and total length of every sperm cell (polylines by instanceId)",
        ),
    ),
    formulas=FORMULAS,
    problem_codes=PROBLEM_CODES,
    readme="Sperm projects add `sperm_metrics`: the head, midpiece, tail and total length of every sperm cell "
    "(the polylines of one `instanceId`), in every chosen metrics format and as the XLSX sheet "
    f'"{XLSX_SHEET}".',
    polyline_label="S",
)
