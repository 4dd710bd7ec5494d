"""COCO instances (``annotations/instances_default.json``).

The per-image part (:func:`coco_image_entry`, :func:`coco_annotations_for_image`) is a pure function of
one image's polygons and size, so it can run in parallel. The annotate stage stores each annotation as
compact JSON without its ``id`` (:data:`PART`); :class:`CocoWriter` numbers the annotations 1..M in the
order the images are added (index order) by splicing the id in front, and streams the finished file from
spools.

Masks follow pycocotools' own rasterisation: a hole-free object is stored as a polygon list, an object
with holes as compressed RLE of the outer ring minus its holes, and ``area`` is always the pixel count
that ``COCO.annToMask`` decodes. With ``coco_holes: polygons`` (for importers that read only polygons) an
object with holes is one polygon instead: its holes joined to the outer ring by zero-width bridges, which
pycocotools fills to the same pixels as that RLE.
"""

from __future__ import annotations

import io
import json
import tempfile
from typing import IO, Any

import numpy as np
import pyarrow as pa
from pycocotools import mask as mask_utils

from ..format_names import COCO_HOLES_CHOICES, DEFAULT_COCO_HOLES
from ..geometry import bridged_ring, ring_bbox
from ..polygons import ImagePolygons, PolygonObject
from ..problems import Problem
from .base import ImageInput, ImagePart, OutputFormat, ReadmeSection, SpooledDocumentWriter, WriterContext

MEMBER = "annotations/instances_default.json"

STAGE = "annotate"
CELL_CATEGORY_ID = 1
CELL_CATEGORY = {"id": CELL_CATEGORY_ID, "name": "cell", "supercategory": "cell"}

#: Rings reaching further outside the image than its own size (at least this many pixels) are clipped
#: to that grown box before rasterising: pixels of the image are unaffected, and pycocotools' work (which
#: grows with the ring's length in pixels) stays proportional to the image for far-out vertices.
CLIP_MARGIN_PX = 64.0

#: How objects with holes are written (option ``coco_holes``): compressed RLE, or one bridged polygon.


def dumps_compact(value: Any) -> str:
    """Deterministic compact JSON text (UTF-8 characters kept, NaN refused)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def coco_image_entry(index: int, file_name: str, width: int, height: int) -> dict:
    """The COCO ``images[]`` entry of one image (``id`` = export index)."""
    return {"id": int(index), "file_name": str(file_name), "width": int(width or 0), "height": int(height or 0)}


def clip_ring_to_box(ring: np.ndarray, min_x: float, min_y: float, max_x: float, max_y: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a ring to an axis-aligned box (the region inside the box is kept exactly)."""
    out = np.asarray(ring, dtype=np.float64)
    for axis, bound, keep_below in ((0, min_x, False), (0, max_x, True), (1, min_y, False), (1, max_y, True)):
        if len(out) == 0:
            break
        coord = out[:, axis]
        inside = coord <= bound if keep_below else coord >= bound
        if inside.all():
            continue
        prev = np.roll(out, 1, axis=0)
        prev_inside = np.roll(inside, 1)
        crossing = inside != prev_inside
        delta = out[:, axis] - prev[:, axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(crossing, (bound - prev[:, axis]) / np.where(delta == 0, 1.0, delta), 0.0)
        cut = prev + t[:, None] * (out - prev)
        cut[:, axis] = bound
        # Per edge (prev -> cur): the crossing point when the edge crosses, then cur when cur is inside.
        candidates = np.stack([cut, out], axis=1).reshape(-1, 2)
        keep = np.stack([crossing, inside], axis=1).reshape(-1)
        out = candidates[keep]
    return out


def _rasterisable_ring(ring: np.ndarray, width: int, height: int) -> np.ndarray:
    """The ring, clipped to the image plus a margin only when some vertex lies beyond that margin."""
    ring = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
    if len(ring) < 2 or not np.isfinite(ring).all():
        raise ValueError("ring needs at least 2 points with finite coordinates")
    margin = max(CLIP_MARGIN_PX, float(width), float(height))
    lo_x = lo_y = -margin
    hi_x, hi_y = width + margin, height + margin
    if ring[:, 0].min() >= lo_x and ring[:, 1].min() >= lo_y and ring[:, 0].max() <= hi_x and ring[:, 1].max() <= hi_y:
        return ring
    return clip_ring_to_box(ring, lo_x, lo_y, hi_x, hi_y)


def _flat(ring: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(ring, dtype=np.float64).reshape(-1).tolist()]


def _empty_rle(width: int, height: int) -> dict:
    return mask_utils.frPyObjects({"counts": [width * height], "size": [height, width]}, height, width)


def _polygon_rle(rings: list[np.ndarray], width: int, height: int) -> dict:
    """Union of the filled rings as one compressed RLE (pycocotools' polygon rasterisation)."""
    flats = [_flat(r) for r in rings if len(r) >= 3]
    if not flats:
        return _empty_rle(width, height)
    return mask_utils.merge(mask_utils.frPyObjects(flats, height, width))


def _decode_counts(counts: bytes | str) -> list[int]:
    """Run lengths of a compressed COCO RLE string (the inverse of pycocotools' string encoding)."""
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    runs: list[int] = []
    pos = 0
    while pos < len(data):
        value = 0
        shift = 0
        more = True
        while more:
            c = data[pos] - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and (c & 0x10):
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _complement_rle(rle: dict) -> dict:
    """The pixel complement of a compressed RLE, computed on its run lengths."""
    runs = _decode_counts(rle["counts"])
    flipped = runs[1:] if runs and runs[0] == 0 else [0, *runs]
    height, width = (int(v) for v in rle["size"])
    return mask_utils.frPyObjects({"counts": flipped, "size": [height, width]}, height, width)


def object_rle(obj: PolygonObject, width: int, height: int) -> dict:
    """Compressed RLE of the object's outer ring filled, minus its holes."""
    outer = _polygon_rle([_rasterisable_ring(obj.outer, width, height)], width, height)
    if not obj.holes:
        return outer
    holes = _polygon_rle([_rasterisable_ring(h, width, height) for h in obj.holes], width, height)
    return mask_utils.merge([outer, _complement_rle(holes)], intersect=True)


def _run_rectangles(mask: np.ndarray) -> list[np.ndarray]:
    """One rectangle on pixel edges per vertical run of ``mask``: pycocotools fills exactly that run."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1]), dtype=np.int8)
    padded[1:-1] = mask
    steps = np.diff(padded, axis=0).T  # (column, row boundary): +1 where a run starts, -1 after it ends
    starts, ends = np.argwhere(steps == 1), np.argwhere(steps == -1)
    return [
        np.array([[c, a], [c + 1, a], [c + 1, b], [c, b]], dtype=np.float64)
        for (c, a), (_, b) in zip(starts.tolist(), ends.tolist(), strict=True)
    ]


def object_polygon(obj: PolygonObject, width: int, height: int) -> tuple[np.ndarray, dict]:
    """One ring for the object and its pycocotools mask (compressed RLE); the ring may be empty when
    the object lies entirely outside the rasterised box.

    A hole-free object is its (clipped) outer ring. With holes, each hole is joined to the outer ring by a
    zero-width bridge; pycocotools fills a ring even-odd, so the mask equals :func:`object_rle` whenever
    the holes lie inside the outer ring without overlapping one another. Where they do not, the pixels
    that differ are bridged in as well (as rectangles on pixel edges), so the mask always equals it.
    """
    outer = _rasterisable_ring(obj.outer, width, height)
    if not obj.holes:
        return outer, _polygon_rle([outer], width, height)
    target = object_rle(obj, width, height)
    if len(outer) < 3:
        return outer, target
    holes = [ring for ring in (_rasterisable_ring(h, width, height) for h in obj.holes) if len(ring) >= 3]
    ring = bridged_ring(outer, holes)
    rle = _polygon_rle([ring], width, height)
    if rle["counts"] != target["counts"]:
        differs = mask_utils.decode(rle) != mask_utils.decode(target)
        if differs.any():
            ring = bridged_ring(ring, _run_rectangles(differs))
            rle = _polygon_rle([ring], width, height)
            if not np.array_equal(mask_utils.decode(rle), mask_utils.decode(target)):
                raise ValueError("the bridged polygon does not fill the object's mask")
    return ring, rle


def _empty_polygon(obj: PolygonObject, width: int, height: int) -> list[float]:
    """A zero-area polygon (one point three times) for an object entirely outside the rasterised box:
    its first vertex moved onto that box."""
    margin = max(CLIP_MARGIN_PX, float(width), float(height))
    x, y = np.asarray(obj.outer, dtype=np.float64).reshape(-1, 2)[0]
    point = [float(np.clip(x, -margin, width + margin)), float(np.clip(y, -margin, height + margin))]
    return point * 3


def _object_annotation(
    index: int, obj: PolygonObject, width: int, height: int, coco_holes: str = DEFAULT_COCO_HOLES
) -> dict:
    if obj.holes and coco_holes == "rle":
        rle = object_rle(obj, width, height)
        segmentation: Any = {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")}
    else:
        ring, rle = object_polygon(obj, width, height)
        if len(ring) >= 3:
            segmentation = [_flat(ring)]
        elif coco_holes == "polygons":
            segmentation = [_empty_polygon(obj, width, height)]
        else:
            # Entirely outside the image: an empty RLE decodes to the (empty) mask.
            segmentation = {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")}
    return {
        "image_id": int(index),
        "category_id": CELL_CATEGORY_ID,
        "segmentation": segmentation,
        "area": float(mask_utils.area(rle)),
        "bbox": list(ring_bbox(obj.outer)),
        "iscrowd": 0,
        "attributes": {
            "number": int(obj.number),
            "model_confidence": obj.confidence,
            "holes": len(obj.holes),
            "complete": bool(obj.complete),
        },
    }


def _failure(kind: str, number: int, exc: BaseException) -> Problem:
    message = f"COCO: {kind} {number} could not be converted: {type(exc).__name__}: {exc}"
    return Problem("annotation_failed", STAGE, message[:300])


def polylines_left_out(parsed: ImagePolygons) -> list[Problem]:
    """The ``polyline_not_in_coco`` problem of an image with polylines (none without)."""
    if not parsed.polylines:
        return []
    count = len(parsed.polylines)
    return [Problem("polyline_not_in_coco", STAGE, f"{count} polyline(s) not in the COCO annotations")]


def coco_annotations_for_image(
    index: int, parsed: ImagePolygons, width: int, height: int, coco_holes: str = DEFAULT_COCO_HOLES
) -> tuple[list[dict], list[Problem]]:
    """COCO annotations of one image's closed objects by number, without ``id``.

    ``coco_holes`` (one of :data:`COCO_HOLES_CHOICES`) says how objects with holes are written. Polylines
    are not instance masks and are left out (see :func:`polylines_left_out`). With an unknown image size
    (0 or missing) no annotation can be rasterised: none are returned and one ``annotation_failed``
    problem says so. A single object that fails is reported and left out.
    """
    if coco_holes not in COCO_HOLES_CHOICES:
        raise ValueError(f"coco_holes must be one of {COCO_HOLES_CHOICES}, not {coco_holes!r}")
    width = int(width or 0)
    height = int(height or 0)
    if not parsed.objects:
        return [], polylines_left_out(parsed)
    if width <= 0 or height <= 0:
        message = f"COCO: image size unknown, {len(parsed.objects)} object(s) left out of the annotations"
        return [], [Problem("annotation_failed", STAGE, message), *polylines_left_out(parsed)]
    annotations: list[dict] = []
    problems: list[Problem] = []
    for obj in parsed.objects:
        try:
            annotations.append(_object_annotation(index, obj, width, height, coco_holes))
        except Exception as exc:
            problems.append(_failure("object", obj.number, exc))
    return annotations, problems + polylines_left_out(parsed)


class JsonLineSpool:
    """Serialized JSON values kept one per line in an anonymous temporary file."""

    def __init__(self, spool_dir: str | None = None) -> None:
        self._file: IO[bytes] | None = tempfile.TemporaryFile(mode="w+b", dir=spool_dir)  # noqa: SIM115
        self.count = 0

    def append(self, value: Any) -> None:
        """Serialize ``value`` and append it."""
        if self._file is None:
            raise ValueError("spool is closed")
        self.append_encoded(dumps_compact(value).encode("utf-8"))

    def append_encoded(self, data: bytes) -> None:
        """Append one value already serialised as compact JSON (no newline inside)."""
        if self._file is None:
            raise ValueError("spool is closed")
        self._file.write(bytes(data) + b"\n")
        self.count += 1

    def write_array_items(self, out: IO[Any]) -> None:
        """Write the stored values comma-separated (the inside of a JSON array) to ``out``."""
        if self._file is None:
            raise ValueError("spool is closed")
        self._file.flush()
        self._file.seek(0)
        as_text = isinstance(out, io.TextIOBase)
        first = True
        for line in self._file:
            chunk = line.rstrip(b"\n")
            if not first:
                chunk = b"," + chunk
            first = False
            out.write(chunk.decode("utf-8") if as_text else chunk)
        self._file.seek(0, io.SEEK_END)

    def close(self) -> None:
        """Remove the spool."""
        if self._file is not None:
            self._file.close()
            self._file = None


def write_text(out: IO[Any], text: str) -> None:
    """Write ``text`` to a text or binary file object (binary as UTF-8)."""
    out.write(text if isinstance(out, io.TextIOBase) else text.encode("utf-8"))


class CocoWriter:
    """Collects images and their annotations in index order and writes the COCO file in one stream."""

    def __init__(self, info: dict, spool_dir: str | None = None) -> None:
        self.info = info
        self._images = JsonLineSpool(spool_dir)
        self._annotations = JsonLineSpool(spool_dir)
        self._last_image_id: int | None = None

    def _add_image_entry(self, image_entry: dict) -> None:
        image_id = int(image_entry["id"])
        if self._last_image_id is not None and image_id <= self._last_image_id:
            raise ValueError(f"images must be added in increasing id order: {image_id} after {self._last_image_id}")
        self._last_image_id = image_id
        self._images.append(image_entry)

    def add_image(self, image_entry: dict, annotations: list[dict]) -> None:
        """Add one image (calls in index order) and its annotations, which get ids continuing from 1."""
        self._add_image_entry(image_entry)
        for ann in annotations:
            self._annotations.append({"id": self._annotations.count + 1, **ann})

    def add_encoded(self, image_entry: dict, annotations: list[bytes]) -> None:
        """Like :meth:`add_image`, with annotations as :data:`PART` values (compact JSON of each annotation
        without ``id``): the id is spliced in front without parsing."""
        self._add_image_entry(image_entry)
        for item in annotations:
            encoded = bytes(item)
            if not encoded.startswith(b"{") or encoded == b"{}":
                raise ValueError("an encoded COCO annotation must be a non-empty JSON object")
            self._annotations.append_encoded(b'{"id":%d,' % (self._annotations.count + 1) + encoded[1:])

    def categories(self) -> list[dict]:
        """The one category ``cell``."""
        return [dict(CELL_CATEGORY)]

    def write(self, fileobj: IO[Any]) -> None:
        """Write the complete JSON document to a binary (UTF-8) or text file object."""
        write_text(fileobj, '{"info":' + dumps_compact(self.info) + ',"licenses":[],"images":[')
        self._images.write_array_items(fileobj)
        write_text(fileobj, '],"annotations":[')
        self._annotations.write_array_items(fileobj)
        write_text(fileobj, '],"categories":' + dumps_compact(self.categories()) + "}")

    def close(self) -> None:
        """Remove the spools."""
        self._images.close()
        self._annotations.close()

    def __enter__(self) -> CocoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------ the format


def _image_annotations(image: ImageInput) -> tuple[list[bytes] | None, list[Problem]]:
    """The per-image part: each annotation as compact JSON without ``id``; none for an unknown size."""
    if image.width <= 0 or image.height <= 0:
        return None, polylines_left_out(image.parsed)
    coco_holes = image.settings.get("coco_holes", DEFAULT_COCO_HOLES)
    annotations, problems = coco_annotations_for_image(image.index, image.parsed, image.width, image.height, coco_holes)
    return [dumps_compact(ann).encode("utf-8") for ann in annotations], problems


PART = ImagePart(
    stage="annotate",
    column="coco_annotations",
    type=pa.list_(pa.binary()),
    compute=_image_annotations,
    label="COCO",
)


class CocoFormatWriter(SpooledDocumentWriter):
    """Writer of :data:`MEMBER`: every image, its annotations numbered in index order."""

    member = MEMBER

    def __init__(self, ctx: WriterContext) -> None:
        self.ctx = ctx
        self.coco = self.document = CocoWriter(ctx.coco_info, spool_dir=str(ctx.spool))

    def add(self, row: dict) -> None:
        """List the image and its annotations when its size is known and it is in the dataset (with
        originals exported: stored under ``images/``)."""
        self.ctx.counts["polylines_not_in_coco"] += int(row["n_polylines"])
        if row["width"] <= 0 or row["height"] <= 0 or not self.ctx.in_dataset(row):
            return
        entry = coco_image_entry(row["index"], row["file_name"], row["width"], row["height"])
        self.coco.add_encoded(entry, row["coco_annotations"] or [])
        self.ctx.counts["coco_images"] += 1


def _holes_text(summary: Any) -> str:
    if summary.content_options.get("coco_holes", DEFAULT_COCO_HOLES) == "polygons":
        return (
            "ones with holes as one polygon each, every hole joined to the outer ring by a zero-width bridge "
            "(option `coco_holes: polygons`; pycocotools fills it to the same pixels, holes empty)"
        )
    return "ones with holes as compressed RLE"


def _readme_loading(summary: Any) -> list[str]:
    return [
        "### COCO (pycocotools)",
        "",
        "```python",
        "from pycocotools.coco import COCO",
        "",
        f'coco = COCO("{MEMBER}")',
        "for image in coco.loadImgs(coco.getImgIds()):",
        '    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]], catIds=[1])):',
        "        mask = coco.annToMask(ann)  # uint8 array (height, width); holes are 0",
        '        number = ann["attributes"]["number"]  # the number drawn on the visualization',
        "```",
        "",
        f"`{MEMBER}` follows the COCO dataset layout (`images/` beside `annotations/instances_<subset>.json`, "
        "subset `default`), so the unzipped folder itself is a COCO dataset for loaders that look for that "
        "layout (Datumaro, CVAT, FiftyOne). "
        "`images[].id` is the export index (1-based) and `file_name` the name under `images/`. When the "
        "originals are exported, only images stored under `images/` are listed (a file that is missing, "
        "outside the images root or not decodable is left out and named in the report); without them, "
        "every image of known size is. Category 1 "
        f"`cell` holds the closed objects: hole-free ones as polygons, {_holes_text(summary)}; "
        "`area` is the pixel count of the decoded mask, `bbox` is `[min x, min y, width, height]` of the "
        "outer ring, `attributes` holds `number`, `model_confidence` (the segmentation "
        "model's confidence, or null; named so that it collides with no loader's own `confidence` field), "
        "`holes` and `complete`. Polylines are open curves, not instance masks: they are not in "
        "the COCO file (only in the JSON export) and are counted in the report (`polylines_not_in_coco`).",
        "",
    ]


FORMAT = OutputFormat(
    name="coco",
    chosen_by="annotations",
    choice="coco",
    open_writer=CocoFormatWriter,
    members=(MEMBER,),
    part=PART,
    describe=lambda summary: {MEMBER: "COCO instances: images, category `cell`, one annotation per closed object"},
    readme=(ReadmeSection("loading", 10, _readme_loading),),
    counts=("coco_images", "polylines_not_in_coco"),
    option_rank=0,
)
