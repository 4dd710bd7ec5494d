"""The ZIP-writer actor: assembles the export ZIP from per-image stage results.

:class:`ExportAssembler` is plain Python (unit-tested without Ray); :class:`ZipWriterActor` is the thin
Ray actor around it, pinned to the driver's node by the pipeline. The assembler opens one writer per
selected format of :mod:`ray_export.formats.registry` and drives them all through the same lifecycle.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np
import pyarrow as pa
import ray

from actors.zipstream import ReorderBuffer, ZipOutputError, ZipStreamWriter
from ray_export.documents import ExportSummary
from ray_export.formats.base import FormatWriter, OutputFormat, Selection, WriterContext
from ray_export.formats.manifest import manifest_part_fields
from ray_export.formats.registry import check_result_schema, result_schema, selected_formats
from ray_export.heap import release_free_heap
from ray_export.locations import is_uri
from ray_export.output_files import release_dead_lock
from ray_export.reuse import (
    ALL_REUSED,
    COMPUTE_REASONS,
    COMPUTED,
    MANIFEST_VERSION,
    MEMBERS_REUSED,
    PreviousChanged,
    StoredEntry,
    changed_message,
    check_identity,
    identity_of,
    identity_of_open,
    merge_reused_problems,
    open_binary,
    options_fingerprint,
    read_manifest,
    software_fingerprint,
    stored_entry_of,
)


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
    #: the existing folder the writer makes its unnamed spool files in (the output's folder for a local
    #: output); nothing in it is named or removed by the export
    spool_dir: str
    #: per-image problems found on the driver (renamed members), by index
    driver_problems: dict[int, list[dict]] = field(default_factory=dict)
    unknown_image_ids: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: most images held back waiting for an earlier index (blocks arrive in order; this is a safety bound)
    max_buffered_images: int = 256
    #: the partial file's name where the file system cannot make unnamed files (None: a private name)
    partial_path: str | None = None
    #: the final rename may replace an output that appeared while the export ran (``--force``)
    replace: bool = True
    #: the trusted previous export (path or URI) whose manifest holds the parts of reused images
    reuse_location: str | None = None
    #: the project type the export uses (see :mod:`ray_export.project_types`)
    project_type: str = "spheroid"
    #: what the project type's outputs need to know about the project and the options
    type_context: dict[str, Any] = field(default_factory=dict)


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
        self.counts = new_counts(self.formats)
        self.buffer = ReorderBuffer()
        self.released = 0
        self.writers: list[FormatWriter] = []
        self.zip = self._open_zip()
        self.recorder = MemberRecorder(self.zip)
        if self.zip is not None:  # reused entries' data is copied by the kernel while members are assembled
            self.zip.background_copies = True
        self.previous: PreviousManifest | None = None
        self.reuse_counts = new_reuse_counts()
        self.part_fields = manifest_part_fields(self.formats)
        context = WriterContext(
            zip=self.recorder,
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
            manifest_metadata=manifest_metadata_of(plan.summary),
            formats=tuple(self.formats),
            type_context=dict(plan.type_context),
        )
        try:
            self.previous = PreviousManifest(plan.reuse_location, self.part_fields) if plan.reuse_location else None
            self.recorder.source = self.previous
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
        rows = _rows(table, self.schema.names)
        if self.previous is not None:
            self.previous.fetch([row["image_id"] for row in rows if row.get("reuse_level")])
        for row in rows:
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

    def _open_zip(self) -> ZipStreamWriter | None:
        """The ZIP being written: the partial file beside a local output; an object-store output is
        assembled in an unnamed spool file and uploaded once complete."""
        plan = self.plan
        if self.remote_output:
            return ZipStreamWriter(None, plan.export_time, folder=self.spool)
        return ZipStreamWriter(
            Path(plan.output), plan.export_time, partial_path=plan.partial_path, replace=plan.replace
        )

    def _image_writers(self) -> list[tuple[OutputFormat, FormatWriter]]:
        """The formats (and their writers) each image is handed to, in table order."""
        return list(zip(self.formats, self.writers, strict=True))

    def _write_image(self, index: int, row: dict) -> None:
        self._prepare_image(index, row)
        row["members"] = self.recorder.begin()
        for fmt, writer in self._image_writers():
            self.recorder.format = fmt.name
            writer.add(row)
        self.recorder.end()
        count_image(self.counts, row)
        self.released += 1

    def _prepare_image(self, index: int, row: dict) -> None:
        """Complete a row before its writers see it: a reused image's stored values, the reuse count,
        and its problems (the driver's first, then the stages')."""
        level = int(row.get("reuse_level") or COMPUTED)
        if level != COMPUTED:
            self._restore(row, level)
        count_reuse(self.reuse_counts, level, row.get("reuse_reason"))
        row["pipeline_problems"] = row["problems"] or []
        row["problems"] = list(self.plan.driver_problems.get(index, [])) + row["pipeline_problems"]

    def _restore(self, row: dict, level: int) -> None:
        """Complete a reused image's row from the previous export's manifest: its decodability and
        problems, and at ``ALL_REUSED`` its counts and the parts of the aggregated members."""
        stored = self.previous.row(row["image_id"]) if self.previous is not None else None
        if stored is None:
            raise RuntimeError(f"image {row['image_id']} was reused, but the previous export's manifest lacks it")
        row["problems"] = merge_reused_problems(level, row["problems"] or [], stored["problems"] or [])
        row["decodable"] = stored["decodable"]
        if level == ALL_REUSED:
            row["n_objects"] = stored["n_objects"]
            row["n_polylines"] = stored["n_polylines"]
            for field_ in self.part_fields:
                row[field_.name] = stored[field_.name]

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
        if self.previous is not None:  # every reused entry is copied: from the file they were checked in?
            self.previous.check_unchanged()
            self.previous.close()
        # the aggregated members are compressed side by side (the stages are done: the CPUs are free)
        with self.zip.compressing_ahead(finish_threads()):
            for writer in self.writers:
                writer.finish(summary)
        size = self.zip.commit()
        if self.remote_output:
            try:
                upload_file(self.zip.file, self.remote_output)
            finally:
                self.zip.abort()  # the uploaded (or failed) spool copy goes
        return {**summary.counts, "bytes": size, "reuse": dict(self.reuse_counts)}

    def abort(self) -> None:
        """Discard the partial output and close every spool file; never raises."""
        try:
            self.zip.abort()
        finally:
            for writer in self.writers:
                with contextlib.suppress(Exception):
                    writer.abort()
            if self.previous is not None:
                with contextlib.suppress(Exception):
                    self.previous.close()

    @property
    def bytes_written(self) -> int:
        """Current size of the partial file."""
        return self.zip.bytes_written


#: Most threads compressing the aggregated members at the end of an export.
MAX_FINISH_THREADS = 4


def finish_threads() -> int:
    """Threads compressing the aggregated members side by side: one per CPU of the node, at most
    :data:`MAX_FINISH_THREADS`."""
    return max(1, min(MAX_FINISH_THREADS, os.cpu_count() or 1))


class MemberRecorder:
    """The ZIP as the format writers see it: records, per image, which format wrote which member."""

    def __init__(self, zip_: ZipStreamWriter) -> None:
        self.zip = zip_
        self.format = ""
        self.members: list[tuple[str, str]] | None = None
        #: the open previous export that reused entries are copied from
        self.source: PreviousManifest | None = None

    def begin(self) -> list[tuple[str, str]]:
        """Start recording one image's members; the list returned fills as they are written."""
        self.members = []
        return self.members

    def end(self) -> None:
        """Stop recording (members written after the last image belong to no image)."""
        self.members = None

    def _note(self, name: str) -> None:
        if self.members is not None:
            self.members.append((self.format, name))

    def add_bytes(self, name: str, data: Any, compress_type: int | None = None) -> None:
        self.zip.add_bytes(name, data, compress_type)
        self._note(name)

    def add_file(self, name: str, source: Path | BinaryIO, compress_type: int | None = None) -> None:
        self.zip.add_file(name, source, compress_type)
        self._note(name)

    def add_stored_entry(self, name: str, entry: Any) -> None:
        """Copy an entry of the previous export (a ``reused_entries`` value) under ``name``."""
        if self.source is None:
            raise RuntimeError(f"{name}: a reused entry, but no previous export is open")
        stored = stored_entry_of(entry)
        self.source.check_entry(stored)
        self.zip.add_stored_entry(name, stored, self.source.file)
        self._note(name)


class PreviousManifest:
    """The trusted previous export, open for the whole export: its manifest, read once (the stored rows
    of reused images), and the file its entries are copied from (:attr:`file`), with its identity when
    opened (:attr:`identity`), which every copied entry's check and the end of the export compare."""

    def __init__(self, location: str, part_fields: list[pa.Field]) -> None:
        import zipfile

        self.location = location
        self._files = contextlib.ExitStack()
        self.file = self._files.enter_context(open_binary(location))
        try:
            self.identity = identity_of(location, self.file)
            with zipfile.ZipFile(self.file) as zf:
                table = read_manifest(zf)
        except BaseException:
            self.close()
            raise
        columns = ["image_id", "decodable", "n_objects", "n_polylines", "problems"]
        columns += [f.name for f in part_fields if f.name in table.column_names]
        self.table = table.select(columns)
        self.positions = {str(image_id): i for i, image_id in enumerate(self.table.column("image_id").to_pylist())}
        self._fetched: dict[str, dict] = {}

    def close(self) -> None:
        """Close the previous export's file."""
        self._files.close()

    def fetch(self, image_ids: list[str]) -> None:
        """Convert the stored rows of ``image_ids`` at once (one ``take``), for :meth:`row` to hand out."""
        wanted = [(str(i), self.positions[str(i)]) for i in image_ids if str(i) in self.positions]
        if wanted:
            rows = self.table.take([position for _, position in wanted]).to_pylist()
            self._fetched.update(zip((image_id for image_id, _ in wanted), rows, strict=True))

    def row(self, image_id: str) -> dict | None:
        """The stored row of ``image_id`` (None when the manifest has none)."""
        fetched = self._fetched.pop(str(image_id), None)
        if fetched is not None:
            return fetched
        position = self.positions.get(str(image_id))
        return None if position is None else self.table.slice(position, 1).to_pylist()[0]

    def check_entry(self, entry: StoredEntry) -> None:
        """Refuse an entry the copy stage checked in another state of the previous export than the one
        open here, or when the file open here changed since (:class:`ZipOutputError` naming it)."""
        try:
            check_identity(entry.checked_in, self.identity)
            check_identity(self.identity, identity_of_open(self.file))
        except PreviousChanged as exc:
            raise ZipOutputError(f"{changed_message(self.location)} ({exc})") from exc

    def check_unchanged(self) -> None:
        """Refuse to finish when the previous export changed since it was opened: any write moves its
        modification time, a file put in its place has another inode."""
        try:
            check_identity(self.identity, identity_of(self.location, self.file))
        except (PreviousChanged, OSError) as exc:
            raise ZipOutputError(f"{changed_message(self.location)} ({exc})") from exc


def new_reuse_counts() -> dict[str, int]:
    """Counts of how an export's images were made: taken over whole, members taken over (parts
    recomputed), computed, and why computed images were not taken over."""
    return {"reused": 0, "reused_members": 0, "computed": 0, **{f"computed_{r}": 0 for r in COMPUTE_REASONS}}


def new_counts(formats: list[OutputFormat]) -> dict[str, int]:
    """The export totals of these formats, all 0, in the order they are reported."""
    counts = dict.fromkeys(COUNT_NAMES, 0)
    for fmt in formats:
        counts.update({name: 0 for name in fmt.counts if name not in counts})
    return counts


def count_image(counts: dict[str, int], row: dict) -> None:
    """Add one written image to the export totals."""
    counts["images"] += 1
    counts["objects"] += int(row["n_objects"])
    counts["polylines"] += int(row["n_polylines"])
    counts["problems"] += len(row["problems"])
    counts["metric_rows"] += len(row.get("metric_rows") or ())


def count_reuse(counts: dict[str, int], level: int, reason: str | None) -> None:
    """Count one image of reuse ``level`` (and the ``reason`` it was computed)."""
    key = {ALL_REUSED: "reused", MEMBERS_REUSED: "reused_members"}.get(level, "computed")
    counts[key] += 1
    if level == COMPUTED and reason:
        counts[f"computed_{reason}"] = counts.get(f"computed_{reason}", 0) + 1


def manifest_metadata_of(summary: ExportSummary) -> dict[str, str]:
    """What the manifest records about the export as a whole (see :mod:`ray_export.reuse`)."""
    return {
        "ray_export.manifest_version": MANIFEST_VERSION,
        "ray_export.project_id": str(summary.project_id),
        "ray_export.options_fingerprint": options_fingerprint(summary.content_options),
        "ray_export.software_fingerprint": software_fingerprint(summary.software_versions),
        "ray_export.content_options": json.dumps(summary.content_options, sort_keys=True),
        "ray_export.software_versions": json.dumps(summary.software_versions, sort_keys=True),
    }


def _rows(table: pa.Table, columns: list[str]) -> list[dict]:
    """The named columns as row dicts; image bytes stay zero-copy views of the Arrow buffers."""
    blobs = [c for c in columns if c in _BLOB_COLUMNS]
    small = {c: table.column(c).to_pylist() for c in columns if c not in blobs}
    blob_values = {c: blob_views(table.column(c)) for c in blobs}
    rows = []
    for i in range(table.num_rows):
        row = {c: values[i] for c, values in small.items()}
        for c, values in blob_values.items():
            row[c] = values[i]
        rows.append(row)
    return rows


def blob_views(column: pa.ChunkedArray) -> list[memoryview | None]:
    """Each value of a binary column as a view of its Arrow buffer (None where null), chunk by chunk:
    combining the chunks of a block made of several batches, or making a scalar of each value, would
    copy the images."""
    views: list[memoryview | None] = []
    for chunk in column.chunks:
        _validity, offsets_buffer, data_buffer = chunk.buffers()
        offset_type = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[chunk.offset : chunk.offset + len(chunk) + 1]
        data = memoryview(data_buffer) if data_buffer is not None else memoryview(b"")
        valid = chunk.is_valid().to_numpy(zero_copy_only=False)
        bounds = offsets.tolist()
        views.extend(data[bounds[i] : bounds[i + 1]] if valid[i] else None for i in range(len(chunk)))
    return views


def upload_file(local: Path | BinaryIO, uri: str, chunk: int = 8 << 20) -> None:
    """Copy a finished local file (a path, or an open file read from its start) to ``uri``; a failed
    upload leaves nothing at the destination.

    An ``s3://`` destination is one multipart upload made with boto3 where boto3 is installed: a failure
    aborts it, so no object and no stored part remain. pyarrow's output streams cannot abort (closing
    one completes its multipart upload), so without boto3, and for other schemes, a failed upload is
    closed and the object it made is deleted: the partial object exists for a moment (and stays as an
    old version in a versioned bucket), and an upload whose part S3 refused stays incomplete, for the
    bucket's lifecycle rule to remove.
    """
    if isinstance(local, (str, Path)):
        size = os.stat(local).st_size
        with open(local, "rb") as source:
            _upload(source, size, uri, chunk)
    else:
        local.seek(0)
        _upload(local, os.fstat(local.fileno()).st_size, uri, chunk)


def _upload(local: BinaryIO, size: int, uri: str, chunk: int) -> None:
    client = _s3_client(uri)
    if client is not None:
        _upload_s3(client, local, size, uri, chunk)
        return
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    stream = fs.open_output_stream(path)
    try:
        while block := local.read(chunk):
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


def _upload_s3(client: Any, local: BinaryIO, size: int, uri: str, chunk: int) -> None:
    """One multipart upload of ``local`` to ``uri``, aborted when any step fails."""
    parts = urlsplit(uri)
    bucket, key = parts.netloc.rpartition("@")[2], unquote(parts.path.lstrip("/"))
    part_size = max(chunk, _S3_MIN_PART, -(-size // _S3_MAX_PARTS))
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, ContentType="application/zip")["UploadId"]
    try:
        done: list[dict[str, Any]] = []
        # an empty file is one empty part: S3 completes no upload without a part
        while (block := local.read(part_size)) or not done:
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


def watch_driver(export_id: str, on_gone: Callable[[], None]) -> None:
    """From a daemon thread of a writer actor: look at the driver's heartbeat through the progress actor
    every :data:`DRIVER_WATCH_PERIOD_S`; once the export ended without the writer being stopped (the
    driver died: see :func:`driver_gone`), call ``on_gone`` (discard the writer's files) and end the
    actor's process."""
    from actors.progress import HEARTBEAT_TIMEOUT_S, get_progress_actor

    def watch() -> None:
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
                on_gone()
                os._exit(0)

    threading.Thread(target=watch, name="ray-export-driver-watch", daemon=True).start()


@ray.remote(num_cpus=0, max_restarts=0)
class ZipWriterActor:
    """Ray actor wrapper of :class:`ExportAssembler` (sync: one call at a time, as zipfile needs).

    Created detached, so that a driver killed outright does not take it down mid-write: with
    ``export_id``, a thread watches the driver's heartbeat through the progress actor and, once the export
    ended without the writer being stopped (the driver died), discards the partial file, removes the
    output's lock file and ends the actor's process (its unnamed spool files go with it).
    """

    def __init__(self, plan: AssemblyPlan, export_id: str | None = None) -> None:
        self.assembler = ExportAssembler(plan)
        if export_id:
            watch_driver(export_id, self._driver_died)

    def _driver_died(self) -> None:
        self.assembler.abort()  # a no-op for the partial once committed
        if not self.assembler.remote_output:
            release_dead_lock(Path(self.assembler.plan.output))

    def add_batch(self, table: pa.Table) -> tuple[int, int, int, dict[str, int]]:
        """(images written now, problems those images carry, bytes written so far, reuse counts so far)."""
        before = self.assembler.problem_count
        written = self.assembler.add_batch(table)
        release_free_heap()
        return (
            written, self.assembler.problem_count - before, self.assembler.bytes_written,
            dict(self.assembler.reuse_counts),
        )  # fmt: skip

    def finish(self) -> dict:
        return self.assembler.finish()

    def abort(self) -> None:
        self.assembler.abort()
