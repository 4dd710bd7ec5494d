"""COCO and YOLO reference only images that are present and decodable in ``images/``; renamed members."""

from __future__ import annotations

import json
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

from actors.zip_writer import AssemblyPlan, ExportAssembler
from ray_export import stages
from ray_export.documents import ExportSummary
from ray_export.options import build_options
from tests.projects import segmentation_row, write_sqlite_project

SQUARE = json.dumps(
    [{"type": "external", "points": [{"x": 5, "y": 5}, {"x": 30, "y": 5}, {"x": 30, "y": 30}, {"x": 5, "y": 30}]},
     {"geometry": "polyline", "points": [{"x": 1, "y": 1}, {"x": 9, "y": 4}]}]
)  # fmt: skip


def _png(value: int = 90) -> bytes:
    ok, data = cv2.imencode(".png", np.random.default_rng(value).integers(0, 255, (40, 50), dtype=np.uint8))
    assert ok
    return data.tobytes()


@pytest.fixture
def images_root(tmp_path: Path) -> Path:
    root = tmp_path / "uploads"
    root.mkdir()
    (root / "good.png").write_bytes(_png())
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    whole = _png(7)
    (root / "truncated.png").write_bytes(whole[: len(whole) // 2])  # the header reads, the pixels do not
    (tmp_path / "outside.png").write_bytes(_png())
    return root


ROWS = [
    # name, originalPath, width, height
    ("good.png", "good.png", 50, 40),
    ("missing.png", "missing.png", 50, 40),
    ("corrupt.png", "corrupt.png", 50, 40),
    ("escape.png", "../outside.png", 50, 40),
    ("truncated.png", "truncated.png", 50, 40),
    ("nosize.png", "nowhere.png", None, None),
]


def _source() -> pa.Table:
    n = len(ROWS)
    return pa.table({
        "index": pa.array(range(1, n + 1), pa.int64()), "image_id": [f"i{k}" for k in range(1, n + 1)],
        "file_name": [r[0] for r in ROWS], "stem": [r[0].rsplit(".", 1)[0] for r in ROWS],
        "original_path": [r[1] for r in ROWS], "db_width": pa.array([r[2] for r in ROWS], pa.int64()),
        "db_height": pa.array([r[3] for r in ROWS], pa.int64()),
        "seg_width": pa.array([None] * n, pa.int64()), "seg_height": pa.array([None] * n, pa.int64()),
        "polygons": [SQUARE] * n,
    })  # fmt: skip


def _export(tmp_path: Path, root: Path, **choices) -> Path:
    """Run the stage chain and the assembler in this process; the ZIP's path."""
    options = build_options(None, {"db": "x.db", "project": "p", "metrics": "none", **choices})
    table = _source()
    for step in stages.stage_chain(options, str(root), None):
        table = step.fn(table, **step.kwargs)
    table = stages.finish_stage(table)
    kinds = {**options.content_options(), "visualization_format": "png"}
    summary = ExportSummary(
        project_id="p", project_title="T", project_type="spheroid", export_time="2024-05-06T07:08:09.000000Z",
        content_options=options.content_options(), counts={}, scale_um_per_px=None, scale_source="pixels",
        members=kinds,
    )  # fmt: skip
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    out = tmp_path / "out.zip"
    plan = AssemblyPlan(
        output=str(out), export_time=datetime(2024, 5, 6, tzinfo=timezone.utc), total_images=len(ROWS),
        include_originals=options.include_originals, include_visualizations=options.include_visualizations,
        annotations=tuple(options.annotations), metrics=(), include_docs=True, viz_extension=".png",
        scale_um_per_px=None, summary=summary, coco_info={}, spool_dir=str(spool),
    )  # fmt: skip
    assembler = ExportAssembler(plan)
    assembler.add_batch(table)
    assembler.finish()
    return out


def _read(out: Path) -> tuple[list[str], dict, dict, dict, str]:
    with zipfile.ZipFile(out) as zf:
        report = json.loads(zf.read("documentation/export_report.json"))
        codes = {img["image_name"]: [p["code"] for p in img["problems"]] for img in report["images"]}
        return (
            zf.namelist(),
            json.loads(zf.read("annotations/instances_default.json")),
            json.loads(zf.read("annotations/json/segmentation_data.json")),
            codes,
            zf.read("documentation/README.md").decode(),
        )


@pytest.mark.parametrize("visualizations", [True, False], ids=["decoded-by-visualize", "checked-by-copy"])
def test_with_originals_the_dataset_formats_reference_only_decodable_images(tmp_path, images_root, visualizations):
    out = _export(tmp_path, images_root, visualizations=visualizations)
    names, coco, exported, codes, readme = _read(out)
    assert [name for name in names if name.startswith("images/")] == ["images/good.png"]
    assert [name for name in names if name.startswith("labels/")] == ["labels/good.txt"]
    assert [name for name in names if name.startswith("unreadable/")] == ["unreadable/corrupt.png",
                                                                         "unreadable/truncated.png"]
    with zipfile.ZipFile(out) as zf:
        for name in ("corrupt.png", "truncated.png"):
            assert zf.read(f"unreadable/{name}") == (images_root / name).read_bytes()
        counts = json.loads(zf.read("documentation/metadata.json"))["counts"]
    assert [image["file_name"] for image in coco["images"]] == ["good.png"]
    assert {ann["image_id"] for ann in coco["annotations"]} == {1}
    assert [image["file_name"] for image in exported["images"]] == [row[0] for row in ROWS]  # nothing is lost
    assert all(len(image["objects"]) == 1 for image in exported["images"])
    assert codes["missing.png"][0] == "file_missing" and codes["escape.png"][0] == "path_outside_root"
    assert codes["corrupt.png"].count("image_decode_failed") == 1
    assert codes["truncated.png"].count("image_decode_failed") == 1
    assert "image_decode_failed" not in codes.get("good.png", [])
    assert counts["images"] == 6 and counts["coco_images"] == 1 and counts["unreadable_files"] == 2
    assert counts["images_with_files"] == 1
    assert "| `unreadable/` |" in readme


def test_without_originals_coco_keeps_every_image_of_known_size(tmp_path, images_root):
    out = _export(tmp_path, images_root, originals=False, visualizations=False)
    names, coco, exported, codes, _readme = _read(out)
    assert not [name for name in names if name.startswith(("images/", "unreadable/"))]
    assert [image["file_name"] for image in coco["images"]] == [row[0] for row in ROWS if row[2]]
    assert len([name for name in names if name.startswith("labels/")]) == len(ROWS)
    assert len(exported["images"]) == len(ROWS)
    assert not any("image_decode_failed" in found for found in codes.values())


def test_image_decodes_is_a_real_decode(images_root):
    assert stages.image_decodes((images_root / "good.png").read_bytes())
    assert not stages.image_decodes((images_root / "truncated.png").read_bytes())
    assert not stages.image_decodes((images_root / "corrupt.png").read_bytes())
    assert not stages.image_decodes(b"")


# ------------------------------------------------------------------------ through the pipeline


@pytest.mark.usefixtures("ray_session")
def test_names_changed_by_a_collision_suffix_are_reported(tmp_path):
    from ray_export.api import export

    root = tmp_path / "uploads"
    root.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (root / name).write_bytes(_png())
    db = root / "project.db"
    images = [("i1", "spheroid.png", "a.png"), ("i2", "spheroid.png", "b.png"), ("i3", "Spheroid?.png", "c.png")]
    write_sqlite_project(db, ("p1", "Dup"), images, [segmentation_row(i, SQUARE) for i, *_ in images], updated_step=0)
    out = tmp_path / "dup.zip"
    export(db=str(db), project="Dup", output=str(out), metrics="none")
    with zipfile.ZipFile(out) as zf:
        report = json.loads(zf.read("documentation/export_report.json"))
        assert {"images/spheroid.png", "images/spheroid_2.png", "images/Spheroid_.png"} <= set(zf.namelist())
    renamed = {img["index"]: [p for p in img["problems"] if p["code"] == "member_renamed"] for img in report["images"]}
    assert not renamed.get(1)  # the first keeps its name
    (suffix,) = renamed[2]
    assert "'spheroid.png'" in suffix["message"] and "'spheroid_2.png'" in suffix["message"]
    (sanitized,) = renamed[3]
    assert "'Spheroid?.png'" in sanitized["message"] and "'Spheroid_.png'" in sanitized["message"]
