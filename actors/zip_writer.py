"""The ZIP-writer actor: assembles the export ZIP from per-image stage results.

:class:`ExportAssembler` is plain Python (unit-tested without Ray); :class:`ZipWriterActor` is the thin
Ray actor around it, pinned to the driver's node by the pipeline. The assembler opens one writer per
selected format of :mod:`ray_export.formats.registry` and drives them all through the same lifecycle.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pyarrow as pa
import ray

from actors.zipstream import ReorderBuffer, ZipStreamWriter
from ray_export.documents import ExportSummary
from ray_export.formats.base import FormatWriter, Selection, WriterContext
from ray_export.formats.registry import check_result_schema, result_schema, selected_formats
from ray_export.options import is_uri


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
    #: an existing folder for spooled members, made by the driver (which deletes it on cancel or failure)
    spool_dir: str
    #: per-image problems found on the driver (renamed members), by index
    driver_problems: dict[int, list[dict]] = field(default_factory=dict)
    unknown_image_ids: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: most images held back waiting for an earlier index (blocks arrive in order; this is a safety bound)
    max_buffered_images: int = 256
    #: where a local output is written before its final rename (None: ``<output>.partial``)
    partial_path: str | None = None
    #: the final rename may replace an output that appeared while the export ran (``--force``)
    replace: bool = True


#: Export totals, in the order they are reported.
COUNT_NAMES = (
    "images", "objects", "polylines_not_in_yolo", "polylines_not_in_coco", "problems", "images_with_files",
    "polylines", "metric_rows", "visualizations",
)  # fmt: skip

_BLOB_COLUMNS = ("original", "visualization")


class ExportAssembler:
    """Streams per-image members into a partial file in index order (beside a local output, or in the spool
    folder for an object-store output), then the aggregated members."""

    def __init__(self, plan: AssemblyPlan) -> None:
        if not plan.spool_dir:
            raise ValueError("the assembly plan needs a spool folder")
        self.plan = plan
        # an output given as a pyarrow.fs URI (s3://…, gs://…, file://…) rather than a path
        self.remote_output = plan.output if is_uri(plan.output) else None
        self.spool = Path(plan.spool_dir)
        self.formats = selected_formats(Selection.of(plan))
        self.schema = result_schema(self.formats)
        self.counts = dict.fromkeys(COUNT_NAMES, 0)
        for fmt in self.formats:
            self.counts.update({name: 0 for name in fmt.counts if name not in self.counts})
        self.buffer = ReorderBuffer()
        self.released = 0
        self.writers: list[FormatWriter] = []
        # An object-store output is assembled in the spool folder and uploaded once complete.
        try:
            if self.remote_output:
                self.zip = ZipStreamWriter(self.spool / "export.zip", plan.export_time)
            else:
                self.zip = ZipStreamWriter(
                    Path(plan.output), plan.export_time, partial_path=plan.partial_path, replace=plan.replace
                )
        except BaseException:
            shutil.rmtree(self.spool, ignore_errors=True)
            raise
        context = WriterContext(
            zip=self.zip,
            spool=self.spool,
            export_time=plan.export_time,
            export_time_text=plan.summary.export_time,
            scale_um_per_px=plan.scale_um_per_px,
            viz_extension=plan.viz_extension,
            coco_info=plan.coco_info,
            counts=self.counts,
            selection=Selection.of(plan),
            unknown_image_ids=tuple(plan.unknown_image_ids),
            notes=tuple(plan.notes),
        )
        try:
            for fmt in self.formats:
                self.writers.append(fmt.open_writer(context))
        except BaseException:
            self.abort()
            raise

    # ------------------------------------------------------------------ per image
    def add_batch(self, table: pa.Table) -> int:
        """Accept one batch of stage results; writes every image that is next in index order.

        Raises :class:`~ray_export.formats.registry.ResultSchemaError` when a column the selected formats
        need is missing or has another type.
        """
        check_result_schema(table.schema, self.schema)
        written = 0
        for row in _rows(table, self.schema.names):
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

    @property
    def problem_count(self) -> int:
        """Per-image problems of the images written so far."""
        return self.counts["problems"]

    def _write_image(self, index: int, row: dict) -> None:
        row["problems"] = list(self.plan.driver_problems.get(index, [])) + (row["problems"] or [])
        for writer in self.writers:
            writer.add(row)
        counts = self.counts
        counts["images"] += 1
        counts["objects"] += int(row["n_objects"])
        counts["polylines"] += int(row["n_polylines"])
        counts["problems"] += len(row["problems"])
        counts["metric_rows"] += len(row.get("metric_rows") or ())
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
        summary = replace(plan.summary, counts=dict(self.counts))
        for writer in self.writers:
            writer.finish(summary)
        size = self.zip.commit()
        if self.remote_output:
            upload_file(self.spool / "export.zip", self.remote_output)
        shutil.rmtree(self.spool, ignore_errors=True)
        return {**summary.counts, "bytes": size}

    def abort(self) -> None:
        """Remove the partial output and every spool file; never raises."""
        try:
            self.zip.abort()
        finally:
            for writer in self.writers:
                with contextlib.suppress(Exception):
                    writer.abort()
            shutil.rmtree(self.spool, ignore_errors=True)

    @property
    def bytes_written(self) -> int:
        """Current size of the partial file."""
        return self.zip.bytes_written


def _rows(table: pa.Table, columns: list[str]) -> list[dict]:
    """The named columns as row dicts; image bytes stay zero-copy views of the Arrow buffers."""
    blobs = [c for c in columns if c in _BLOB_COLUMNS]
    small = {c: table.column(c).to_pylist() for c in columns if c not in blobs}
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
    """Copy a finished local file to ``uri``; a failed upload leaves nothing at the destination.

    An ``s3://`` destination is one multipart upload made with boto3 where boto3 is installed: a failure
    aborts it, so no object and no stored part remain. pyarrow's output streams cannot abort (closing
    one completes its multipart upload), so without boto3, and for other schemes, a failed upload is
    closed and the object it made is deleted: the partial object exists for a moment (and stays as an
    old version in a versioned bucket), and an upload whose part S3 refused stays incomplete, for the
    bucket's lifecycle rule to remove.
    """
    client = _s3_client(uri)
    if client is not None:
        _upload_s3(client, local, uri, chunk)
        return
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


#: S3's limits on a multipart upload: the smallest part but the last, and the most parts.
_S3_MIN_PART, _S3_MAX_PARTS = 5 << 20, 10_000


def _s3_client(uri: str) -> Any | None:
    """A boto3 S3 client for an ``s3://`` URI as pyarrow reads it; ``None`` for other URIs or without boto3.

    pyarrow's URI carries the credentials as ``access_key:secret_key@`` and ``region``, ``scheme``,
    ``endpoint_override`` and ``tls_ca_file_path`` in the query; what it leaves out comes, for both, from the
    standard AWS environment variables and configuration files.
    """
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        return None
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        return None
    query = dict(parse_qsl(parts.query))
    kwargs: dict[str, Any] = {}
    if parts.username:
        kwargs["aws_access_key_id"] = unquote(parts.username)
        kwargs["aws_secret_access_key"] = unquote(parts.password or "")
    if query.get("region"):
        kwargs["region_name"] = query["region"]
    if query.get("tls_ca_file_path"):
        kwargs["verify"] = query["tls_ca_file_path"]
    if query.get("endpoint_override"):
        endpoint = query["endpoint_override"]
        if "://" not in endpoint:
            endpoint = f"{query.get('scheme') or 'https'}://{endpoint}"
        kwargs["endpoint_url"] = endpoint
    # pyarrow addresses buckets by path unless told otherwise, which S3-compatible servers expect
    config = Config(s3={"addressing_style": "path"})
    return boto3.session.Session().client("s3", config=config, **kwargs)


def _upload_s3(client: Any, local: Path, uri: str, chunk: int) -> None:
    """One multipart upload of ``local`` to ``uri``, aborted when any step fails."""
    parts = urlsplit(uri)
    bucket, key = parts.netloc.rpartition("@")[2], unquote(parts.path.lstrip("/"))
    size = local.stat().st_size
    part_size = max(chunk, _S3_MIN_PART, -(-size // _S3_MAX_PARTS))
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, ContentType="application/zip")["UploadId"]
    try:
        done: list[dict[str, Any]] = []
        with open(local, "rb") as src:
            # an empty file is one empty part: S3 completes no upload without a part
            while (block := src.read(part_size)) or not done:
                number = len(done) + 1
                reply = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=block)
                done.append({"PartNumber": number, "ETag": reply["ETag"]})
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done})
    except BaseException:
        with contextlib.suppress(Exception):
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise

#: Prefix of the writer actor's name (followed by the export id), in the progress actors' namespace.
WRITER_ACTOR_PREFIX = "ray_export_writer_"
#: How often the writer looks at the driver's heartbeat (through the progress actor).
DRIVER_WATCH_PERIOD_S = 2.0


def writer_actor_name(export_id: str) -> str:
    """Name of the ZIP-writer actor of ``export_id``."""
    return WRITER_ACTOR_PREFIX + export_id


def driver_gone(snapshot: dict | None, unreachable_s: float, timeout_s: float) -> bool:
    """Whether the writer should give up its export: the progress actor reports it ended (a lost driver
    heartbeat counts as ``failed``), or has not answered for longer than the heartbeat timeout."""
    if snapshot is None:
        return unreachable_s > timeout_s
    return snapshot.get("state") in ("succeeded", "failed", "cancelled")


def release_dead_lock(output: Path) -> None:
    """Remove the lock file of ``output`` when no live export holds it (its driver died)."""
    from ray_export.output_lock import OutputLock

    lock = OutputLock(output, "ended")
    with contextlib.suppress(Exception):
        lock.acquire()
        lock.release()


@ray.remote(num_cpus=0, max_restarts=0)
class ZipWriterActor:
    """Ray actor wrapper of :class:`ExportAssembler` (sync: one call at a time, as zipfile needs).

    Created detached, so that a driver killed outright does not take it down mid-write: with
    ``export_id``, a thread watches the driver's heartbeat through the progress actor and, once the export
    ended without the writer being stopped (the driver died), removes the partial file and spool folder and
    ends the actor's process.
    """

    def __init__(self, plan: AssemblyPlan, export_id: str | None = None) -> None:
        self.assembler = ExportAssembler(plan)
        if export_id:
            threading.Thread(
                target=self._watch_driver, args=(export_id,), name="ray-export-driver-watch", daemon=True
            ).start()

    def _watch_driver(self, export_id: str) -> None:
        from actors.progress import HEARTBEAT_TIMEOUT_S, get_progress_actor

        last_answer = time.monotonic()
        while True:
            time.sleep(DRIVER_WATCH_PERIOD_S)
            snapshot = None
            with contextlib.suppress(Exception):
                actor = get_progress_actor(export_id)
                if actor is not None:
                    snapshot = ray.get(actor.snapshot.remote(), timeout=10)
            if snapshot is not None:
                last_answer = time.monotonic()
            if driver_gone(snapshot, time.monotonic() - last_answer, HEARTBEAT_TIMEOUT_S):
                self.assembler.abort()  # a no-op for the partial once committed
                if not self.assembler.remote_output:
                    release_dead_lock(Path(self.assembler.plan.output))
                os._exit(0)

    def add_batch(self, table: pa.Table) -> tuple[int, int, int]:
        """(images written now, problems those images carry, bytes written so far)."""
        before = self.assembler.problem_count
        written = self.assembler.add_batch(table)
        return written, self.assembler.problem_count - before, self.assembler.bytes_written

    def finish(self) -> dict:
        return self.assembler.finish()

    def abort(self) -> None:
        self.assembler.abort()
