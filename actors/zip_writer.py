"""The ZIP-writer actor: assembles the export ZIP from per-image stage results.

:class:`ExportAssembler` is plain Python (unit-tested without Ray); :class:`ZipWriterActor` is the thin
Ray actor around it, pinned to the driver's node by the pipeline.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from actors.zipstream import ReorderBuffer, ZipStreamWriter
from ray_export.documents import ExportReportWriter, ExportSummary, metadata_json, readme_markdown
from ray_export.formats.coco import CocoWriter, coco_image_entry
from ray_export.formats.json_export import JsonExportWriter
from ray_export.formats.metrics_files import (
    MetricsCsvWriter,
    MetricsJsonWriter,
    MetricsParquetWriter,
    MetricsXlsxWriter,
)
from ray_export.formats.yolo import data_yaml_text
from ray_export.metrics import metrics_guide_markdown
from ray_export.naming import image_member, label_member, visualization_member
from ray_export.options import is_uri
from ray_export.problems import Problem


@dataclass
class AssemblyPlan:
    """What the assembler writes: fixed by the driver before the first entry."""

    output: str
    export_time: datetime
    total_images: int
    include_originals: bool
    include_visualizations: bool
    annotations: tuple[str, ...]
    metrics: tuple[str, ...]
    include_docs: bool
    viz_extension: str
    scale_um_per_px: float | None
    summary: ExportSummary
    coco_info: dict
    #: per-image problems found on the driver (renamed members), by index
    driver_problems: dict[int, list[dict]] = field(default_factory=dict)
    unknown_image_ids: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: most images held back waiting for an earlier index (blocks arrive in order; this is a safety bound)
    max_buffered_images: int = 256
    #: an existing folder for spooled members, made by the driver (which deletes it on cancel or failure);
    #: empty: a new folder beside a local output
    spool_dir: str = ""


_METRIC_MEMBERS = {
    "csv": "metrics/metrics.csv",
    "xlsx": "metrics/metrics.xlsx",
    "json": "metrics/metrics.json",
    "parquet": "metrics/metrics.parquet",
}


class ExportAssembler:
    """Streams per-image members into ``<output>.partial`` in index order; aggregated members at the end."""

    def __init__(self, plan: AssemblyPlan) -> None:
        self.plan = plan
        # an output given as a pyarrow.fs URI (s3://…, gs://…, file://…) rather than a path
        self.remote_output = plan.output if is_uri(plan.output) else None
        if plan.spool_dir:
            self.spool = Path(plan.spool_dir)
        elif self.remote_output:
            self.spool = Path(tempfile.mkdtemp(prefix=".ray-export-spool-"))
        else:
            out = Path(plan.output)
            self.spool = Path(tempfile.mkdtemp(prefix=f".{out.name}.spool-", dir=out.parent))
        # An object-store output is assembled in the spool folder and uploaded once complete.
        local_zip = self.spool / "export.zip" if self.remote_output else Path(plan.output)
        try:
            self.zip = ZipStreamWriter(local_zip, plan.export_time)
        except BaseException:
            shutil.rmtree(self.spool, ignore_errors=True)
            raise
        self.buffer = ReorderBuffer()
        self.released = 0
        self.counts = dict.fromkeys(
            ("images", "objects", "polylines", "polylines_not_in_yolo", "metric_rows", "visualizations"), 0
        )
        self.images_with_files = 0
        self.problem_count = 0
        self.report = ExportReportWriter()
        self.report.add_unknown_image_ids(list(plan.unknown_image_ids))
        for note in plan.notes:
            self.report.add_note(note)
        self.coco = CocoWriter(plan.coco_info, spool_dir=self.spool) if "coco" in plan.annotations else None
        export_time_text = plan.summary.export_time
        self.json_export = (
            JsonExportWriter(export_time_text, spool_dir=self.spool) if "json" in plan.annotations else None
        )
        scaled = plan.scale_um_per_px is not None
        self._metric_files: dict[str, Any] = {}
        self.metric_writers: list[Any] = []
        for fmt in plan.metrics:
            fh = open(self.spool / f"metrics.{fmt}", "wb")  # noqa: SIM115 - closed in finish/abort
            self._metric_files[fmt] = fh
            if fmt == "csv":
                writer = MetricsCsvWriter(fh, scaled)
            elif fmt == "xlsx":
                writer = MetricsXlsxWriter(fh, scaled, plan.export_time, tmpdir=str(self.spool))
            elif fmt == "json":
                writer = MetricsJsonWriter(fh, scaled, plan.scale_um_per_px)
            else:
                writer = MetricsParquetWriter(fh, scaled, plan.scale_um_per_px)
            self.metric_writers.append(writer)

    # ------------------------------------------------------------------ per image
    def add_batch(self, table: pa.Table) -> int:
        """Accept one batch of stage results; writes every image that is next in index order."""
        written = 0
        for row in _rows(table):
            for index, item in self.buffer.put(int(row["index"]), row):
                self._write_image(index, item)
                written += 1
        if self.buffer.pending > self.plan.max_buffered_images:
            raise RuntimeError(
                f"{self.buffer.pending} images wait for image {self.buffer.next_index}, more than the bound of "
                f"{self.plan.max_buffered_images} (max_buffered_images)"
            )
        return written

    @property
    def pending(self) -> int:
        """Images held back waiting for an earlier index."""
        return self.buffer.pending

    def _write_image(self, index: int, row: dict) -> None:
        plan = self.plan
        stem = row["stem"]
        if row.get("original") is not None:
            self.images_with_files += 1
            if plan.include_originals:
                self.zip.add_bytes(image_member(row["file_name"]), row["original"])
        if plan.include_visualizations and row.get("visualization") is not None:
            self.zip.add_bytes(visualization_member(stem, plan.viz_extension), row["visualization"])
            self.counts["visualizations"] += 1
        if "yolo" in plan.annotations:
            self.zip.add_bytes(label_member(stem), (row.get("yolo_label") or "").encode("utf-8"))
        if self.coco is not None:
            annotations = json.loads(row["coco_annotations"]) if row.get("coco_annotations") else []
            entry = coco_image_entry(index, row["file_name"], int(row["width"]), int(row["height"]))
            self.coco.add_image(entry, annotations)
        if self.json_export is not None:
            # every selected image is listed, even one whose entry could not be made
            entry = json.loads(row["json_entry"]) if row.get("json_entry") else {
                "index": index, "image_id": row["image_id"], "file_name": row["file_name"],
                "width": int(row["width"]), "height": int(row["height"]),
                "objects": [], "polylines": [], "orphan_holes": [],
            }  # fmt: skip
            self.json_export.add_image(entry)
        if self.metric_writers and row.get("metric_rows"):
            metric_rows = json.loads(row["metric_rows"])
            if metric_rows:
                for writer in self.metric_writers:
                    writer.write_rows(metric_rows)
                self.counts["metric_rows"] += len(metric_rows)
        problems = list(plan.driver_problems.get(index, []))
        if row.get("problems"):
            problems += json.loads(row["problems"])
        if problems:
            found = [Problem(p["code"], p["stage"], p["message"]) for p in problems]
            self.report.add_image(index, row["image_id"], row["file_name"], found)
        self.problem_count += len(problems)
        self.counts["images"] += 1
        self.counts["objects"] += int(row.get("n_objects") or 0)
        n_polylines = int(row.get("n_polylines") or 0)
        self.counts["polylines"] += n_polylines
        if "yolo" in plan.annotations:
            self.counts["polylines_not_in_yolo"] += n_polylines
        self.released += 1

    # ------------------------------------------------------------------ the end
    def finish(self) -> dict:
        """Write the aggregated members, commit the ZIP and return the final counts."""
        plan = self.plan
        if self.released != plan.total_images:
            raise RuntimeError(
                f"only {self.released} of {plan.total_images} images reached the writer "
                f"({self.buffer.pending} waiting for an earlier index)"
            )
        if self.coco is not None:
            self._add_spooled("annotations/coco/annotations.json", self.coco.write)
        if self.json_export is not None:
            self._add_spooled("annotations/json/segmentation_data.json", self.json_export.write)
        if "yolo" in plan.annotations:
            self.zip.add_bytes("data.yaml", data_yaml_text().encode("utf-8"))
        for fmt, writer in zip(plan.metrics, self.metric_writers, strict=True):
            writer.close()
            self._metric_files[fmt].close()
            self.zip.add_file(_METRIC_MEMBERS[fmt], self.spool / f"metrics.{fmt}")
        counts = {
            "images": self.counts["images"],
            "objects": self.counts["objects"],
            "polylines_not_in_yolo": self.counts["polylines_not_in_yolo"],
            "problems": self.problem_count,
        }
        summary = replace(
            plan.summary,
            counts={
                **counts,
                "images_with_files": self.images_with_files,
                "polylines": self.counts["polylines"],
                "metric_rows": self.counts["metric_rows"],
                "visualizations": self.counts["visualizations"],
            },
        )
        if plan.include_docs:
            self.zip.add_bytes("documentation/README.md", readme_markdown(summary).encode("utf-8"))
            guide = metrics_guide_markdown(plan.scale_um_per_px)
            self.zip.add_bytes("documentation/metrics_guide.md", guide.encode("utf-8"))
            self.zip.add_bytes("documentation/metadata.json", metadata_json(summary))
        self._add_spooled("documentation/export_report.json", lambda fh: self.report.write(fh, counts))
        size = self.zip.commit()
        if self.remote_output:
            upload_file(self.spool / "export.zip", self.remote_output)
        self._cleanup()
        return {**summary.counts, "bytes": size}

    def _add_spooled(self, member: str, write) -> None:
        path = self.spool / (member.replace("/", "_") + ".spool")
        with open(path, "wb") as fh:
            write(fh)
        self.zip.add_file(member, path)
        path.unlink()

    def abort(self) -> None:
        """Remove the partial output and every spool file; never raises."""
        try:
            self.zip.abort()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        for fh in self._metric_files.values():
            with contextlib.suppress(Exception):
                fh.close()
        for closer in (self.coco, self.json_export):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        shutil.rmtree(self.spool, ignore_errors=True)

    @property
    def bytes_written(self) -> int:
        """Current size of the partial file."""
        return self.zip.bytes_written


_BLOB_COLUMNS = ("original", "visualization")


def _rows(table: pa.Table) -> list[dict]:
    """Rows as dicts; image bytes stay zero-copy views of the Arrow buffers instead of Python copies."""
    blobs = [c for c in _BLOB_COLUMNS if c in table.column_names]
    small = {c: table.column(c).to_pylist() for c in table.column_names if c not in blobs}
    blob_columns = {c: table.column(c).combine_chunks() for c in blobs}
    rows = []
    for i in range(table.num_rows):
        row = {c: values[i] for c, values in small.items()}
        for c, array in blob_columns.items():
            scalar = array[i]
            row[c] = memoryview(scalar.as_buffer()) if scalar.is_valid else None
        rows.append(row)
    return rows


def upload_file(local: Path, uri: str, chunk: int = 8 << 20) -> None:
    """Copy a finished local file to ``uri``; a failed upload deletes whatever reached the destination.

    With S3 and GCS one output stream is one multipart upload, completed when the stream closes.
    """
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    stream = fs.open_output_stream(path)
    try:
        with open(local, "rb") as src:
            while block := src.read(chunk):
                stream.write(block)
        stream.close()
    except BaseException:
        # Closing is the only way to end the stream (it completes a multipart upload); do it now, while
        # we still hold it, and delete the result, rather than let a later destructor complete it.
        with contextlib.suppress(Exception):
            stream.close()
        del stream
        with contextlib.suppress(Exception):
            fs.delete_file(path)
        raise


@ray.remote(num_cpus=0, max_restarts=0)
class ZipWriterActor:
    """Ray actor wrapper of :class:`ExportAssembler` (sync: one call at a time, as zipfile needs)."""

    def __init__(self, plan: AssemblyPlan) -> None:
        self.assembler = ExportAssembler(plan)

    def add_batch(self, table: pa.Table) -> tuple[int, int, int]:
        """(images written now, problems those images carry, bytes written so far)."""
        before = self.assembler.problem_count
        written = self.assembler.add_batch(table)
        return written, self.assembler.problem_count - before, self.assembler.bytes_written

    def finish(self) -> dict:
        return self.assembler.finish()

    def abort(self) -> None:
        self.assembler.abort()
