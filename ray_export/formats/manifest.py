"""``documentation/export_manifest.parquet``, always written: what a later export needs to take over the
images that did not change (``--reuse``; see :mod:`ray_export.reuse`).

One row per image in index order: its index, id and member names, its two fingerprints, its size,
whether it decodes, its object and polyline counts, its problems, the members it got (format and
name), and the per-image parts of the aggregated members (COCO annotations, JSON export entry,
metric rows). The file's metadata holds the project id, the manifest layout version, the content
options and software versions and their fingerprints. No paths, hosts or credentials: fingerprints are
SHA-256 digests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from ..output_files import spool_file
from ..problems import PROBLEMS_TYPE
from ..reuse import MANIFEST_MEMBER
from .base import OutputFormat, ReadmeSection, WriterContext

MEMBER = MANIFEST_MEMBER
#: Rows per Parquet row group: fixed, so the bytes do not depend on how results were batched.
ROWS_PER_GROUP = 1024

MEMBER_TYPE = pa.list_(pa.struct([pa.field("format", pa.string()), pa.field("name", pa.string())]))

#: Columns of every manifest, before the parts of the selected formats.
BASE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("index", pa.int64()),
    pa.field("image_id", pa.string()),
    pa.field("file_name", pa.string()),
    pa.field("stem", pa.string()),
    pa.field("member_fingerprint", pa.string()),
    pa.field("parts_fingerprint", pa.string()),
    pa.field("width", pa.int64()),
    pa.field("height", pa.int64()),
    pa.field("decodable", pa.bool_()),
    pa.field("n_objects", pa.int64()),
    pa.field("n_polylines", pa.int64()),
    pa.field("problems", PROBLEMS_TYPE),
    pa.field("members", MEMBER_TYPE),
)


def manifest_schema(part_fields: list[pa.Field], metadata: Mapping[str, str]) -> pa.Schema:
    """The manifest's schema for these parts, carrying ``metadata``."""
    return pa.schema([*BASE_FIELDS, *part_fields], metadata=dict(metadata))


def manifest_part_fields(formats: Iterable[OutputFormat]) -> list[pa.Field]:
    """The per-image parts the manifest keeps: those of formats without a per-image folder that are made
    by the annotate or metrics stage (they feed aggregated members), each column once."""
    fields: dict[str, pa.Field] = {}
    for fmt in formats:
        part = fmt.part
        if part is not None and not fmt.folder and part.stage in ("annotate", "metrics"):
            fields.setdefault(part.column, pa.field(part.column, part.type))
    return list(fields.values())


class ManifestWriter:
    """Streams one row per image into a spooled Parquet file and adds it to the ZIP at the end."""

    def __init__(self, ctx: WriterContext) -> None:
        self.ctx = ctx
        self.part_fields = manifest_part_fields(ctx.formats)
        self.schema = manifest_schema(self.part_fields, ctx.manifest_metadata)
        self.file = spool_file(ctx.spool)
        self.rows: list[dict[str, Any]] = []
        self.writer: Any = None

    def add(self, row: Mapping[str, Any]) -> None:
        """Record the image (its problems as the stages gave them, before the driver's own)."""
        record = {field.name: row.get(field.name) for field in BASE_FIELDS}
        record["problems"] = row.get("pipeline_problems", row["problems"])
        record["members"] = [{"format": fmt, "name": name} for fmt, name in row.get("members", ())]
        for field in self.part_fields:
            record[field.name] = row.get(field.name)
        self.rows.append(record)
        if len(self.rows) >= ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            self.writer = pq.ParquetWriter(self.file, self.schema, compression="zstd")
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema), row_group_size=ROWS_PER_GROUP)
        self.rows = []

    def finish(self, summary: Any) -> None:
        """Write the last rows and add the manifest."""
        self._flush()
        self.writer.close()
        self.ctx.zip.add_file(MEMBER, self.file)
        self.file.close()

    def abort(self) -> None:
        """Close the spool (it has no name)."""
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        with contextlib.suppress(Exception):
            self.file.close()


def _readme_schema(summary: Any) -> list[str]:
    return [
        "### Export manifest (`documentation/export_manifest.parquet`)",
        "",
        "What `ray-export export --reuse THIS.zip` needs to take over the images that did not change: one "
        "row per image (index, id, member names, the member and parts fingerprints, size, whether it "
        "decodes, object and polyline counts, problems, the members it got, and the per-image parts of "
        "the aggregated files). The member fingerprint is a SHA-256 over the image's database fields "
        "(`updatedAt` included) and its original file (size and SHA-256, or size and modification time); "
        "the parts fingerprint adds the index, the names and the scale. The file's metadata names the "
        "project, the content options and the software versions. It holds no paths, hosts or credentials.",
        "",
    ]


FORMAT = OutputFormat(
    name="manifest",
    chosen_by="always",
    open_writer=ManifestWriter,
    members=(MEMBER,),
    describe=lambda summary: {
        MEMBER: "per-image fingerprints and parts that let a later export reuse unchanged images (`--reuse`)"
    },
    readme=(ReadmeSection("schema", 90, _readme_schema),),
)
