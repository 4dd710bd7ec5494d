"""README.md, metadata.json and export_report.json."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from ray_export.documents import (
    ExportSummary,
    aggregated_member_names,
    format_export_time,
    metadata_json,
    readme_markdown,
    software_versions,
)
from ray_export.formats.base import Selection
from ray_export.formats.coco import MEMBER as COCO_MEMBER
from ray_export.formats.export_report import MEMBER as REPORT_MEMBER
from ray_export.formats.export_report import NOTE_CODES, ExportReportWriter
from ray_export.formats.json_export import MEMBER as JSON_EXPORT_MEMBER
from ray_export.formats.metadata import MEMBER as METADATA_MEMBER
from ray_export.formats.originals import FOLDER as IMAGES_FOLDER
from ray_export.formats.readme import MEMBER as README_MEMBER
from ray_export.formats.visualizations import FOLDER as VISUALIZATIONS_FOLDER
from ray_export.formats.yolo import DATA_YAML_MEMBER, LABELS_FOLDER
from ray_export.json_text import json_safe
from ray_export.options import build_options
from ray_export.problems import PROBLEM_CODES, Problem
from ray_export.reuse import MANIFEST_MEMBER

PINNED_SOFTWARE = {
    "ray_export": "0.1.0",
    "python": "3.11.7",
    "numpy": "2.0.0",
    "pyarrow": "16.0.0",
    "opencv": "4.10.0",
    "pycocotools": "2.0.8",
    "xlsxwriter": "3.2.0",
    "pillow": "10.4.0",
}
SECRET_DB = "postgresql://labadmin:hunter2@db.lab.internal:5432/spheroseg"


def make_summary(**option_overrides: object) -> ExportSummary:
    options = build_options(
        {
            "db": SECRET_DB,
            "project": "p",
            "images_root": "/srv/spheroseg/uploads",
            "output": "/home/alice/exports/out.zip",
            "address": "ray://10.0.0.5:10001",
            "scale": 0.65,
            **option_overrides,
        },
        {},
    )
    counts = {
        "images": 4, "images_with_files": 3, "visualizations": 2, "objects": 9, "polylines": 1,
        "polylines_not_in_yolo": 1, "metric_rows": 8, "problems": 2,
    }  # fmt: skip
    # The caller passes content options; extra keys (even secrets) must never reach the documents.
    leaky_options = {
        **options.content_options(),
        "db": options.db,
        "images_root": options.images_root,
        "output": options.output,
        "address": options.address,
        "password": "hunter2",
    }
    return ExportSummary(
        project_id="0b8f6a52-1111-4c3e-9f00-5d1f5f3ea001",
        project_title="Spheroids | batch *7*",
        project_type="spheroid",
        export_time="2026-01-02T03:04:05.123000Z",
        content_options=leaky_options,
        counts=counts,
        scale_um_per_px=options.scale_um_per_px,
        scale_source="option",
        members=(),
        software_versions=PINNED_SOFTWARE,
    )


FORBIDDEN = ("hunter2", "labadmin", "db.lab.internal", "postgresql://", "/srv/spheroseg", "/home/alice", "10.0.0.5")


def test_metadata_has_no_locations_or_credentials() -> None:
    data = metadata_json(make_summary())
    text = data.decode("utf-8")
    for secret in FORBIDDEN:
        assert secret not in text
    parsed = json.loads(text)
    assert set(parsed) == {
        "metadata_version", "project", "export_time", "options", "counts", "members", "scale", "software"
    }
    assert "documentation/metadata.json" in parsed["members"] and "images/" in parsed["members"]
    assert "db" not in parsed["options"] and "password" not in parsed["options"]
    assert parsed["project"] == {
        "id": "0b8f6a52-1111-4c3e-9f00-5d1f5f3ea001",
        "title": "Spheroids | batch *7*",
        "type": "spheroid",
    }
    assert parsed["export_time"] == "2026-01-02T03:04:05.123000Z"
    assert parsed["scale"] == {"um_per_px": 0.65, "source": "option", "length_unit": "um", "area_unit": "um^2"}
    assert parsed["software"] == PINNED_SOFTWARE
    assert parsed["counts"]["objects"] == 9 and parsed["counts"]["metric_rows"] == 8
    assert parsed["options"]["annotations"] == ["coco", "yolo", "json"]
    assert parsed["options"]["visualization"]["external_color"] == "#FF0000"


def test_metadata_bytes_are_deterministic_and_sorted() -> None:
    first = metadata_json(make_summary())
    second = metadata_json(make_summary())
    assert first == second
    assert first.endswith(b"}\n") and not first.endswith(b"\n\n")
    parsed = json.loads(first)
    assert list(parsed) == sorted(parsed)
    assert first == (json.dumps(parsed, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def test_metadata_pixels_scale() -> None:
    summary = make_summary(scale=None)
    summary = dataclasses.replace(summary, scale_um_per_px=None, scale_source="pixels")
    parsed = json.loads(metadata_json(summary))
    assert parsed["scale"] == {"um_per_px": None, "source": "pixels", "length_unit": "px", "area_unit": "px^2"}
    assert parsed["options"]["scale"] is None


def test_json_safe_converts_numpy_and_nan() -> None:
    value = {"a": np.float64(1.5), "b": np.int64(3), "c": float("nan"), "d": (1, np.float32(0.5)), "e": np.bool_(True)}
    assert json_safe(value) == {"a": 1.5, "b": 3, "c": None, "d": [1, 0.5], "e": True}
    assert type(json_safe(np.float64(2.0))) is float


def test_readme_lists_only_present_members_and_no_secrets() -> None:
    summary = make_summary(annotations="coco", metrics="csv", originals=False)
    text = readme_markdown(summary)
    for secret in FORBIDDEN:
        assert secret not in text
    assert f"`{COCO_MEMBER}`" in text and "`metrics/metrics.csv`" in text
    assert f"`{JSON_EXPORT_MEMBER}`" not in text and f"| `{DATA_YAML_MEMBER}`" not in text
    assert "metrics.parquet" not in text and "metrics.xlsx" not in text
    assert f"| `{IMAGES_FOLDER}`" not in text  # originals off
    assert f"| `{VISUALIZATIONS_FOLDER}`" in text
    assert "annToMask" in text and "Ultralytics" not in text
    assert "0.65 µm per pixel" in text and "`um^2`" in text
    assert "2026-01-02T03:04:05.123000Z" in text
    assert r"Spheroids \| batch \*7\*" in text  # title escaped for Markdown
    for code in PROBLEM_CODES:
        assert f"`{code}`" in text


def test_readme_full_export_describes_every_format() -> None:
    text = readme_markdown(make_summary())
    for needle in (
        "pycocotools", "annToMask", "Ultralytics", "data.yaml", "read_parquet", "read_csv", "read_excel",
        "Polygon Metrics", "Summary", "## JSON export schema", "orphan_holes", "## Object numbers",
        "complete: false", "export_report.json", "byte-identical",
    ):  # fmt: skip
        assert needle in text, needle
    assert text == readme_markdown(make_summary())
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_member_list_and_aggregated_order() -> None:
    everything = Selection(annotations=("coco", "yolo", "json"), metrics=("csv", "xlsx", "json", "parquet"))
    assert aggregated_member_names(everything) == [
        COCO_MEMBER,
        JSON_EXPORT_MEMBER,
        DATA_YAML_MEMBER,
        "metrics/metrics.csv",
        "metrics/metrics.xlsx",
        "metrics/metrics.json",
        "metrics/metrics.parquet",
        README_MEMBER,
        "documentation/metrics_guide.md",
        METADATA_MEMBER,
        REPORT_MEMBER,
        MANIFEST_MEMBER,
    ]
    assert aggregated_member_names(Selection(originals=False, visualizations=False, docs=False)) == [
        REPORT_MEMBER, MANIFEST_MEMBER
    ]
    options = build_options({"db": "x.db", "project": "p"}, {})
    summary = dataclasses.replace(
        make_summary(), content_options=options.content_options(),
        counts={"images": 2, "images_with_files": 0, "visualizations": 1},
    )  # fmt: skip
    assert summary.member_list()[:3] == (VISUALIZATIONS_FOLDER, LABELS_FOLDER, COCO_MEMBER)


def test_format_export_time() -> None:
    moment = datetime(2026, 1, 2, 4, 4, 5, 123000, tzinfo=timezone(timedelta(hours=1)))
    assert format_export_time(moment) == "2026-01-02T03:04:05.123000Z"
    assert format_export_time(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05.000000Z"


def test_software_versions_keys() -> None:
    versions = software_versions()
    assert {"ray_export", "python", "numpy", "pyarrow", "pycocotools", "xlsxwriter", "pillow"} <= set(versions)
    assert all(isinstance(v, str) and v for v in versions.values())


def problem(code: str, message: str = "m", stage: str = "parse") -> Problem:
    return Problem(code, stage, message)


def build_report() -> ExportReportWriter:
    writer = ExportReportWriter()
    writer.add_image(7, "id-7", "g.png", [problem("file_missing", "images/g.png", "copy")])
    writer.add_image(2, "id-2", "b.png", [])  # no problems: not listed
    writer.add_image(3, "id-3", "c.png", [problem("points_not_finite", "first"), problem("hole_orphan", "second")])
    writer.add_image(3, "id-3", "c.png", [problem("render_failed", "third", "visualize")])
    writer.add_unknown_image_ids(["zz", "aa", "zz"])
    writer.add_note("scale_pixels", "images have different pixelSizeUm")
    writer.add_note("unknown_image_ids", "2 ids were not exported")
    return writer


def test_report_schema_and_ordering() -> None:
    writer = build_report()
    buffer = io.BytesIO()
    returned = writer.write(
        buffer, {"images": 9, "objects": 12, "polylines_not_in_yolo": 1, "polylines_not_in_coco": 2, "problems": 999}
    )
    report = json.loads(buffer.getvalue())
    assert report == returned
    assert list(report) == ["images", "unknown_image_ids", "notes", "counts", "problem_codes"]
    assert [entry["index"] for entry in report["images"]] == [3, 7]
    assert list(report["images"][0]) == ["index", "image_id", "image_name", "problems"]
    assert report["images"][0]["problems"] == [
        {"code": "points_not_finite", "stage": "parse", "message": "first"},
        {"code": "hole_orphan", "stage": "parse", "message": "second"},
        {"code": "render_failed", "stage": "visualize", "message": "third"},
    ]
    assert report["unknown_image_ids"] == ["aa", "zz"]
    assert report["notes"] == [
        {"code": "scale_pixels", "message": "images have different pixelSizeUm"},
        {"code": "unknown_image_ids", "message": "2 ids were not exported"},
    ]
    assert report["counts"] == {
        "images": 9, "objects": 12, "polylines_not_in_yolo": 1, "polylines_not_in_coco": 2, "problems": 4,
    }  # fmt: skip
    assert report["problem_codes"] == PROBLEM_CODES
    assert writer.problem_count == 4 and writer.image_count == 2


def _report_bytes(writer: ExportReportWriter, counts: dict) -> bytes:
    out = io.BytesIO()
    writer.write(out, counts)
    return out.getvalue()


def test_report_bytes_independent_of_add_order() -> None:
    counts = {"images": 9, "objects": 12, "polylines_not_in_yolo": 1}
    forward = ExportReportWriter()
    backward = ExportReportWriter()
    entries = [(i, f"id-{i}", f"{i}.png", [problem("file_missing", f"{i}.png", "copy")]) for i in range(1, 6)]
    for entry in entries:
        forward.add_image(*entry)
    for entry in reversed(entries):
        backward.add_image(*entry)
    assert _report_bytes(forward, counts) == _report_bytes(backward, counts)
    assert _report_bytes(forward, counts).endswith(b"\n")


def test_empty_report() -> None:
    report = json.loads(_report_bytes(ExportReportWriter(), {}))
    assert report["images"] == [] and report["unknown_image_ids"] == [] and report["notes"] == []
    assert report["counts"] == {
        "images": 0, "objects": 0, "polylines_not_in_yolo": 0, "polylines_not_in_coco": 0, "problems": 0,
    }  # fmt: skip


def test_problem_rejects_unknown_code() -> None:
    with pytest.raises(ValueError):
        problem("not_a_code")


def test_summary_with_count_mapping_and_member_kinds() -> None:
    base = make_summary()
    kinds = {
        "originals": True,
        "visualizations": True,
        "visualization_format": "jpeg",
        "annotations": ["coco"],
        "metrics": [],
        "docs": True,
    }
    counts = {"images": 2, "objects": 3, "polylines_not_in_yolo": 0, "problems": 1, "images_with_files": 0}
    summary = dataclasses.replace(base, counts=counts, members=kinds)
    assert summary.member_list() == (
        VISUALIZATIONS_FOLDER,  # no visualization count recorded: listed because the option is on
        COCO_MEMBER,
        README_MEMBER,
        "documentation/metrics_guide.md",
        METADATA_MEMBER,
        REPORT_MEMBER,
        MANIFEST_MEMBER,
    )
    text = readme_markdown(summary)
    assert "`<stem>_viz.jpg`" in text and "| objects | 3 |" in text and "images_with_files | 0" in text
    assert json.loads(metadata_json(summary))["counts"] == dict(sorted(counts.items()))
    derived = dataclasses.replace(base, members=())
    assert derived.member_list() == base.member_list()


def test_report_note_forms() -> None:
    writer = ExportReportWriter()
    writer.add_note("scale: images have no common pixelSizeUm")
    writer.add_note("scale_pixels")
    writer.add_note("custom", "text")
    assert json.loads(_report_bytes(writer, {}))["notes"] == [
        {"code": "note", "message": "scale: images have no common pixelSizeUm"},
        {"code": "scale_pixels", "message": NOTE_CODES["scale_pixels"]},
        {"code": "custom", "message": "text"},
    ]


def test_readme_loads_coco_from_the_standard_layout() -> None:
    text = readme_markdown(make_summary())
    assert COCO_MEMBER == "annotations/instances_default.json"
    assert f'coco = COCO("{COCO_MEMBER}")' in text and f"| `{COCO_MEMBER}` |" in text
    assert "annotations/instances_<subset>.json" in text and "annotations/coco/" not in text
