"""The demo projects of every project type: rows, polygons, images and determinism.

Cheap (no Ray): each demo is a few 640×480 images built in well under a second.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ray_export.demo import DEMO_DB_NAME, build_demo_project, copy_project_to_postgres
from ray_export.demo_types import (
    DEFAULT_IMAGE_COUNTS,
    DEFAULT_SIZE,
    INVASIVE_HOLE_IMAGE,
    INVASIVE_NO_CORE_IMAGE,
    MT_FRAME_INTERVAL_MS,
    MT_TYPE_LABELS,
    PROJECT_TYPES,
    SPERM_LOOSE_TAIL_IMAGE,
    SPERM_NO_MIDPIECE_IMAGE,
    WOUND_INTERVAL_MS,
    WOUND_NO_SIZE_IMAGE,
)
from ray_export.geometry import points_in_ring, ring_signed_area
from ray_export.polygons import ImagePolygons, parse_polygons

TYPED = [t for t in PROJECT_TYPES if t != "spheroid"]
#: Columns the demo schema gained with the typed demos (NULL in the spheroid demo).
NEW_COLUMNS = ("mtTypeLabels", "frameIntervalMs")
#: Digest of the spheroid demo's rows (without NEW_COLUMNS) and image files, taken before the typed
#: demos existed: the default demo must stay exactly the same.
SPHEROID_PINS = {
    (12, 0, None): "6a50fdc2addd875e203bfebb367b1100e0cbf7fc39c42f0386f39c2a42461ced",
    (3, 1, (320, 240)): "7099fb0e8b2e417e324ed82e2b6fdaafc8eb9e648f4a2d1148a37c6935323a83",
}


def _demo_digest(db_path: Path, images_root: Path) -> str:
    h = hashlib.sha256()
    conn = sqlite3.connect(db_path)
    try:
        for table in ("projects", "images", "segmentations", "ray_export_demo"):
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})") if r[1] not in NEW_COLUMNS]
            order = "key" if table == "ray_export_demo" else "id"
            names = ", ".join(f'"{c}"' for c in cols)
            for row in conn.execute(f"SELECT {names} FROM {table} ORDER BY {order}"):
                h.update(json.dumps([table, dict(zip(cols, row, strict=True))], sort_keys=True).encode())
    finally:
        conn.close()
    for path in sorted(p for p in (images_root / "uploads").rglob("*") if p.is_file()):
        h.update(path.relative_to(images_root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _rows(db_path: Path, sql: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def _frames(demo) -> list[dict[str, Any]]:
    """The exported images with their segmentation, in display order."""
    return _rows(
        demo.db_path,
        'SELECT i.*, s.polygons, s.model, s."imageWidth", s."imageHeight", s.confidence AS seg_confidence '
        'FROM images i LEFT JOIN segmentations s ON s."imageId" = i.id '
        'WHERE NOT i."isVideoContainer" ORDER BY i."displayOrder", i."createdAt", i.id',
    )


def _parsed(row: dict[str, Any]) -> ImagePolygons:
    parsed = parse_polygons(row["polygons"])
    assert parsed.problems == [], (row["name"], parsed.problems)
    return parsed


def _pixels(demo, row: dict[str, Any]) -> np.ndarray:
    with Image.open(demo.images_root / row["originalPath"]) as im:
        return np.asarray(im.convert("F") if im.mode not in ("I;16", "I") else im).astype(np.float64)


def _mask(ring: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    canvas = Image.new("L", size, 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in ring], fill=255)
    return np.asarray(canvas) > 0


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> dict[str, Any]:
    return {t: build_demo_project(tmp_path_factory.mktemp(t), seed=0, project_type=t) for t in TYPED}


# --------------------------------------------------------------------------------------------------
# the default demo


def test_default_demo_is_unchanged(demo_project, tmp_path: Path) -> None:
    assert demo_project.project_type == "spheroid"
    assert _demo_digest(demo_project.db_path, demo_project.images_root) == SPHEROID_PINS[(12, 0, None)]
    small = build_demo_project(tmp_path, n_images=3, seed=1, size=(320, 240))
    assert _demo_digest(small.db_path, small.images_root) == SPHEROID_PINS[(3, 1, (320, 240))]
    for column, table in (("mtTypeLabels", "projects"), ("frameIntervalMs", "images")):
        values = _rows(small.db_path, f'SELECT "{column}" AS v FROM {table}')
        assert values and all(r["v"] is None for r in values)
    (project,) = _rows(small.db_path, "SELECT type, title FROM projects")
    assert project == {"type": "spheroid", "title": "Demo spheroids"}


# --------------------------------------------------------------------------------------------------
# every type


@pytest.mark.parametrize("project_type", TYPED)
def test_rows_images_and_polygons(demos, project_type: str) -> None:
    demo = demos[project_type]
    assert demo.project_type == project_type and demo.title == f"Demo {project_type}"
    assert demo.db_path == demo.images_root / DEMO_DB_NAME
    (project,) = _rows(demo.db_path, "SELECT * FROM projects")
    assert project["id"] == demo.project_id and project["type"] == project_type
    assert project["title"] == demo.title
    assert (project["mtTypeLabels"] is not None) == (project_type == "microtubules")
    frames = _frames(demo)
    assert len(frames) == DEFAULT_IMAGE_COUNTS[project_type]
    assert all(r["projectId"] == demo.project_id for r in frames)
    for row in frames:
        path = demo.images_root / row["originalPath"]
        assert row["originalPath"].startswith(f"uploads/{demo.project_id}/") and path.is_file()
        assert row["fileSize"] == path.stat().st_size and row["polygons"] is not None
        with Image.open(path) as im:
            im.load()
            size, fmt = im.size, im.format
        assert row["mimeType"] == {"PNG": "image/png", "TIFF": "image/tiff", "JPEG": "image/jpeg"}[fmt]
        if row["width"] is None:
            assert size == DEFAULT_SIZE and row["imageWidth"] is None and row["imageHeight"] is None
        else:
            assert size == (row["width"], row["height"]) == (row["imageWidth"], row["imageHeight"])
        parsed = _parsed(row)
        assert parsed.objects or parsed.polylines
        for obj in parsed.objects:
            assert obj.outer[:, 0].min() >= 0 and obj.outer[:, 0].max() <= size[0] - 1
            assert obj.outer[:, 1].min() >= 0 and obj.outer[:, 1].max() <= size[1] - 1
        for line in parsed.polylines:
            assert line.points[:, 0].min() >= 0 and line.points[:, 0].max() <= size[0] - 1
            assert line.points[:, 1].min() >= 0 and line.points[:, 1].max() <= size[1] - 1
    wound_model = [r["model"] == "wound" for r in frames]
    assert all(wound_model) if project_type == "wound" else not any(wound_model)


@pytest.mark.parametrize("project_type", TYPED)
def test_builds_are_deterministic_and_reused(tmp_path: Path, project_type: str) -> None:
    first = build_demo_project(tmp_path / "a", seed=4, project_type=project_type)
    second = build_demo_project(tmp_path / "b", seed=4, project_type=project_type)

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert first.project_id == second.project_id
    assert files(tmp_path / "a") == files(tmp_path / "b")  # the SQLite file included
    stamp = first.db_path.stat().st_mtime_ns
    assert build_demo_project(tmp_path / "a", seed=4, project_type=project_type) == first
    assert first.db_path.stat().st_mtime_ns == stamp
    other = build_demo_project(tmp_path / "c", seed=5, project_type=project_type)
    assert other.project_id != first.project_id


def test_a_workdir_switches_between_types(tmp_path: Path) -> None:
    sperm = build_demo_project(tmp_path, n_images=2, seed=1, project_type="sperm")
    plain = build_demo_project(tmp_path, n_images=2, seed=1)
    assert plain.project_type == "spheroid" and plain.project_id != sperm.project_id
    (project,) = _rows(plain.db_path, "SELECT id, type FROM projects")
    assert project == {"id": plain.project_id, "type": "spheroid"}
    again = build_demo_project(tmp_path, n_images=2, seed=1, project_type="sperm")
    assert again == sperm
    assert _rows(again.db_path, "SELECT type FROM projects") == [{"type": "sperm"}]


def test_small_and_odd_sizes_build(tmp_path: Path) -> None:
    for project_type in TYPED:
        demo = build_demo_project(tmp_path / project_type, n_images=1, seed=2, size=(320, 200),
                                  project_type=project_type)  # fmt: skip
        (row,) = _frames(demo)
        with Image.open(demo.images_root / row["originalPath"]) as im:
            assert im.size == (320, 200)
        _parsed(row)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="project_type"):
        build_demo_project(tmp_path, project_type="spheroids")
    with pytest.raises(ValueError, match="n_images"):
        build_demo_project(tmp_path, n_images=0, project_type="wound")


def test_cli_demo_takes_a_type() -> None:
    from ray_export.cli import _parser

    args = _parser().parse_args(["demo", "--type", "microtubules"])
    assert args.project_type == "microtubules" and args.images is None
    assert _parser().parse_args(["demo"]).project_type == "spheroid"
    with pytest.raises(SystemExit):
        _parser().parse_args(["demo", "--type", "bacteria"])


# --------------------------------------------------------------------------------------------------
# per type


def test_spheroid_invasive(demos) -> None:
    demo = demos["spheroid_invasive"]
    frames = _frames(demo)
    fragment_counts = []
    for k, row in enumerate(frames):
        parsed = _parsed(row)
        cores = [o for o in parsed.objects if o.part_class == "core"]
        others = [o for o in parsed.objects if o.part_class != "core"]
        assert len(cores) == (0 if k == INVASIVE_NO_CORE_IMAGE else 1)
        mass, fragments = others[0], others[1:]
        assert all(o.complete for o in parsed.objects) and not parsed.orphan_holes
        assert len(fragments) == 2 + 2 * k
        fragment_counts.append(len(fragments))
        mass_area = abs(ring_signed_area(mass.outer))
        assert all(abs(ring_signed_area(f.outer)) < 0.05 * mass_area for f in fragments)
        for core in cores:  # the core lies inside the invading mass
            assert points_in_ring(core.outer, mass.outer).all()
            assert abs(ring_signed_area(core.outer)) < 0.8 * mass_area
        for fragment in fragments:  # fragments are detached from it
            assert not points_in_ring(fragment.outer, mass.outer).any()
            assert not points_in_ring(mass.outer, fragment.outer).any()
        assert len(mass.holes) == (1 if k == INVASIVE_HOLE_IMAGE else 0)
        assert all(not o.holes for o in cores + fragments)

        pixels = _pixels(demo, row)
        size = (pixels.shape[1], pixels.shape[0])
        inside = _mask(mass.outer, size)
        for f in fragments:
            inside |= _mask(f.outer, size)
        background = pixels[~inside].mean()
        assert pixels[_mask(mass.outer, size)].mean() < background - 30
        for core in cores:
            assert pixels[_mask(core.outer, size)].mean() < pixels[_mask(mass.outer, size)].mean() - 20
        for hole in mass.holes:
            assert pixels[_mask(hole, size)].mean() > pixels[_mask(mass.outer, size)].mean()
    assert fragment_counts == sorted(fragment_counts) and fragment_counts[-1] > fragment_counts[0]


def test_wound(demos) -> None:
    demo = demos["wound"]
    frames = _frames(demo)
    assert len(frames) == 8
    created = [r["createdAt"] for r in frames]
    assert [b - a for a, b in itertools.pairwise(created)] == [WOUND_INTERVAL_MS] * 7
    areas = []
    for k, row in enumerate(frames):
        unknown = k == WOUND_NO_SIZE_IMAGE
        assert (row["width"] is None) == unknown and (row["height"] is None) == unknown
        assert (row["imageWidth"] is None) == unknown and (row["imageHeight"] is None) == unknown
        (wound,) = _parsed(row).objects
        assert not wound.holes and wound.complete
        width, height = DEFAULT_SIZE
        assert wound.outer[:, 1].min() == 0 and wound.outer[:, 1].max() == height - 1  # a vertical band
        assert np.ptp(wound.outer[:, 0]) < 0.6 * width
        areas.append(abs(ring_signed_area(wound.outer)))

        pixels = _pixels(demo, row)
        inside = _mask(wound.outer, DEFAULT_SIZE)
        core = inside & np.roll(inside, 4, axis=1) & np.roll(inside, -4, axis=1)
        assert pixels[core].mean() > pixels[~inside].mean() + 25  # cell-free plastic is brighter
        assert pixels[core].std() < pixels[~inside].std()  # and smoother than the monolayer
    assert all(b < a for a, b in itertools.pairwise(areas))  # the wound narrows
    assert areas[-1] < 0.2 * areas[0]  # and nearly closes


def test_sperm(demos) -> None:
    demo = demos["sperm"]
    for k, row in enumerate(_frames(demo)):
        parsed = _parsed(row)
        assert not parsed.objects
        cells: dict[Any, dict[str, np.ndarray]] = {}
        loose = []
        for line in parsed.polylines:
            assert line.part_class in ("head", "midpiece", "tail")
            if line.instance_id is None:
                loose.append(line)
                continue
            assert line.part_class not in cells.setdefault(line.instance_id, {})
            cells[line.instance_id][line.part_class] = line.points
        assert 4 <= len(cells) <= 6
        assert [(x.part_class, k) for x in loose] == ([("tail", k)] if k == SPERM_LOOSE_TAIL_IMAGE else [])
        for instance, parts in cells.items():
            missing = k == SPERM_NO_MIDPIECE_IMAGE and instance == 2
            assert set(parts) == ({"head", "tail"} if missing else {"head", "midpiece", "tail"})
            if not missing:  # connected end to end
                assert np.array_equal(parts["head"][-1], parts["midpiece"][0])
                assert np.array_equal(parts["midpiece"][-1], parts["tail"][0])
            lengths = {p: float(np.hypot(*np.diff(pts, axis=0).T).sum()) for p, pts in parts.items()}
            assert lengths["head"] < lengths["tail"] and 60 < lengths["tail"] < 200
        pixels = _pixels(demo, row)
        background = np.median(pixels)
        for parts in cells.values():
            x, y = np.round(parts["head"].mean(axis=0)).astype(int)
            assert pixels[y, x] < background - 40  # a dark head where the head polyline lies


def test_microcapsule(demos) -> None:
    demo = demos["microcapsule"]
    width, height = DEFAULT_SIZE
    for k, row in enumerate(_frames(demo)):
        parsed = _parsed(row)
        assert not parsed.polylines and parsed.objects
        cut = [o for o in parsed.objects if not o.complete]
        assert len(cut) == 1 + k % 2
        for obj in parsed.objects:
            assert obj.confidence is not None and 0.0 < obj.confidence <= 1.0
            on_border = (obj.outer[:, 0].min() == 0 or obj.outer[:, 0].max() == width - 1
                         or obj.outer[:, 1].min() == 0 or obj.outer[:, 1].max() == height - 1)  # fmt: skip
            assert on_border == (not obj.complete)
            box = np.ptp(obj.outer, axis=0)
            if obj.complete:
                assert 0.7 < box.min() / box.max() <= 1.0  # round or oval
        pixels = _pixels(demo, row)
        inside = np.zeros((height, width), bool)
        for obj in parsed.objects:
            inside |= _mask(obj.outer, DEFAULT_SIZE)
        assert pixels[inside].mean() < pixels[~inside].mean() - 10


def test_microtubules(demos) -> None:
    demo = demos["microtubules"]
    (video,) = _rows(demo.db_path, 'SELECT * FROM images WHERE "isVideoContainer"')
    assert video["name"] and video["parentVideoId"] is None and video["frameIndex"] is None
    assert _rows(demo.db_path, f"SELECT id FROM segmentations WHERE \"imageId\" = '{video['id']}'") == []
    (project,) = _rows(demo.db_path, 'SELECT "mtTypeLabels" FROM projects')
    labels = json.loads(project["mtTypeLabels"])
    assert labels == MT_TYPE_LABELS and all(set(entry) == {"id", "name", "color"} for entry in labels)
    frames = _frames(demo)
    assert [r["frameIndex"] for r in frames] == list(range(8))
    assert all(r["parentVideoId"] == video["id"] for r in frames)
    assert all(r["frameIntervalMs"] == MT_FRAME_INTERVAL_MS for r in frames)
    assert all(b["createdAt"] > a["createdAt"] for a, b in itertools.pairwise(frames))
    tracks: list[dict[Any, Any]] = []
    for row in frames:
        lines = _parsed(row).polylines
        assert 3 <= len(lines) <= 7 and not _parsed(row).objects
        assert all(line.mt_type in {e["id"] for e in labels} for line in lines)
        assert all(line.instance_id is not None and line.track_id is not None for line in lines)
        assert len({line.track_id for line in lines}) == len(lines)
        tracks.append({line.track_id: line for line in lines})

        with Image.open(demo.images_root / row["originalPath"]) as im:
            assert im.format == "TIFF" and im.mode == "I;16"
            pixels = np.asarray(im).astype(np.float64)
        background = np.median(pixels)
        for line in lines:
            x, y = np.round(line.points).astype(int).T
            assert np.median(pixels[y, x]) > background + 1000  # bright where the filaments are
    assert set(tracks[0]) < set(tracks[-1])  # a filament appears during the movie
    for before, after in itertools.pairwise(tracks):
        assert set(before) <= set(after)
        for track, line in before.items():  # the same filament moves only slightly
            moved = after[track]
            assert moved.mt_type == line.mt_type and moved.instance_id == line.instance_id
            assert np.hypot(*(moved.points[0] - line.points[0])) < 6.0


@pytest.mark.postgres
def test_microtubules_demo_copies_to_postgres(demos, postgres_dsn: str) -> None:
    import psycopg

    demo = demos["microtubules"]
    copy_project_to_postgres(demo.db_path, postgres_dsn)
    with psycopg.connect(postgres_dsn) as conn:
        (labels,) = conn.execute('SELECT "mtTypeLabels" FROM projects WHERE id = %s', (demo.project_id,)).fetchone()
        frames = conn.execute(
            'SELECT "frameIndex", "parentVideoId", "frameIntervalMs", "isVideoContainer" FROM images '
            'WHERE "projectId" = %s ORDER BY "frameIndex" NULLS FIRST',
            (demo.project_id,),
        ).fetchall()
    assert json.loads(labels) == MT_TYPE_LABELS
    (video_id,) = [r["id"] for r in _rows(demo.db_path, 'SELECT id FROM images WHERE "isVideoContainer"')]
    assert frames[0][3] is True and frames[0][0] is None
    assert [r[0] for r in frames[1:]] == list(range(8))
    assert all(r[1] == video_id and r[2] == MT_FRAME_INTERVAL_MS and r[3] is False for r in frames[1:])
