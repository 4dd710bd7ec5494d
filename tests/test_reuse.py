"""Incremental export (``reuse``): every case is compared byte for byte with a full export of the same state."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_export.api import export
from ray_export.errors import ExportError
from ray_export.reuse import MANIFEST_MEMBER, software_fingerprint

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture
def project(demo_project, tmp_path):
    """A private copy of the demo project (database and files), free to change."""
    root = tmp_path / "project"
    shutil.copytree(demo_project.images_root, root, ignore=shutil.ignore_patterns("*.zip"))
    db = root / demo_project.db_path.name
    return {"db": db, "root": root, "id": demo_project.project_id, "out": tmp_path}


def _export(project, name: str, **options) -> tuple[Path, object]:
    out = project["out"] / name
    result = export(db=str(project["db"]), project=project["id"], output=str(out), **options)
    return out, result


def _same_as_full(project, reused_zip: Path, **options) -> None:
    full, _ = _export(project, f"full-{reused_zip.stem}.zip", **options)
    assert reused_zip.read_bytes() == full.read_bytes()


def _sql(project, statement: str, *args) -> list:
    con = sqlite3.connect(project["db"])
    try:
        rows = con.execute(statement, args).fetchall()
        con.commit()
        return rows
    finally:
        con.close()


def _images(project) -> list[tuple[str, str, str]]:
    """(id, name, originalPath) of the selected images in export order."""
    return _sql(
        project,
        'SELECT id, name, "originalPath" FROM images WHERE "projectId" = ? AND NOT COALESCE("isVideoContainer", 0) '
        'ORDER BY "displayOrder" IS NULL, "displayOrder", "createdAt", id',
        project["id"],
    )


def _segmented_image(project, position: int = 1) -> str:
    rows = _sql(project, 'SELECT "imageId" FROM segmentations ORDER BY "imageId"')
    return rows[position][0]


def _manifest(path: Path) -> pa.Table:
    with zipfile.ZipFile(path) as zf:
        return pq.read_table(io.BytesIO(zf.read(MANIFEST_MEMBER)))


def test_unchanged_data_gives_identical_bytes_and_nothing_is_recomputed(project):
    first, result = _export(project, "first.zip")
    assert result.reuse is None
    second, again = _export(project, "second.zip", reuse=str(first))
    assert second.read_bytes() == first.read_bytes()
    n = len(_images(project))
    assert again.reuse["reused"] == n
    assert again.reuse["computed"] == 0 and again.reuse["reused_members"] == 0
    assert "note" not in again.reuse
    # the previous ZIP may be the output itself: it is read before the new ZIP replaces it
    _, again = _export(project, "first.zip", reuse=str(first), force=True)
    assert again.reuse["reused"] == n
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in project["out"].iterdir()) == ["first.zip", "project", "second.zip"]


def test_cli_reports_reuse_and_refuses_a_missing_previous_zip(project):
    import subprocess
    import sys

    command = [sys.executable, "-m", "ray_export", "export", "--db", str(project["db"]), "--project", project["id"],
               "--out", str(project["out"] / "x.zip"), "--reuse", str(project["out"] / "missing.zip")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: invalid option --reuse:")
    assert not (project["out"] / "x.zip").exists()


def test_manifest_records_fingerprints_parts_and_no_paths(project):
    first, _ = _export(project, "first.zip")
    table = _manifest(first)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if k.startswith(b"ray_export.")}
    assert meta["ray_export.project_id"] == project["id"]
    versions = json.loads(meta["ray_export.software_versions"])
    assert meta["ray_export.software_fingerprint"] == software_fingerprint(versions)
    rows = table.to_pylist()
    assert [r["index"] for r in rows] == list(range(1, len(_images(project)) + 1))
    assert all(len(r["member_fingerprint"]) == 64 and len(r["parts_fingerprint"]) == 64 for r in rows)
    assert {"coco_annotations", "json_entry", "metric_rows"} <= set(table.column_names)
    with zipfile.ZipFile(first) as zf:
        names = set(zf.namelist())
    for row in rows:
        for member in row["members"]:
            assert member["name"] in names
        assert any(m["format"] == "yolo" for m in row["members"]) or not row["decodable"]
    raw = zipfile.ZipFile(first).read(MANIFEST_MEMBER)
    assert str(project["root"]).encode() not in raw and b"uploads/" not in raw


def test_edited_segmentation_is_the_only_image_computed(project):
    first, _ = _export(project, "first.zip")
    image_id = _segmented_image(project)
    (text,) = _sql(project, 'SELECT polygons FROM segmentations WHERE "imageId" = ?', image_id)[0]
    elements = json.loads(text)
    elements[0]["points"] = [{"x": p["x"] + 1.5, "y": p["y"]} for p in elements[0]["points"]]
    _sql(project, 'UPDATE segmentations SET polygons = ?, "updatedAt" = "updatedAt" + 1 WHERE "imageId" = ?',
         json.dumps(elements), image_id)  # fmt: skip
    second, result = _export(project, "second.zip", reuse=str(first))
    assert result.reuse["computed"] == 1 and result.reuse["computed_changed"] == 1
    assert result.reuse["reused"] == len(_images(project)) - 1
    _same_as_full(project, second)


def test_replaced_image_file_is_recomputed_and_touching_one_is_not(project):
    first, _ = _export(project, "first.zip")
    images = _images(project)
    png = next(path for _, name, path in images if path.endswith(".png"))
    other = next(path for _, name, path in images if path.endswith(".png") and path != png)
    target = project["root"] / png
    shutil.copyfile(project["root"] / other, target)  # same path, other content
    target.touch()
    second, result = _export(project, "second.zip", reuse=str(first))
    assert result.reuse["computed_changed"] == 1 and result.reuse["computed"] == 1
    _same_as_full(project, second)
    # sha256 fingerprints ignore the modification time
    target.touch()
    third, result = _export(project, "third.zip", reuse=str(second))
    assert result.reuse["computed"] == 0
    assert third.read_bytes() == second.read_bytes()


def test_added_and_deleted_images(project):
    first, _ = _export(project, "first.zip")
    images = _images(project)
    # delete the second image: every later image moves up one index (members copied, parts recomputed)
    deleted = images[1][0]
    _sql(project, 'DELETE FROM segmentations WHERE "imageId" = ?', deleted)
    _sql(project, "DELETE FROM images WHERE id = ?", deleted)
    # add an image at the end, reusing an existing file under a new name
    source_id, _, source_path = images[-1]
    _sql(
        project,
        'INSERT INTO images (id, name, "originalPath", "projectId", width, height, "displayOrder", '
        '"isVideoContainer", "pixelSizeUm", "createdAt", "updatedAt") SELECT ?, ?, "originalPath", "projectId", '
        'width, height, 1000, 0, "pixelSizeUm", "createdAt", "updatedAt" FROM images WHERE id = ?',
        "added-image", "added.png" if source_path.endswith(".png") else "added" + Path(source_path).suffix, source_id,
    )  # fmt: skip
    second, result = _export(project, "second.zip", reuse=str(first))
    # the images after the deleted one move up an index (members copied, parts recomputed) up to the added
    # one, which sorts before the last image (its displayOrder is null): the first and last keep theirs
    assert result.reuse == {**result.reuse, "computed": 1, "computed_new": 1, "reused": 2,
                            "reused_members": len(images) - 3}  # fmt: skip
    _same_as_full(project, second)


def test_renamed_image_copies_its_members_under_the_new_name(project):
    first, _ = _export(project, "first.zip")
    image_id, name, _ = next(row for row in _images(project) if row[2].endswith(".png"))
    _sql(project, "UPDATE images SET name = ? WHERE id = ?", "renamed-" + name, image_id)
    second, result = _export(project, "second.zip", reuse=str(first))
    assert result.reuse["reused_members"] == 1 and result.reuse["computed"] == 0
    with zipfile.ZipFile(second) as zf:
        assert f"images/renamed-{name}" in zf.namelist()
    _same_as_full(project, second)


def test_other_content_options_are_not_trusted(project):
    first, _ = _export(project, "first.zip")
    second, result = _export(project, "second.zip", reuse=str(first), visualization={"fill_opacity": 0.5})
    n = len(_images(project))
    assert result.reuse["computed"] == n and result.reuse["computed_not_trusted"] == n
    assert "content options" in result.reuse["note"] and "visualization" in result.reuse["note"]
    _same_as_full(project, second, visualization={"fill_opacity": 0.5})
    # a subset export feeds an export of the whole (image selection is per image, not a content option)
    subset_ids = [row[0] for row in _images(project)[:4]]
    subset, _ = _export(project, "subset.zip", image_ids=subset_ids)
    whole, result = _export(project, "whole.zip", reuse=str(subset))
    assert result.reuse["reused"] == 4 and result.reuse["computed_new"] == n - 4
    _same_as_full(project, whole)


def _rewrite_zip(source: Path, target: Path, replace: dict[str, bytes]) -> None:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, replace.get(info.filename, src.read(info.filename)))


def test_other_software_version_or_project_is_not_trusted(project):
    first, _ = _export(project, "first.zip")
    table = _manifest(first)
    meta = dict(table.schema.metadata)
    versions = json.loads(meta[b"ray_export.software_versions"])
    versions["ray_export"] = "0.0.1"
    meta[b"ray_export.software_versions"] = json.dumps(versions, sort_keys=True).encode()
    meta[b"ray_export.software_fingerprint"] = software_fingerprint(versions).encode()
    older = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), older)
    old_zip = project["out"] / "older.zip"
    _rewrite_zip(first, old_zip, {MANIFEST_MEMBER: older.getvalue()})
    second, result = _export(project, "second.zip", reuse=str(old_zip))
    assert result.reuse["computed_not_trusted"] == len(_images(project))
    assert "software versions" in result.reuse["note"] and "ray_export 0.0.1" in result.reuse["note"]
    assert second.read_bytes() == first.read_bytes()

    meta = dict(table.schema.metadata)
    meta[b"ray_export.project_id"] = b"another-project"
    foreign = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), foreign)
    foreign_zip = project["out"] / "foreign.zip"
    _rewrite_zip(first, foreign_zip, {MANIFEST_MEMBER: foreign.getvalue()})
    third, result = _export(project, "third.zip", reuse=str(foreign_zip))
    assert "another project" in result.reuse["note"]
    assert third.read_bytes() == first.read_bytes()


def test_truncated_previous_zip_is_not_trusted(project):
    first, _ = _export(project, "first.zip")
    truncated = project["out"] / "truncated.zip"
    data = first.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    second, result = _export(project, "second.zip", reuse=str(truncated))
    assert result.reuse["computed_not_trusted"] == len(_images(project))
    assert "damaged" in result.reuse["note"]
    assert second.read_bytes() == first.read_bytes()


def test_bit_flipped_member_recomputes_only_its_image(project):
    first, _ = _export(project, "first.zip")
    with zipfile.ZipFile(first) as zf:
        info = next(i for i in zf.infolist() if i.filename.startswith("visualizations/"))
    flipped = project["out"] / "flipped.zip"
    data = bytearray(first.read_bytes())
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[data_start + info.compress_size // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    second, result = _export(project, "second.zip", reuse=str(flipped))
    assert result.reuse["computed_damaged"] == 1 and result.reuse["computed"] == 1
    assert second.read_bytes() == first.read_bytes()
    # a flip inside the manifest is caught by its CRC: nothing of that ZIP is trusted
    with zipfile.ZipFile(first) as zf:
        info = zf.getinfo(MANIFEST_MEMBER)
    data = bytearray(first.read_bytes())
    data[info.header_offset + 30 + len(info.filename.encode()) + info.compress_size // 2] ^= 0x10
    flipped.write_bytes(bytes(data))
    third, result = _export(project, "third.zip", reuse=str(flipped))
    assert result.reuse["computed_not_trusted"] == len(_images(project))
    assert third.read_bytes() == first.read_bytes()


def test_mtime_fingerprints_skip_reading_unchanged_files(project):
    first, _ = _export(project, "first.zip", file_fingerprint="mtime")
    second, result = _export(project, "second.zip", file_fingerprint="mtime", reuse=str(first))
    assert result.reuse["reused"] == len(_images(project))
    assert second.read_bytes() == first.read_bytes()
    path = next(p for _, _, p in _images(project) if p.endswith(".png"))
    (project["root"] / path).touch()
    third, result = _export(project, "third.zip", file_fingerprint="mtime", reuse=str(first))
    assert result.reuse["computed_changed"] == 1
    _same_as_full(project, third, file_fingerprint="mtime")
    # the fingerprint kind is a content option: a sha256 export does not trust an mtime one
    _, result = _export(project, "fourth.zip", reuse=str(first))
    assert result.reuse["computed_not_trusted"] == len(_images(project))


def test_missing_previous_zip_is_a_usage_error(project):
    with pytest.raises(ExportError) as caught:
        _export(project, "second.zip", reuse=str(project["out"] / "nope.zip"))
    assert caught.value.exit_code == 2
    assert "reuse" in str(caught.value) and "does not exist" in str(caught.value)
    assert not (project["out"] / "second.zip").exists()
