"""The unpacked ZIP loads in the tools users already have: pycocotools, supervision, FiftyOne, Datumaro
and Ultralytics, on the demo project and on a project full of edge cases; Label Studio's converter takes
the COCO file written with ``coco_holes: polygons``.

Run with ``pytest -m interop`` after installing the ``interop`` extra; a loader that is not installed
skips its own tests.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from ray_export.api import export
from tests.projects import segmentation_row, write_sqlite_project

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("ray_session")]

COCO_MEMBER = "annotations/instances_default.json"
JSON_MEMBER = "annotations/json/segmentation_data.json"
# Fields of the label classes that common loaders build from COCO annotations; an extra attribute
# with one of these names is passed twice to their constructors.
LOADER_LABEL_FIELDS = {"confidence", "label", "bounding_box", "mask", "index", "id", "tags", "attributes"}

# Network-free settings for loaders that phone home or fetch assets when they are imported or run.
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("YOLO_OFFLINE", "true")


# --------------------------------------------------------------------------------------------------
# the edge-case project


def _points(coords: list[tuple[float, float]]) -> list[dict[str, float]]:
    return [{"x": float(x), "y": float(y)} for x, y in coords]


def _box(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _circle(cx: float, cy: float, r: float, n: int = 48) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n)) for k in range(n)]


def _external(element_id: str, ring: list[tuple[float, float]], **extra: Any) -> dict[str, Any]:
    return {"id": element_id, "type": "external", "points": _points(ring), "confidence": 0.9, **extra}


def _hole(parent_id: str, ring: list[tuple[float, float]]) -> dict[str, Any]:
    return {"type": "internal", "parent_id": parent_id, "points": _points(ring)}


def _write_image(path: Path, width: int, height: int, seed: int, ext: str = ".png") -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(40, 200, size=(height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(ext, pixels)
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())


def build_edge_case_project(root: Path) -> tuple[Path, Path]:
    """A SQLite project with holes, polylines, an incomplete object, two images named ``cells.png``,
    a missing file, a path escaping the images root, an undecodable file and an image without
    segmentation. Returns ``(database, images root)``."""
    uploads = root / "uploads"
    _write_image(uploads / "a" / "cells.png", 96, 72, 1)
    _write_image(uploads / "b" / "cells.png", 80, 60, 2)
    _write_image(uploads / "plain.jpg", 120, 90, 3, ".jpg")
    _write_image(uploads / "empty.png", 64, 48, 4)
    _write_image(root / "outside.png", 64, 48, 5)  # exists, but outside the images root
    (uploads / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png at all" * 4)

    square = [_external("s", _box(8, 8, 40, 36))]
    polygons = {
        "a": [
            _external("a1", _box(5, 5, 45, 45)),
            _hole("a1", _box(15, 15, 30, 30)),
            _external("a2", [(55, 10), (90, 12), (70, 40)]),
            _external("a3", _box(60, 50, 96, 72), complete=False),
            {"type": "external", "geometry": "polyline", "points": _points([(5, 60), (40, 66), (50, 55)])},
        ],
        "b": [
            _external("b1", _circle(40, 30, 25)),
            _hole("b1", _circle(40, 30, 10)),
            _external("b2", _box(2, 2, 10, 10)),
        ],
        "missing": square,
        "escape": square,
        "corrupt": square,
        "plain": [
            _external("p1", _box(10, 10, 70, 70)),
            _hole("p1", _box(20, 20, 35, 35)),
            _hole("p1", _box(45, 40, 60, 60)),
            _external("p2", _circle(95, 45, 18)),
            {"type": "external", "geometry": "polyline", "points": _points([(80, 80), (110, 85)])},
        ],
    }
    images = [
        ("a", "cells.png", "a/cells.png", 96, 72),
        ("b", "cells.png", "b/cells.png", 80, 60),
        ("missing", "missing.png", "missing.png", 64, 48),
        ("escape", "escape.png", "../outside.png", 64, 48),
        ("corrupt", "corrupt.png", "corrupt.png", 64, 48),
        ("plain", "plain.jpg", "plain.jpg", 120, 90),
        ("empty", "empty.png", "empty.png", 64, 48),
    ]
    db = uploads / "edge.db"
    segmentations = [
        segmentation_row(image_id, json.dumps(elements), id=f"s-{image_id}", model="m", threshold=0.5)
        for image_id, elements in polygons.items()
    ]
    write_sqlite_project(db, ("p1", "Edge cases"), images, segmentations)
    return db, uploads


# --------------------------------------------------------------------------------------------------
# the exported datasets


@dataclass
class Dataset:
    """An export unpacked into a folder, with its parsed COCO, JSON export and metrics."""

    name: str
    root: Path
    coco: dict[str, Any]
    json_export: dict[str, Any]
    metrics_rows: list[dict[str, Any]]

    @property
    def coco_path(self) -> Path:
        return self.root / COCO_MEMBER

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def labels_dir(self) -> Path:
        return self.root / "labels"

    @property
    def data_yaml(self) -> Path:
        return self.root / "data.yaml"

    def dataset_images(self) -> list[dict[str, Any]]:
        """The JSON export's images that the dataset formats reference (those listed in COCO)."""
        listed = {image["file_name"] for image in self.coco["images"]}
        return [image for image in self.json_export["images"] if image["file_name"] in listed]

    def expected_objects(self) -> int:
        """Objects of the dataset images, counted from the metrics rows (complete objects) plus the
        JSON export's incomplete objects, which have no metrics row."""
        images = self.dataset_images()
        ids = {image["image_id"] for image in images}
        measured = sum(1 for row in self.metrics_rows if row["image_id"] in ids)
        incomplete = sum(1 for image in images for obj in image["objects"] if obj["complete"] is False)
        return measured + incomplete


def _export_and_unpack(name: str, db: Path, project: str, images_root: Path, workdir: Path) -> Dataset:
    out = workdir / f"{name}.zip"
    export(db=str(db), project=project, images_root=str(images_root), output=str(out))
    root = workdir / name
    with zipfile.ZipFile(out) as zf:
        zf.extractall(root)
    return Dataset(
        name=name,
        root=root,
        coco=json.loads((root / COCO_MEMBER).read_text()),
        json_export=json.loads((root / JSON_MEMBER).read_text()),
        metrics_rows=json.loads((root / "metrics" / "metrics.json").read_text())["rows"],
    )


@pytest.fixture(scope="module", params=["demo", "edge_cases"])
def dataset(request, tmp_path_factory) -> Dataset:
    workdir = tmp_path_factory.mktemp(f"interop-{request.param}")
    if request.param == "demo":
        demo = request.getfixturevalue("demo_project")
        return _export_and_unpack("demo", demo.db_path, demo.project_id, demo.images_root, workdir)
    db, images_root = build_edge_case_project(workdir / "project")
    return _export_and_unpack("edge_cases", db, "p1", images_root, workdir)


def _decodes(path: Path) -> bool:
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as img:
            img.load()
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# the layout every loader relies on


def test_dataset_formats_reference_only_decodable_images(dataset: Dataset) -> None:
    present = sorted(p.name for p in dataset.images_dir.iterdir() if _decodes(p))
    assert sorted(p.name for p in dataset.images_dir.iterdir()) == present
    assert sorted(image["file_name"] for image in dataset.coco["images"]) == present
    assert sorted(p.stem for p in dataset.labels_dir.glob("*.txt")) == sorted(Path(n).stem for n in present)
    if dataset.name == "edge_cases":
        assert present == ["cells.png", "cells_2.png", "empty.png", "plain.jpg"]
        # the undecodable original is kept, outside images/
        assert (dataset.root / "unreadable" / "corrupt.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\nthis is")


def test_coco_holds_instance_masks_only_with_safe_attribute_names(dataset: Dataset) -> None:
    cell_ids = {c["id"] for c in dataset.coco["categories"] if c["name"] == "cell"}
    assert len(cell_ids) == 1
    for ann in dataset.coco["annotations"]:
        assert ann["category_id"] in cell_ids
        assert ann["area"] > 0
        assert not set(ann.get("attributes", {})) & LOADER_LABEL_FIELDS
    polylines = sum(len(image["polylines"]) for image in dataset.json_export["images"])
    assert polylines >= 1  # both projects have polylines: they are in the JSON export only
    objects = sum(len(image["objects"]) for image in dataset.dataset_images())
    assert len(dataset.coco["annotations"]) == objects == dataset.expected_objects()


# --------------------------------------------------------------------------------------------------
# pycocotools


def _self_evaluation(gt: Any, iou_type: str) -> float:
    from pycocotools.cocoeval import COCOeval

    if iou_type == "segm":
        detections = [
            {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": gt.annToRLE(a), "score": 1.0}
            for a in gt.dataset["annotations"]
        ]
    else:
        detections = [
            {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt.dataset["annotations"]
        ]
    evaluation = COCOeval(gt, gt.loadRes(detections), iou_type)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return float(evaluation.stats[0])


def test_pycocotools_decodes_every_annotation_and_scores_ap_1(dataset: Dataset) -> None:
    from pycocotools.coco import COCO

    gt = COCO(str(dataset.coco_path))
    assert gt.dataset["annotations"]
    for ann in gt.dataset["annotations"]:
        image = gt.imgs[ann["image_id"]]
        mask = gt.annToMask(ann)
        assert mask.shape == (image["height"], image["width"])
        assert int(mask.sum()) == ann["area"] > 0
    for iou_type in ("segm", "bbox"):
        assert _self_evaluation(gt, iou_type) == pytest.approx(1.0, abs=1e-9), iou_type


# --------------------------------------------------------------------------------------------------
# supervision


def _count_detections(loaded: Any) -> dict[str, int]:
    counts = {}
    for image_path, image, detections in loaded:
        assert image is not None and image.ndim == 3
        assert detections.mask is not None or len(detections) == 0
        counts[Path(image_path).name] = len(detections)
    return counts


def test_supervision_loads_yolo_and_coco_with_the_same_objects(dataset: Dataset) -> None:
    sv = pytest.importorskip("supervision", reason="the interop extra (supervision) is not installed")
    from_yolo = sv.DetectionDataset.from_yolo(
        images_directory_path=str(dataset.images_dir),
        annotations_directory_path=str(dataset.labels_dir),
        data_yaml_path=str(dataset.data_yaml),
        force_masks=True,
    )
    from_coco = sv.DetectionDataset.from_coco(
        images_directory_path=str(dataset.images_dir),
        annotations_path=str(dataset.coco_path),
        force_masks=True,
    )
    assert from_yolo.classes == from_coco.classes == ["cell"]
    yolo_counts = _count_detections(from_yolo)
    coco_counts = _count_detections(from_coco)
    expected = {image["file_name"]: len(image["objects"]) for image in dataset.dataset_images()}
    assert yolo_counts == coco_counts == expected
    assert sum(yolo_counts.values()) == dataset.expected_objects()


# --------------------------------------------------------------------------------------------------
# FiftyOne


def test_fiftyone_coco_importer_loads_every_sample(dataset: Dataset) -> None:
    fouc = pytest.importorskip("fiftyone.utils.coco", reason="the interop extra (fiftyone) is not installed")
    importer = fouc.COCODetectionDatasetImporter(data_path=str(dataset.images_dir), labels_path=str(dataset.coco_path))
    samples = {}
    with importer:
        for image_path, _metadata, labels in importer:
            # an image without annotations gets no label fields at all
            detections = labels.get("detections")
            segmentations = labels.get("segmentations")
            samples[Path(image_path).name] = 0 if detections is None else len(detections.detections)
            if segmentations is not None:
                assert all(det.mask is not None and det.mask.any() for det in segmentations.detections)
    expected = {image["file_name"]: len(image["objects"]) for image in dataset.dataset_images()}
    assert samples == expected


# --------------------------------------------------------------------------------------------------
# Datumaro


def test_datumaro_finds_and_imports_the_coco_dataset_at_the_zip_root(dataset: Dataset) -> None:
    dm = pytest.importorskip("datumaro", reason="the interop extra (datumaro) is not installed")
    assert "coco_instances" in dm.Environment().detect_dataset(str(dataset.root))
    imported = dm.Dataset.import_from(str(dataset.root), "coco_instances")
    # one COCO annotation may become several Datumaro shapes of the same id (polygon parts)
    items = {Path(item.media.path).name: len({ann.id for ann in item.annotations}) for item in imported}
    expected = {image["file_name"]: len(image["objects"]) for image in dataset.dataset_images()}
    assert items == expected


# --------------------------------------------------------------------------------------------------
# Ultralytics


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def ultralytics_logger(tmp_path_factory) -> Iterator[logging.Logger]:
    """Ultralytics with its settings in a temporary folder; returns its logger. The plotting font that
    checking a dataset looks for is provided there, so that no download is tried."""
    config_dir = tmp_path_factory.mktemp("ultralytics-config")
    (config_dir / "Ultralytics").mkdir()
    (config_dir / "Ultralytics" / "Arial.ttf").write_bytes(b"")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("YOLO_CONFIG_DIR", str(config_dir))
        pytest.importorskip("ultralytics", reason="the interop extra (ultralytics) is not installed")
        from ultralytics.utils import LOGGER

        yield LOGGER


@pytest.fixture
def ultralytics_log(ultralytics_logger: logging.Logger) -> Iterator[_Captured]:
    """Everything Ultralytics logs during the test."""
    captured = _Captured()
    ultralytics_logger.addHandler(captured)
    try:
        yield captured
    finally:
        ultralytics_logger.removeHandler(captured)


def test_ultralytics_checks_and_loads_every_sample(dataset: Dataset, ultralytics_log: _Captured) -> None:
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(dataset.data_yaml))
    assert data["names"] == {0: "cell"}
    assert Path(data["train"]) == dataset.images_dir
    loaded = YOLODataset(img_path=data["train"], data=data, task="segment", augment=False, imgsz=128, batch_size=1)
    counts = {}
    for k in range(len(loaded)):
        sample = loaded[k]
        counts[Path(sample["im_file"]).name] = len(sample["cls"])
        assert sample["masks"].shape[0] in (1, len(sample["cls"]))
    expected = {image["file_name"]: len(image["objects"]) for image in dataset.dataset_images()}
    assert counts == expected
    noisy = [m for m in ultralytics_log.messages if "corrupt" in m.lower() or "ignoring" in m.lower()]
    assert noisy == []


# --------------------------------------------------------------------------------------------------
# Label Studio (label-studio-converter reads COCO polygons only)

_LABEL_STUDIO_CONVERTER = (
    "import sys\n"
    "from label_studio_converter.main import main\n"
    "sys.argv[0] = 'label-studio-converter'\n"
    "sys.exit(main())\n"
)


def _label_studio_import(coco_path: Path, tasks_path: Path) -> subprocess.CompletedProcess[str]:
    """``label-studio-converter import coco -i COCO -o TASKS``."""
    arguments = ["import", "coco", "-i", str(coco_path), "-o", str(tasks_path)]
    command = [sys.executable, "-c", _LABEL_STUDIO_CONVERTER, *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tasks_path.parent)


def _mask(segmentation: Any, width: int, height: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, dict):
        return mask_utils.decode(segmentation)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))


def test_label_studio_imports_objects_with_holes_as_bridged_polygons(tmp_path_factory) -> None:
    pytest.importorskip("label_studio_converter", reason="the interop extra (label-studio-converter) is not installed")
    workdir = tmp_path_factory.mktemp("interop-label-studio")
    db, images_root = build_edge_case_project(workdir / "project")
    coco_files = {}
    for mode in ("rle", "polygons"):
        out = workdir / f"{mode}.zip"
        export(db=str(db), project="p1", images_root=str(images_root), output=str(out), coco_holes=mode)
        coco_files[mode] = workdir / f"{mode}.json"
        with zipfile.ZipFile(out) as zf:
            coco_files[mode].write_bytes(zf.read(COCO_MEMBER))
    with_rle = json.loads(coco_files["rle"].read_text())
    holed = [ann for ann in with_rle["annotations"] if ann["attributes"]["holes"]]
    assert len(holed) == 3 and all(isinstance(ann["segmentation"], dict) for ann in holed)

    # compressed RLE stops the converter at the first object with holes: nothing is imported
    refused = _label_studio_import(coco_files["rle"], workdir / "rle-tasks.json")
    assert refused.returncode != 0 and "KeyError: 0" in refused.stderr
    assert not (workdir / "rle-tasks.json").exists()

    # bridged polygons: every object comes through, its polygon filling the same pixels as the RLE
    converted = _label_studio_import(coco_files["polygons"], workdir / "tasks.json")
    assert converted.returncode == 0, converted.stderr
    tasks = json.loads((workdir / "tasks.json").read_text())
    images = {image["file_name"]: image for image in with_rle["images"]}
    assert sorted(task["data"]["image"].rsplit("/", 1)[1] for task in tasks) == sorted(images)
    imported = 0
    for task in tasks:
        image = images[task["data"]["image"].rsplit("/", 1)[1]]
        width, height = image["width"], image["height"]
        expected = [ann for ann in with_rle["annotations"] if ann["image_id"] == image["id"]]
        polygons = [item for item in task["annotations"][0]["result"] if item["type"] == "polygonlabels"]
        assert len(polygons) == len(expected)
        for item, ann in zip(polygons, expected, strict=True):
            assert item["value"]["polygonlabels"] == ["cell"]
            flat = [[c for x, y in item["value"]["points"] for c in (x * width / 100.0, y * height / 100.0)]]
            mask = _mask(flat, width, height)
            assert np.array_equal(mask, _mask(ann["segmentation"], width, height))
            assert mask.sum() == ann["area"]
        imported += len(polygons)
    assert imported == len(with_rle["annotations"]) == 7


# --------------------------------------------------------------------------------------------------
# Microtubule projects: the CVAT files of an export


def test_datumaro_imports_every_filament_of_a_microtubule_export(tmp_path_factory) -> None:
    dm = pytest.importorskip("datumaro", reason="the interop extra (datumaro) is not installed")
    from ray_export.demo import build_demo_project

    work = tmp_path_factory.mktemp("mt-interop")
    demo = build_demo_project(work / "demo", project_type="microtubules")
    out = work / "mt.zip"
    export(db=str(demo.db_path), project=demo.project_id, output=str(out))
    with zipfile.ZipFile(out) as archive:
        frames = json.loads(archive.read(JSON_MEMBER))["images"]
        [member] = [name for name in archive.namelist() if name.startswith("annotations/cvat/")]
        root = work / "cvat"
        (root / "images").mkdir(parents=True)
        (root / "annotations.xml").write_bytes(archive.read(member))
    import xml.etree.ElementTree as ET

    for image in ET.fromstring((root / "annotations.xml").read_bytes()).iter("image"):
        (root / "images" / image.get("name")).write_bytes(b"")  # the frames as CVAT names them
    imported = dm.Dataset.import_from(str(root), "cvat")
    labels = [category.name for category in imported.categories()[dm.AnnotationType.label]]
    assert set(labels) == {"dynamic", "stable"}
    lines = sorted(
        (int(image["file_name"].rsplit("_t", 1)[1][:3]), np.round(np.asarray(line["points"], np.float32), 2).tolist())
        for image in frames
        for line in image["polylines"]
    )
    got = sorted(
        (int(item.attributes["frame"]), np.reshape(ann.points, (-1, 2)).tolist())
        for item in imported
        for ann in item.annotations
        if ann.type == dm.AnnotationType.polyline
    )
    assert len(got) == len(lines)
    for (frame, points), (got_frame, got_points) in zip(lines, got, strict=True):
        assert frame == got_frame
        np.testing.assert_allclose(got_points, points, atol=1e-4, rtol=0)
