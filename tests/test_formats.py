"""The format registry: option names, member paths, the writer lifecycle and an added format end to end."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from actors.zip_writer import AssemblyPlan, ExportAssembler
from ray_export import options, stages
from ray_export.documents import ExportSummary
from ray_export.formats import registry
from ray_export.formats.base import ImageInput, ImagePart, OutputFormat, ReadmeSection, Selection, WriterContext
from ray_export.formats.coco import CocoWriter, coco_annotations_for_image, coco_image_entry, dumps_compact
from ray_export.polygons import parse_polygons

SQUARE = [{"type": "external", "points": [{"x": 2, "y": 2}, {"x": 12, "y": 2}, {"x": 12, "y": 9}, {"x": 2, "y": 9}]}]
LINE = [{"geometry": "polyline", "points": [{"x": 1, "y": 1}, {"x": 8, "y": 3}]}]


def test_option_lists_are_the_registered_formats_in_their_listed_order():
    assert options.ANNOTATION_FORMATS == ("coco", "yolo", "json")
    assert options.METRIC_FORMATS == ("csv", "xlsx", "json", "parquet")
    assert options.STAGE_NAMES == ("read", "copy", "visualize", "annotate", "metrics")


def test_every_member_path_and_folder_is_declared_once():
    paths = [m for fmt in registry.FORMATS for m in fmt.members] + [f.folder for f in registry.FORMATS if f.folder]
    assert len(paths) == len(set(paths))
    assert len({fmt.name for fmt in registry.FORMATS}) == len(registry.FORMATS)


def test_selection_picks_formats_in_zip_order():
    names = [fmt.name for fmt in registry.selected_formats(Selection(annotations=("json", "coco"), metrics=("csv",)))]
    assert names == ["originals", "unreadable", "visualizations", "coco", "json", "metrics_csv", "readme",
                     "metrics_guide", "metadata", "export_report", "manifest"]
    bare = Selection(originals=False, visualizations=False, docs=False)
    assert [fmt.name for fmt in registry.selected_formats(bare)] == ["export_report", "manifest"]


def test_spliced_annotation_ids_give_the_bytes_of_numbered_dicts():
    parsed = parse_polygons(json.dumps(SQUARE + SQUARE + LINE))
    per_image = {index: coco_annotations_for_image(index, parsed, 20, 12)[0] for index in (1, 2)}
    as_dicts, spliced = CocoWriter({"description": "t"}), CocoWriter({"description": "t"})
    for index, made in per_image.items():
        entry = coco_image_entry(index, f"{index}.png", 20, 12)
        as_dicts.add_image(entry, made)
        encoded = [dumps_compact(a).encode() for a in made]
        spliced.add_encoded(entry, encoded)
    first, second = io.BytesIO(), io.BytesIO()
    as_dicts.write(first)
    spliced.write(second)
    assert first.getvalue() == second.getvalue()
    document = json.loads(second.getvalue())
    assert [a["id"] for a in document["annotations"]] == [1, 2, 3, 4]
    assert [c["id"] for c in document["categories"]] == [1]


# ------------------------------------------------------------------------------- an added format

COUNTS_MEMBER = "annotations/object_counts.csv"


class ObjectCountsWriter:
    """One line per image: its file name and number of objects."""

    def __init__(self, ctx: WriterContext) -> None:
        self.ctx = ctx
        self.lines: list[str] = []

    def add(self, row) -> None:
        self.lines.append(row["object_count_line"])
        self.ctx.counts["object_count_lines"] += 1

    def finish(self, summary) -> None:
        self.ctx.zip.add_bytes(COUNTS_MEMBER, ("file_name,objects\n" + "".join(self.lines)).encode())

    def abort(self) -> None:
        self.lines.clear()


def _count_line(image: ImageInput) -> tuple[str, list]:
    return f"{image.file_name},{len(image.parsed.objects)}\n", []


OBJECT_COUNTS = OutputFormat(
    name="object_counts",
    chosen_by="annotations",
    choice="object_counts",
    open_writer=ObjectCountsWriter,
    members=(COUNTS_MEMBER,),
    part=ImagePart(stage="annotate", column="object_count_line", type=pa.string(), compute=_count_line,
                   label="object counts"),
    describe=lambda summary: {COUNTS_MEMBER: "object count of every image"},
    readme=(ReadmeSection("loading", 50, lambda summary: ["### Object counts", "", f"`{COUNTS_MEMBER}`", ""]),),
    counts=("object_count_lines",),
    option_rank=3,
)


@pytest.fixture
def object_counts_format():
    with registry.registered(OBJECT_COUNTS, after="yolo") as fmt:
        yield fmt


def test_a_registered_format_reaches_the_zip_its_readme_and_metadata(tmp_path: Path, object_counts_format):
    chosen = ("coco", "object_counts")
    assert registry.annotation_format_names() == ("coco", "yolo", "json", "object_counts")
    # the options accept the added format by its name, as flags and options files do
    chosen_options = options.build_options({"db": "x.db", "project": "p", "annotations": "coco,object_counts"})
    chosen_options.validate()
    assert chosen_options.annotations == chosen
    source = pa.table({
        "index": pa.array([1, 2], pa.int64()), "image_id": ["a", "b"], "file_name": ["a.png", "b.png"],
        "stem": ["a", "b"], "original_path": pa.array([None, None], pa.string()),
        "db_width": pa.array([20, 20], pa.int64()), "db_height": pa.array([12, 12], pa.int64()),
        "seg_width": pa.array([None, None], pa.int64()), "seg_height": pa.array([None, None], pa.int64()),
        "polygons": [json.dumps(SQUARE + SQUARE), json.dumps(LINE)],
    })  # fmt: skip
    table = stages.copy_stage(source, str(tmp_path), read_files=False)
    table = stages.finish_stage(stages.annotate_stage(table, chosen))
    kinds = {"originals": False, "visualizations": False, "annotations": list(chosen), "metrics": [], "docs": True}
    summary = ExportSummary(
        project_id="p", project_title="T", project_type="spheroid", export_time="2024-05-06T07:08:09.000000Z",
        content_options=kinds, counts={}, scale_um_per_px=None, scale_source="pixels", members=kinds,
    )  # fmt: skip
    spool = tmp_path / "spool"
    spool.mkdir()
    plan = AssemblyPlan(
        output=str(tmp_path / "out.zip"), export_time=datetime(2024, 5, 6, tzinfo=timezone.utc), total_images=2,
        include_originals=False, include_visualizations=False, annotations=chosen, metrics=(), include_docs=True,
        viz_extension=".png", scale_um_per_px=None, summary=summary, coco_info={}, spool_dir=str(spool),
    )  # fmt: skip
    assembler = ExportAssembler(plan)
    assembler.add_batch(table)
    counts = assembler.finish()
    assert counts["object_count_lines"] == 2
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        names = zf.namelist()
        assert zf.read(COUNTS_MEMBER) == b"file_name,objects\na.png,2\nb.png,0\n"
        readme = zf.read("documentation/README.md").decode()
        metadata = json.loads(zf.read("documentation/metadata.json"))
    assert names.index(COUNTS_MEMBER) == names.index("annotations/instances_default.json") + 1
    assert f"| `{COUNTS_MEMBER}` | object count of every image |" in readme
    assert "### Object counts" in readme and "| object_count_lines | 2 |" in readme
    assert metadata["options"]["annotations"] == ["coco", "object_counts"]
    assert metadata["counts"]["object_count_lines"] == 2
    assert COUNTS_MEMBER in metadata["members"]
    members = metadata["members"]
    assert members.index(COUNTS_MEMBER) == members.index("annotations/instances_default.json") + 1


def test_an_added_format_leaves_the_table_when_done(object_counts_format):
    assert registry.format_named("object_counts") is object_counts_format
    with pytest.raises(ValueError, match="already registered"), registry.registered(OBJECT_COUNTS):
        pass


def test_the_added_format_is_gone_afterwards():
    assert "object_counts" not in [fmt.name for fmt in registry.FORMATS]
    with pytest.raises(options.OptionError, match="annotations"):
        options.build_options({"db": "x.db", "project": "p", "annotations": "object_counts"}).validate()
