"""The JSON export (:data:`MEMBER`).

:func:`json_image_entry` is the per-image part (exact polygon geometry, image pixels);
:class:`JsonExportWriter` streams ``{"export_time", "images"}`` from a spool in the order images were added.
"""

from __future__ import annotations

from typing import IO, Any

import numpy as np
import pyarrow as pa

from ..geometry import region_area, region_moments, ring_bbox, ring_length
from ..polygons import ImagePolygons, PolygonObject, Polyline
from ..problems import Problem
from .base import ImageInput, ImagePart, OutputFormat, ReadmeSection, SpooledDocumentWriter, WriterContext
from .coco import JsonLineSpool, dumps_compact, write_text

MEMBER = "annotations/json/segmentation_data.json"


def _points(ring: np.ndarray) -> list[list[float]]:
    return np.asarray(ring, dtype=np.float64).reshape(-1, 2).tolist()


def region_area_centroid(outer: np.ndarray, holes: list[np.ndarray]) -> tuple[float, list[float] | None]:
    """Area of ``outer`` minus ``holes`` and its area centroid (``None`` unless area > 0).

    The same functions as the metrics, so the JSON export and the metrics files agree bit for bit.
    """
    area = region_area(outer, holes)
    if not area > 0.0:
        return area, None
    moments = region_moments(outer, holes)
    centroid = [float(moments.centroid_x), float(moments.centroid_y)]
    return area, centroid if all(np.isfinite(centroid)) else None


def _object_entry(obj: PolygonObject) -> dict:
    area, centroid = region_area_centroid(obj.outer, obj.holes)
    return {
        "number": int(obj.number),
        "outer": _points(obj.outer),
        "holes": [_points(h) for h in obj.holes],
        "area": float(area),
        "perimeter": ring_length(obj.outer, closed=True),
        "bbox": list(ring_bbox(obj.outer)),
        "centroid": centroid,
        "confidence": obj.confidence,
        "complete": bool(obj.complete),
    }


def _polyline_entry(line: Polyline) -> dict:
    return {
        "number": int(line.number),
        "points": _points(line.points),
        "length": ring_length(line.points, closed=False),
        "part_class": line.part_class,
        "instance_id": line.instance_id,
    }


def json_image_entry(index: int, image_id: str, file_name: str, width: int, height: int, parsed: ImagePolygons) -> dict:
    """One ``images[]`` entry: the image's identity and size, its objects, polylines and orphan holes."""
    return {
        "index": int(index),
        "image_id": str(image_id),
        "file_name": str(file_name),
        "width": int(width or 0),
        "height": int(height or 0),
        "objects": [_object_entry(obj) for obj in parsed.objects],
        "polylines": [_polyline_entry(line) for line in parsed.polylines],
        "orphan_holes": [_points(h) for h in parsed.orphan_holes],
    }


class JsonExportWriter:
    """Collects image entries in index order and writes the JSON export in one stream."""

    def __init__(self, export_time: str, spool_dir: str | None = None) -> None:
        self.export_time = export_time
        self._images = JsonLineSpool(spool_dir)

    def add_image(self, entry: dict) -> None:
        """Add one image entry (calls in index order)."""
        self._images.append(entry)

    def add_encoded(self, entry: bytes) -> None:
        """Add one image entry already serialised as compact JSON (calls in index order)."""
        self._images.append_encoded(entry)

    def write(self, fileobj: IO[Any]) -> None:
        """Write ``{"export_time": ..., "images": [...]}`` to a binary (UTF-8) or text file object."""
        write_text(fileobj, '{"export_time":' + dumps_compact(self.export_time) + ',"images":[')
        self._images.write_array_items(fileobj)
        write_text(fileobj, "]}")

    def close(self) -> None:
        """Remove the spool."""
        self._images.close()

    def __enter__(self) -> JsonExportWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------ the format


def _encoded_entry(image: ImageInput) -> tuple[bytes, list[Problem]]:
    entry = json_image_entry(image.index, image.image_id, image.file_name, image.width, image.height, image.parsed)
    return dumps_compact(entry).encode("utf-8"), []


def _entry_without_objects(image: ImageInput) -> bytes:
    """The image is still listed, without its objects, when its entry could not be made."""
    empty = ImagePolygons(orphan_holes=[])
    entry = json_image_entry(image.index, image.image_id, image.file_name, image.width, image.height, empty)
    return dumps_compact(entry).encode("utf-8")


PART = ImagePart(
    stage="annotate",
    column="json_entry",
    type=pa.binary(),
    compute=_encoded_entry,
    label="JSON export",
    on_failure=_entry_without_objects,
)


class JsonFormatWriter(SpooledDocumentWriter):
    """Writer of :data:`MEMBER`: every selected image, in index order."""

    member = MEMBER

    def __init__(self, ctx: WriterContext) -> None:
        self.ctx = ctx
        self.export = self.document = JsonExportWriter(ctx.export_time_text, spool_dir=str(ctx.spool))

    def add(self, row: dict) -> None:
        """Append the image's entry (every image is listed, even one whose entry is missing)."""
        if row["json_entry"] is not None:
            self.export.add_encoded(row["json_entry"])
            return
        width, height = int(row["width"]), int(row["height"])
        empty = ImagePolygons(orphan_holes=[])
        self.export.add_image(json_image_entry(row["index"], row["image_id"], row["file_name"], width, height, empty))


def _readme_loading(summary: Any) -> list[str]:
    return [
        "### JSON export",
        "",
        "```python",
        "import json",
        "",
        f'data = json.load(open("{MEMBER}", encoding="utf-8"))',
        'for image in data["images"]:',
        '    for obj in image["objects"]:',
        '        print(image["file_name"], obj["number"], obj["area"])',
        "```",
        "",
    ]


def _readme_schema(summary: Any) -> list[str]:
    return [
        "## JSON export schema",
        "",
        f'`{MEMBER}` is one object `{{"export_time": ..., "images": [...]}}`; all values are '
        "in original-image pixels.",
        "",
        "| field | meaning |",
        "|---|---|",
        "| `images[].index` | export index, 1-based (= COCO image id) |",
        "| `images[].image_id` | the image's id in the database |",
        "| `images[].file_name` | member name under `images/` |",
        "| `images[].width`, `height` | image size in pixels (0 when unknown) |",
        "| `objects[].number` | object number (see below) |",
        "| `objects[].outer` | outer ring `[[x, y], ...]`, not closed (last point != first) |",
        "| `objects[].holes` | list of hole rings, same form |",
        "| `objects[].area` | outer ring area minus hole areas (shoelace), px² |",
        "| `objects[].perimeter` | length of the outer ring, px |",
        "| `objects[].bbox` | `[min x, min y, width, height]` of the outer ring |",
        "| `objects[].centroid` | `[x, y]` area centroid, or null when the area is not positive |",
        "| `objects[].confidence` | model confidence, or null |",
        "| `objects[].complete` | false when the object is cut by the image border |",
        "| `polylines[].number` | 1-based number among the image's polylines |",
        "| `polylines[].points` | open curve `[[x, y], ...]` |",
        "| `polylines[].length` | curve length, px |",
        "| `polylines[].part_class`, `instance_id` | labels from the segmentation, or null |",
        "| `orphan_holes` | hole rings that lie inside no object (not in masks or metrics) |",
        "",
    ]


FORMAT = OutputFormat(
    name="json",
    chosen_by="annotations",
    choice="json",
    open_writer=JsonFormatWriter,
    members=(MEMBER,),
    part=PART,
    describe=lambda summary: {MEMBER: "every image with its exact polygon geometry (schema below)"},
    readme=(ReadmeSection("loading", 40, _readme_loading), ReadmeSection("schema", 40, _readme_schema)),
    option_rank=2,
)
