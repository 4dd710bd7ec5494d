"""YOLO-seg labels (Ultralytics): ``labels/<stem>.txt`` and ``data.yaml``.

Line k of an image's label file is object number k: class 0 followed by the normalised ring. A ring
cannot carry holes, so each hole is spliced into the outer ring through a zero-width bridge (there and
back along the same segment); filling the resulting ring with the even-odd rule (OpenCV's ``fillPoly``,
which Ultralytics uses) or the non-zero rule (holes run against the outer ring) leaves the holes empty.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ..geometry import bridged_ring
from ..polygons import ImagePolygons, PolygonObject
from ..problems import Problem
from .base import ImageInput, ImagePart, OutputFormat, ReadmeSection, WriterContext, reused_entry

FORMAT_NAME = "yolo"
LABELS_FOLDER = "labels/"
DATA_YAML_MEMBER = "data.yaml"


def _label_line(obj: PolygonObject, width: int, height: int) -> str:
    ring = bridged_ring(obj.outer, obj.holes)
    normalised = np.clip(ring / np.array([width, height], dtype=np.float64), 0.0, 1.0)
    # "%.6f" on -0.0 would print "-0.000000"; adding 0.0 turns negative zero into zero.
    coords = " ".join("%.6f" % v for v in (normalised.reshape(-1) + 0.0).tolist())  # noqa: UP031
    return "0 " + coords


def yolo_label_text(parsed: ImagePolygons, width: int, height: int) -> str:
    """The label file of one image: one line per object in number order; empty for an unknown size."""
    width = int(width or 0)
    height = int(height or 0)
    if width <= 0 or height <= 0 or not parsed.objects:
        return ""
    return "".join(_label_line(obj, width, height) + "\n" for obj in parsed.objects)


def data_yaml_text() -> str:
    """The dataset file: train and val both point at ``images``; one class ``cell``."""
    return "train: images\nval: images\nnc: 1\nnames:\n  0: cell\n"


def label_member(stem: str) -> str:
    """ZIP path of a YOLO label file."""
    return f"{LABELS_FOLDER}{stem}.txt"


# ------------------------------------------------------------------------------------ the format


def _image_label(image: ImageInput) -> tuple[str, list[Problem]]:
    text = yolo_label_text(image.parsed, image.width, image.height)
    problems = []
    if image.parsed.polylines:
        count = len(image.parsed.polylines)
        problems.append(Problem("polyline_not_in_yolo", "annotate", f"{count} polyline(s) not in the YOLO labels"))
    return text, problems


PART = ImagePart(
    stage="annotate", column="yolo_label", type=pa.string(), compute=_image_label, label="YOLO",
    on_failure=lambda image: "",
)  # fmt: skip


class YoloFormatWriter:
    """Writes ``labels/<stem>.txt`` per image and ``data.yaml`` at the end."""

    def __init__(self, ctx: WriterContext) -> None:
        self.ctx = ctx

    def add(self, row: dict) -> None:
        """The image's label file (empty without objects), when the image is in the dataset (with
        originals exported: stored under ``images/``)."""
        self.ctx.counts["polylines_not_in_yolo"] += int(row["n_polylines"])
        if self.ctx.in_dataset(row):
            previous = reused_entry(row, FORMAT_NAME)
            if previous is not None:  # the image and its parts did not change since a previous export
                self.ctx.zip.add_stored_entry(label_member(row["stem"]), previous)
            else:
                self.ctx.zip.add_bytes(label_member(row["stem"]), (row["yolo_label"] or "").encode("utf-8"))

    def finish(self, summary: Any) -> None:
        """The dataset file."""
        self.ctx.zip.add_bytes(DATA_YAML_MEMBER, data_yaml_text().encode("utf-8"))

    def abort(self) -> None:
        """Nothing to remove."""


def _readme_loading(summary: Any) -> list[str]:
    return [
        "### YOLO-seg (Ultralytics)",
        "",
        "```python",
        "from ultralytics import YOLO",
        "",
        'model = YOLO("yolov8n-seg.pt")',
        f'model.train(data="{DATA_YAML_MEMBER}", epochs=100, imgsz=640)',
        "```",
        "",
        "Line k of `labels/<stem>.txt` is object number k: `0 x1 y1 ... xn yn`, coordinates divided by "
        "the image width and height, clamped to 0..1, six decimals. Holes are joined to the outer ring "
        "by zero-width bridges, so filling the ring leaves them empty. Polylines cannot be expressed "
        "and are left out (counted in the report). Ultralytics pairs `images/<stem>.<ext>` with "
        "`labels/<stem>.txt`, so training needs the originals in the archive; with them, only images "
        "stored under `images/` get a label file. `train` and `val` both "
        "point at `images` — split the data yourself for a real validation.",
        "",
    ]


FORMAT = OutputFormat(
    name=FORMAT_NAME,
    chosen_by="annotations",
    choice="yolo",
    open_writer=YoloFormatWriter,
    members=(DATA_YAML_MEMBER,),
    folder=LABELS_FOLDER,
    folder_count="images",
    part=PART,
    describe=lambda summary: {
        LABELS_FOLDER: (
            "`<stem>.txt`: YOLO-seg labels, one file per image (empty when it has no objects; with the "
            "originals exported, only for images under `images/`)"
        ),
        DATA_YAML_MEMBER: "YOLO dataset file (`train: images`, `val: images`, one class `cell`)",
    },
    readme=(ReadmeSection("loading", 20, _readme_loading),),
    counts=("polylines_not_in_yolo",),
    option_rank=1,
)
