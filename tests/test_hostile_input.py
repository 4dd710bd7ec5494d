"""Hostile and broken input in a real export: every case is a problem of its image, the export finishes,
and the same input gives the same ZIP bytes whatever the batch sizes."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ray_export.api import export, start
from ray_export.naming import BIDI_CONTROLS
from ray_export.options import build_options
from ray_export.visualize import ORIENTATION_TAG
from tests.projects import segmentation_row, write_sqlite_project
from tests.test_visualize import huge_png

pytestmark = pytest.mark.usefixtures("ray_session")

#: An export of this fixture takes seconds; a read that blocks would never end.
LIVENESS_DEADLINE_S = 300

SQUARE_POINTS = '[{"x": 5, "y": 5}, {"x": 30, "y": 5}, {"x": 30, "y": 30}, {"x": 5, "y": 30}]'
SQUARE = f'[{{"type": "external", "points": {SQUARE_POINTS}}}]'
#: ``sur`` + a UTF-8-encoded surrogate (ED B2 80) + FF + ``.png``: not UTF-8
INVALID_NAME_HEX = "737572EDB280FF2E706E67"
#: polygon JSON whose partClass holds the same invalid bytes
INVALID_POLYGONS = (
    b'[{"type": "external", "partClass": "\xed\xb2\x80\xff", "points": ' + SQUARE_POINTS.encode() + b"}]"
)
#: valid JSON whose partClass is a lone surrogate escape
SURROGATE_POLYGONS = f'[{{"type": "external", "partClass": "\\udc80", "points": {SQUARE_POINTS}}}]'


def _png(value: int, width: int = 50, height: int = 40) -> bytes:
    ok, data = cv2.imencode(".png", np.full((height, width), value, dtype=np.uint8))
    assert ok
    return data.tobytes()


def _rotated_jpeg() -> bytes:
    """Stored 60 wide x 40 high with EXIF Orientation 6: displayed 40 wide x 60 high."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), 128, dtype=np.uint8)).save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


#: (id, name, originalPath, width, height, polygons) in export order
IMAGES: list[tuple[str, str, str, int | None, int | None, str]] = [
    ("i00", "good.png", "good.png", 50, 40, SQUARE),
    ("i01", "pipe.png", "pipe.png", 50, 40, SQUARE),
    ("i02", "bomb.png", "bomb.png", None, None, SQUARE),
    ("i03", "<invalid name>", "good.png", 50, 40, SQUARE),
    ("i04", "badtext.png", "good.png", 50, 40, "<invalid polygons>"),
    ("i05", "surrogate.png", "good.png", 50, 40, SURROGATE_POLYGONS),
    ("i06", "report\u202egnp.png", "good.png", 50, 40, SQUARE),
    ("i07", "rotated.jpg", "rotated.jpg", None, None, SQUARE),
    ("i08", "missing.png", "missing.png", 50, 40, SQUARE),
    ("i09", "escape.png", "../outside.png", 50, 40, SQUARE),
    ("i10", "corrupt.png", "corrupt.png", 50, 40, SQUARE),
    ("i11", "truncated.png", "truncated.png", 300, 200, SQUARE),
    ("i12", "empty.png", "empty.png", 50, 40, SQUARE),
    ("i13", "badjson.png", "good.png", 50, 40, "{this is not json"),
]


@pytest.fixture(scope="module")
def hostile_project(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("hostile")
    root = base / "uploads"
    root.mkdir()
    good = _png(90)
    (root / "good.png").write_bytes(good)
    os.mkfifo(root / "pipe.png")
    (root / "bomb.png").write_bytes(huge_png(20_000, 20_000))
    (root / "rotated.jpg").write_bytes(_rotated_jpeg())
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (root / "truncated.png").write_bytes(_png(200, 300, 200)[:300])
    (root / "empty.png").write_bytes(b"")
    (base / "outside.png").write_bytes(good)
    db = root / "project.db"
    images = [(i, n, p, w, h) for i, n, p, w, h, _ in IMAGES]
    write_sqlite_project(db, ("p1", "Hostile"), images, [segmentation_row(i, polygons) for i, *_, polygons in IMAGES])
    con = sqlite3.connect(db)
    con.execute(f"UPDATE images SET name = CAST(X'{INVALID_NAME_HEX}' AS TEXT) WHERE id = 'i03'")
    con.execute(f"UPDATE segmentations SET polygons = CAST(X'{INVALID_POLYGONS.hex()}' AS TEXT) WHERE id = 'si04'")
    con.commit()
    con.close()
    return db, root


@pytest.fixture(scope="module")
def hostile_zip(hostile_project, tmp_path_factory) -> Path:
    db, _root = hostile_project
    out = tmp_path_factory.mktemp("hostile_out") / "hostile.zip"
    handle = start(db=str(db), project="Hostile", output=str(out))
    try:
        handle.wait(timeout=LIVENESS_DEADLINE_S)
    except TimeoutError:
        handle.cancel()
        pytest.fail(f"the export did not finish within {LIVENESS_DEADLINE_S} s")
    return out


def _codes(zf: zipfile.ZipFile) -> dict[str, list[str]]:
    report = json.loads(zf.read("documentation/export_report.json"))
    return {image["image_id"]: [p["code"] for p in image["problems"]] for image in report["images"]}


def _by_id(document: dict, key: str = "images") -> dict[str, dict]:
    names = {row[0]: row[1] for row in IMAGES}
    return {next(i for i, n in names.items() if n == image["file_name"]): image for image in document[key]
            if image["file_name"] in names.values()}  # fmt: skip


def test_every_hostile_input_is_a_problem_of_its_image(hostile_zip, hostile_project):
    _db, root = hostile_project
    with zipfile.ZipFile(hostile_zip) as zf:
        names = zf.namelist()
        codes = _codes(zf)
        report_text = zf.read("documentation/export_report.json").decode("utf-8")
        coco = json.loads(zf.read("annotations/instances_default.json"))
        exported = json.loads(zf.read("annotations/json/segmentation_data.json"))
        bomb = zf.read("images/bomb.png")
        rotated_viz = zf.read("visualizations/rotated_viz.png")
    assert "i00" not in codes
    # a FIFO is refused, not waited on
    assert codes["i01"] == ["file_not_regular"]
    # the 20,000 x 20,000 PNG: kept byte for byte, listed at its header's size, not drawn
    assert codes["i02"] == ["image_too_large"]
    assert bomb == (root / "bomb.png").read_bytes()
    assert "visualizations/bomb_viz.png" not in names
    coco_images = {image["file_name"]: image for image in coco["images"]}
    json_images = {image["file_name"]: image for image in exported["images"]}
    for listed in (coco_images["bomb.png"], json_images["bomb.png"]):
        assert (listed["width"], listed["height"]) == (20_000, 20_000)
    # invalid UTF-8 in a name and in the polygon text
    assert codes["i03"] == ["text_invalid_utf8"]
    bad_name = "sur\ufffd\ufffd\ufffd\ufffd.png"
    assert f"images/{bad_name}" in names and bad_name in coco_images
    assert codes["i04"] == ["text_invalid_utf8"]
    assert "segmentations.polygons" in report_text
    assert len(json_images["badtext.png"]["objects"]) == 1
    # a lone surrogate no longer stops the annotate stage
    assert codes["i05"] == ["text_invalid_unicode"]
    surrogate_id = coco_images["surrogate.png"]["id"]
    assert [a for a in coco["annotations"] if a["image_id"] == surrogate_id]
    # bidirectional controls are stripped from member names and the rename is reported
    assert codes["i06"] == ["member_renamed"]
    assert "images/reportgnp.png" in names
    assert not any(ch in name for name in names for ch in BIDI_CONTROLS)
    # EXIF orientation 6: the displayed frame everywhere
    assert (coco_images["rotated.jpg"]["width"], coco_images["rotated.jpg"]["height"]) == (40, 60)
    drawn = cv2.imdecode(np.frombuffer(rotated_viz, np.uint8), cv2.IMREAD_UNCHANGED)
    assert drawn.shape[:2] == (60, 40)
    # the files that are missing, outside the root, corrupt, truncated or empty, and broken JSON
    assert codes["i08"] == ["file_missing"]
    assert codes["i09"] == ["path_outside_root"]
    assert codes["i10"] == ["image_decode_failed"]
    assert codes["i11"] == ["image_decode_failed"]
    assert codes["i12"] == ["image_decode_failed"]
    assert codes["i13"] == ["polygons_invalid_json"]
    assert " at 0x" not in report_text and "object at" not in report_text


def test_hostile_input_gives_the_same_bytes_with_other_batch_sizes(hostile_zip, hostile_project, tmp_path):
    db, _root = hostile_project
    again = tmp_path / "again.zip"
    stages = {"read": {"batch_size": 3}, "copy": {"batch_size": 1}, "visualize": {"batch_size": 5},
              "annotate": {"batch_size": 2}, "metrics": {"batch_size": 4}}  # fmt: skip
    export(build_options(None, {"db": str(db), "project": "Hostile", "output": str(again), "stages": stages}))
    assert again.read_bytes() == hostile_zip.read_bytes()


def test_decode_failures_without_originals_name_no_memory_address(hostile_project, tmp_path):
    # without originals the files are only decoded by the visualize stage, where Pillow's own error
    # text names the in-memory buffer it read
    db, _root = hostile_project
    out = tmp_path / "drawings.zip"
    export(db=str(db), project="Hostile", output=str(out), originals=False, annotations="none", metrics="none")
    with zipfile.ZipFile(out) as zf:
        report = json.loads(zf.read("documentation/export_report.json"))
    problems = {image["image_id"]: image["problems"] for image in report["images"]}
    assert [(p["code"], p["message"]) for p in problems["i10"]] == [
        ("image_decode_failed", "not a decodable image (UnidentifiedImageError)")
    ]
    assert [(p["code"], p["message"]) for p in problems["i12"]] == [("image_decode_failed", "image data is empty")]
    assert " at 0x" not in json.dumps(report)
