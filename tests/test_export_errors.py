"""Per-image failures are reported while the rest is exported; fatal problems give clean errors."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from ray_export.api import export
from ray_export.errors import ExportError
from tests.projects import segmentation_row, write_sqlite_project

pytestmark = pytest.mark.usefixtures("ray_session")

SQUARE = json.dumps(
    [{"type": "external", "points": [{"x": 5, "y": 5}, {"x": 30, "y": 5}, {"x": 30, "y": 30}, {"x": 5, "y": 30}]}]
)


def _png(path: Path, value: int = 90) -> bytes:
    image = np.full((40, 50), value, dtype=np.uint8)
    ok, data = cv2.imencode(".png", image)
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())
    return data.tobytes()


@pytest.fixture(scope="module")
def broken_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    (root / "uploads").mkdir()
    good = _png(root / "uploads" / "good.png")
    _png(root / "uploads" / "broken_json.png")
    (root / "uploads" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    _png(root / "outside.png")  # exists, but outside the images root
    db = root / "uploads" / "project.db"
    images = [
        ("i1", "good.png", "good.png"),
        ("i2", "missing.png", "missing.png"),
        ("i3", "corrupt.png", "corrupt.png"),
        ("i4", "broken_json.png", "broken_json.png"),
        ("i5", "escape.png", "../outside.png"),
        ("i6", "nosize.png", "nowhere.png", None, None),
    ]
    polygons = {"i4": "{this is not json"}
    segmentations = [segmentation_row(i, polygons.get(i, SQUARE)) for i, *_ in images]
    write_sqlite_project(db, ("p1", "Broken"), images, segmentations)
    return db, root / "uploads", good


def test_broken_images_are_reported_and_the_rest_exported(broken_project, tmp_path):
    db, _root, good = broken_project
    out = tmp_path / "broken.zip"
    result = export(db=str(db), project="Broken", output=str(out))
    assert result.counts["images"] == 6
    with zipfile.ZipFile(out) as zf:
        assert zf.read("images/good.png") == good
        assert "images/missing.png" not in zf.namelist()
        assert "visualizations/good_viz.png" in zf.namelist()
        report = json.loads(zf.read("documentation/export_report.json"))
        coco = json.loads(zf.read("annotations/instances_default.json"))
    codes = {img["image_name"]: {p["code"] for p in img["problems"]} for img in report["images"]}
    assert "file_missing" in codes["missing.png"]
    assert "image_decode_failed" in codes["corrupt.png"]
    assert "polygons_invalid_json" in codes["broken_json.png"]
    assert "path_outside_root" in codes["escape.png"]
    assert {"file_missing", "image_size_unknown"} <= codes["nosize.png"]
    assert "good.png" not in codes
    # with originals exported, COCO lists only the images stored under images/
    assert [i["file_name"] for i in coco["images"]] == ["good.png", "broken_json.png"]
    assert [ann["image_id"] for ann in coco["annotations"]] == [1]
    # paths in messages are relative to the images root
    text = json.dumps(report)
    assert str(_root) not in text


def test_unknown_project_is_a_usage_error(broken_project, tmp_path):
    db, _root, _ = broken_project
    with pytest.raises(ExportError) as info:
        export(db=str(db), project="No such project", output=str(tmp_path / "x.zip"))
    assert info.value.exit_code == 2
    assert "No such project" in str(info.value)
    assert not list(tmp_path.iterdir())


def test_existing_output_needs_force(broken_project, tmp_path):
    db, _root, _ = broken_project
    out = tmp_path / "exists.zip"
    out.write_bytes(b"keep me")
    with pytest.raises(ExportError) as info:
        export(db=str(db), project="Broken", output=str(out))
    assert info.value.exit_code == 2 and "--force" in str(info.value)
    assert out.read_bytes() == b"keep me"
    export(db=str(db), project="Broken", output=str(out), force=True)
    assert zipfile.is_zipfile(out)


def test_missing_output_folder_is_a_usage_error(broken_project, tmp_path):
    db, _root, _ = broken_project
    with pytest.raises(ExportError) as info:
        export(db=str(db), project="Broken", output=str(tmp_path / "nope" / "x.zip"))
    assert info.value.exit_code == 2


def test_unreachable_postgres_fails_with_masked_password(tmp_path):
    dsn = "postgresql://alice:s3cret-pw@127.0.0.1:1/nodb"
    with pytest.raises(ExportError) as info:
        export(db=dsn, project="x", images_root=str(tmp_path), output=str(tmp_path / "x.zip"))
    assert info.value.exit_code == 1
    assert "s3cret-pw" not in str(info.value)


def test_stages_claiming_every_cpu_still_finish(broken_project, tmp_path):
    """Stages are tasks, not actor pools: hints equal to the node's CPUs take turns instead of starving."""
    db, _root, _ = broken_project
    out = tmp_path / "greedy.zip"
    stages = {s: {"num_cpus": 2} for s in ("read", "copy", "visualize", "annotate", "metrics")}
    stages["visualize"]["num_cpus"] = 1.5  # distinct hints: separate operators competing for the 2 CPUs
    result = export(db=str(db), project="Broken", output=str(out), stages=stages)
    assert result.counts["images"] == 6 and zipfile.is_zipfile(out)


def test_pinned_stage_larger_than_the_driver_node_fails_fast(broken_project, tmp_path):
    db, _root, _ = broken_project
    with pytest.raises(ExportError) as info:
        export(db=str(db), project="Broken", output=str(tmp_path / "x.zip"), stages={"copy": {"num_cpus": 8}})
    assert info.value.exit_code == 2 and "stages.copy.num_cpus" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_progress_counts_failures_and_problems_live(broken_project, tmp_path):
    from ray_export.api import start

    db, _root, _ = broken_project
    handle = start(db=str(db), project="Broken", output=str(tmp_path / "p.zip"))
    result = handle.wait(timeout=300)
    snap = handle.progress()
    assert snap["state"] == "succeeded"
    # missing.png, escape.png and nowhere.png are not read; corrupt.png does not decode (found while copying)
    assert snap["failed"]["copy"] == 4
    assert snap["failed"]["visualize"] == 0
    assert snap["failed"]["annotate"] == 1  # the broken polygon JSON
    assert snap["problems"] == result.counts["problems"] > 0


@pytest.mark.parametrize("case", ["missing db", "missing images root", "output exists"])
def test_usage_errors_come_before_ray_is_reached(broken_project, tmp_path, case):
    """Usage errors are exit 2 even when the Ray address leads nowhere (no Ray is started or reached)."""
    import subprocess
    import sys

    db, _root, _ = broken_project
    args = ["--db", str(db), "--project", "Broken", "--out", str(tmp_path / "x.zip")]
    if case == "missing db":
        args[1] = str(tmp_path / "missing.db")
    elif case == "missing images root":
        args += ["--images-root", str(tmp_path / "nowhere")]
    else:
        (tmp_path / "x.zip").write_bytes(b"keep")
    done = subprocess.run(
        [sys.executable, "-m", "ray_export", "export", *args, "--address", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr


def test_unknown_project_is_one_line_on_the_command_line(broken_project, tmp_path):
    """A usage error found by the database query (after the option checks) is one line too: the export id
    is printed only once the export runs."""
    import subprocess
    import sys

    db, _root, _ = broken_project
    done = subprocess.run(
        [sys.executable, "-m", "ray_export", "export", "--db", str(db), "--project", "No such project",
         "--out", str(tmp_path / "x.zip")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert "No such project" in done.stderr and "export id" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_remove_export_files(tmp_path):
    from ray_export.output_files import remove_export_files

    out = tmp_path / "x.zip"
    Path(str(out) + ".0123456789ab.partial").write_bytes(b"PK")
    out.write_bytes(b"old output")
    remove_export_files(out, written_since=None, export_id="0123456789ab")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zip"]  # an output not from this run stays
    remove_export_files(out, written_since=out.stat().st_mtime)  # an output this export committed goes
    assert list(tmp_path.iterdir()) == []


def test_selected_image_ids_with_unknown_ones(broken_project, tmp_path):
    db, _root, good = broken_project
    out = tmp_path / "some.zip"
    result = export(db=str(db), project="Broken", output=str(out), image_ids="i1,nope,i4")
    assert result.counts["images"] == 2
    with zipfile.ZipFile(out) as zf:
        report = json.loads(zf.read("documentation/export_report.json"))
        coco = json.loads(zf.read("annotations/instances_default.json"))
        assert zf.read("images/good.png") == good
    assert report["unknown_image_ids"] == ["nope"]
    assert [n["code"] for n in report["notes"]] == ["scale_pixels", "unknown_image_ids"]
    assert [i["file_name"] for i in coco["images"]] == ["good.png", "broken_json.png"]
    assert [i["id"] for i in coco["images"]] == [1, 2]
    with pytest.raises(ExportError) as info:
        export(db=str(db), project="Broken", output=str(tmp_path / "none.zip"), image_ids="nope")
    assert info.value.exit_code == 2


def test_size_only_in_the_file_is_read_without_originals(tmp_path):
    root = tmp_path / "uploads"
    _png(root / "sized.png")
    _png(root / "unsized.png")
    db = root / "project.db"
    images = [("a", "sized.png", "sized.png"), ("b", "unsized.png", "unsized.png", None, None)]
    write_sqlite_project(db, ("p2", "Sizes"), images, updated_step=0)
    out = tmp_path / "sizes.zip"
    export(db=str(db), project="p2", output=str(out), originals=False, visualizations=False, metrics="none",
           annotations="json")  # fmt: skip
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        entries = json.loads(zf.read("annotations/json/segmentation_data.json"))["images"]
        report = json.loads(zf.read("documentation/export_report.json"))
    assert not any(n.startswith(("images/", "visualizations/")) for n in names)
    sizes = [(e["file_name"], e["width"], e["height"]) for e in entries]
    assert sizes == [("sized.png", 50, 40), ("unsized.png", 50, 40)]
    assert report["images"] == []  # no problem: the size came from the file's header
