"""Several ZIP writers for one export (``--writers N``, N > 1): segments and the aggregating writer.

See :mod:`ray_export.segments` for the layout. Plain Python first (unit-tested without Ray):

- :class:`SegmentAssembler`: one writer's share. It writes the members of the per-image folder formats
  (originals, visualizations, labels) of consecutive images into a *segment* (an unnamed spool file:
  local headers and data, no central directory) and hands each image's small rest (its parts of the
  aggregated members, counts, problems, member list) on for the aggregating writer.
- :class:`TailAssembler`: the aggregating writer's other half. It feeds those rows, in index order, to
  the aggregated formats (COCO, JSON export, metrics tables, report, manifest), joins the segments in
  order and, at the end, writes the aggregated members and the one central directory. A local output
  is the partial file beside it, the segments copied in by the kernel as they complete; an ``s3://``
  output is one multipart upload, one part per segment (uploaded by its own writer), the last part
  (segments too small for a part of their own, the aggregated members, the central directory)
  uploaded by the aggregating writer, which completes the upload or aborts it.

:class:`SegmentWriterActor` is the thin Ray actor around them.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import ray

from actors.zip_writer import (
    _BLOB_COLUMNS,
    AssemblyPlan,
    ExportAssembler,
    _s3_client,
    watch_driver,
)
from actors.zipstream import ReorderBuffer, ZipStreamWriter
from ray_export.heap import release_free_heap
from ray_export.locations import is_uri
from ray_export.output_files import release_dead_lock, spool_file
from ray_export.reuse import SourceEnded, copy_range


@dataclass
class SegmentSummary:
    """A complete segment, as the aggregating writer needs it (small: no member bytes)."""

    segment: int
    #: the index of its first image (None: no image) and how many images it holds
    first_index: int | None
    images: int
    #: its bytes, and its members' records, offsets relative to its start
    size: int
    infos: list[zipfile.ZipInfo]
    #: the export totals and reuse counts of its images
    counts: dict[str, int] = field(default_factory=dict)
    reuse_counts: dict[str, int] = field(default_factory=dict)
    #: where its file is open (the writer's process and descriptor), for a kernel copy on the same node
    pid: int = 0
    fd: int = -1


def _difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: value - before.get(name, 0) for name, value in after.items() if value != before.get(name, 0)}


class SegmentAssembler(ExportAssembler):
    """Writes the per-image members of consecutive images into segments, one open at a time."""

    def __init__(self, plan: AssemblyPlan) -> None:
        self.segment: int | None = None
        self.closed: dict[int, ZipStreamWriter] = {}
        self.closed_bytes = 0
        self.parts: list[dict] = []
        self._lock = threading.Lock()
        super().__init__(plan)
        # only the per-image folder formats write here: the others' writers are closed at once
        self.member_writers = [pair for pair in self._all_writers() if pair[0].folder]
        for fmt, writer in zip(self.formats, self.writers, strict=True):
            if not fmt.folder:
                writer.abort()
        aggregated = {fmt.part.column for fmt in self.formats if fmt.part is not None and not fmt.folder}
        member_only = {fmt.part.column for fmt in self.formats if fmt.part is not None and fmt.folder}
        self.member_columns = ({*_BLOB_COLUMNS, "reused_entries"} | member_only) - aggregated
        self._begin_counts: dict[str, int] = {}
        self._begin_reuse: dict[str, int] = {}
        self._begin_released = 0
        self._first_index: int | None = None

    def _open_zip(self) -> ZipStreamWriter | None:
        return None  # one per segment

    def _all_writers(self) -> list:
        return super()._image_writers()

    def _image_writers(self) -> list:
        return self.member_writers

    def _write_image(self, index: int, row: dict) -> None:
        super()._write_image(index, row)
        self.parts.append({name: value for name, value in row.items() if name not in self.member_columns})

    def add_segment_batch(self, segment: int, table: pa.Table) -> tuple[int, list[dict]]:
        """Write one batch of results into ``segment`` (opened by its first batch); returns the images
        written and their rows for the aggregating writer, in index order."""
        if self.segment != segment:
            if self.segment is not None:
                raise RuntimeError(f"segment {segment} began before segment {self.segment} was closed")
            self._open_segment(segment)
        if table.num_rows and self._first_index is None:
            self._first_index = int(pc.min(table.column("index")).as_py())
            self.buffer = ReorderBuffer(self._first_index)
        written = self.add_batch(table) if table.num_rows else 0
        parts, self.parts = self.parts, []
        return written, parts

    def _open_segment(self, segment: int) -> None:
        zip_ = ZipStreamWriter(None, self.plan.export_time, spool=spool_file(self.spool))
        self.zip = self.recorder.zip = zip_
        self.segment = segment
        self._first_index = None
        self._begin_counts = dict(self.counts)
        self._begin_reuse = dict(self.reuse_counts)
        self._begin_released = self.released

    def close_segment(self, segment: int) -> SegmentSummary:
        """End ``segment``: its file stays open (for the join or upload) until :meth:`drop_segment`."""
        if self.segment != segment or self.zip is None:
            raise RuntimeError(f"segment {segment} is not the open segment ({self.segment})")
        if self.buffer.pending:
            raise RuntimeError(
                f"segment {segment} ends with {self.buffer.pending} images waiting for image {self.buffer.next_index}"
            )
        size, infos = self.zip.segment_members()
        summary = SegmentSummary(
            segment, self._first_index, self.released - self._begin_released, size, infos,
            _difference(self.counts, self._begin_counts), _difference(self.reuse_counts, self._begin_reuse),
            os.getpid(), self.zip.file.fileno(),
        )  # fmt: skip
        with self._lock:
            self.closed[segment] = self.zip
        self.closed_bytes += size
        self.zip = self.recorder.zip = None
        self.segment = None
        return summary

    def segment_file(self, segment: int) -> BinaryIO:
        """The open file of a closed segment."""
        with self._lock:
            found = self.closed.get(segment)
        if found is None:
            raise RuntimeError(f"segment {segment} is not a closed segment of this writer")
        return found.file

    def drop_segment(self, segment: int) -> None:
        """Close and forget a segment that was joined or uploaded."""
        with self._lock:
            found = self.closed.pop(segment, None)
        if found is not None:
            found.abort()

    @property
    def bytes_written(self) -> int:
        """Bytes of the segments written so far."""
        return self.closed_bytes + (self.zip.bytes_written if self.zip is not None else 0)

    def abort(self) -> None:
        """Discard every segment and close every spool file; never raises."""
        with self._lock:
            segments = [*self.closed.values(), *([self.zip] if self.zip is not None else [])]
            self.closed.clear()
        self.zip = None
        for zip_ in segments:
            zip_.abort()
        for writer in self.writers:
            with contextlib.suppress(Exception):
                writer.abort()
        if self.previous is not None:
            with contextlib.suppress(Exception):
                self.previous.close()


class TailAssembler(ExportAssembler):
    """The aggregating writer: aggregated formats fed in index order, segments joined in order, the end."""

    def __init__(self, plan: AssemblyPlan) -> None:
        self.upload_uri = plan.output if is_uri(plan.output) else None
        self.segments: dict[int, SegmentSummary] = {}
        self.joined = 0
        super().__init__(plan)
        self.remote_output = None  # the last part is uploaded by finish(), not the whole file
        self.aggregate_writers = [pair for pair in super()._image_writers() if not pair[0].folder]

    def _open_zip(self) -> ZipStreamWriter | None:
        # an s3:// output's last part is made at the end, when the offset where it starts is known
        return None if is_uri(self.plan.output) else super()._open_zip()

    def _write_image(self, index: int, row: dict) -> None:
        for _fmt, writer in self.aggregate_writers:
            writer.add(row)
        self.released += 1

    def add_parts(self, rows: list[dict]) -> None:
        """The rows of a batch written into a segment (any order of batches; released in index order)."""
        for row in rows:
            for index, item in self.buffer.put(int(row["index"]), row):
                self._write_image(index, item)

    def add_segment(self, summary: SegmentSummary) -> list[int]:
        """Record a complete segment; a local output joins every segment now next in order (copied from
        its writer's open file, on this node). Returns the segments joined now."""
        if summary.segment in self.segments:
            raise RuntimeError(f"segment {summary.segment} was given twice")
        self.segments[summary.segment] = summary
        if self.upload_uri:
            return []
        joined = []
        while self.joined in self.segments:
            found = self.segments[self.joined]
            if found.size:
                with open(f"/proc/{found.pid}/fd/{found.fd}", "rb") as source:
                    self.zip.append_segment(source, found.size, found.infos)
            else:
                self.zip.adopt_members(found.infos, self.zip.bytes_written)
            joined.append(self.joined)
            self.joined += 1
        return joined

    def _check_segments(self) -> list[SegmentSummary]:
        count = len(self.segments)
        if sorted(self.segments) != list(range(count)):
            missing = sorted(set(range(max(self.segments, default=-1) + 1)) - set(self.segments))
            raise RuntimeError(f"segments {missing} never reached the aggregating writer")
        ordered = [self.segments[k] for k in range(count)]
        next_index = 1
        for found in ordered:
            if found.images and found.first_index != next_index:
                raise RuntimeError(f"segment {found.segment} starts at image {found.first_index}, not {next_index}")
            next_index += found.images
        if next_index - 1 != self.plan.total_images:
            raise RuntimeError(f"the segments hold {next_index - 1} of {self.plan.total_images} images")
        return ordered

    def finish(self, parts: list[dict] | None = None, left_over: list[bytes] | None = None,
               upload: MultipartUpload | None = None) -> dict:  # fmt: skip
        """Write the aggregated members and the central directory and commit: a local output by name; an
        ``s3://`` output as the last part (``left_over``: the bytes of the last segments, which went into
        no part) of ``upload``, completed with ``parts``. Returns the final counts."""
        ordered = self._check_segments()
        for found in ordered:
            for name, value in found.counts.items():
                self.counts[name] = self.counts.get(name, 0) + value
            for name, value in found.reuse_counts.items():
                self.reuse_counts[name] = self.reuse_counts.get(name, 0) + value
        if not self.upload_uri:
            if self.joined != len(ordered):
                raise RuntimeError(f"segment {self.joined} was never joined")
            return super().finish()
        if upload is None:
            raise RuntimeError("an s3:// output needs its multipart upload")
        left_over = list(left_over or [])
        first_left = len(ordered) - len(left_over)
        uploaded = ordered[:first_left]
        self.zip = self.recorder.zip = ZipStreamWriter(
            None, self.plan.export_time, spool=spool_file(self.spool), start_offset=sum(s.size for s in uploaded)
        )
        offset = 0
        for found in uploaded:
            self.zip.adopt_members(found.infos, offset)
            offset += found.size
        for found, data in zip(ordered[first_left:], left_over, strict=True):
            if len(data) != found.size:
                raise RuntimeError(f"segment {found.segment} came with {len(data)} of its {found.size} bytes")
            self.zip.append_segment(data, found.size, found.infos)
        counts = super().finish()
        try:
            tail = self.zip.file
            tail.flush()
            size = os.fstat(tail.fileno()).st_size
            last = upload.upload_part(len(ordered) + 1, FileRange(tail.fileno(), 0, size))
            upload.complete([*(parts or []), last])
        except BaseException:
            upload.abort()
            raise
        finally:
            self.zip.abort()  # the uploaded (or failed) spool copy goes
        return counts

    def abort(self) -> None:
        """Discard the partial output and close every spool file; never raises."""
        if self.zip is not None:
            super().abort()
            return
        for writer in self.writers:
            with contextlib.suppress(Exception):
                writer.abort()
        if self.previous is not None:
            with contextlib.suppress(Exception):
                self.previous.close()


# ------------------------------------------------------------------------------------------------ S3 parts


class FileRange(io.RawIOBase):
    """``size`` bytes of an open file from ``start`` as a seekable read-only stream (read with ``pread``,
    so the file's own position does not move): the body of one part."""

    def __init__(self, fd: int, start: int, size: int) -> None:
        super().__init__()
        self.fd, self.start, self.size = fd, start, size
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self.size - self.position)
        if wanted <= 0:
            return 0
        data = os.pread(self.fd, wanted, self.start + self.position)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def __len__(self) -> int:
        return self.size


class MultipartUpload:
    """One S3 multipart upload of an ``s3://`` URI (credentials as :func:`actors.zip_writer._s3_client`
    reads them): created here, or joined by its id to upload parts from another process."""

    def __init__(self, uri: str, upload_id: str | None = None) -> None:
        client = _s3_client(uri)
        if client is None:
            raise RuntimeError("several writers upload an s3:// output with boto3, which is not installed")
        parts = urlsplit(uri)
        self.client = client
        self.bucket, self.key = parts.netloc.rpartition("@")[2], unquote(parts.path.lstrip("/"))
        if upload_id is None:
            reply = client.create_multipart_upload(Bucket=self.bucket, Key=self.key, ContentType="application/zip")
            upload_id = reply["UploadId"]
        self.upload_id: str = upload_id

    def upload_part(self, number: int, body: BinaryIO) -> dict[str, Any]:
        """Upload one part; returns what :meth:`complete` needs of it."""
        reply = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=body
        )
        return {"PartNumber": number, "ETag": reply["ETag"]}

    def complete(self, parts: list[dict[str, Any]]) -> None:
        """Complete the upload from ``parts`` (any order)."""
        ordered = sorted(parts, key=lambda part: part["PartNumber"])
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": ordered}
        )

    def abort(self) -> None:
        """Abort the upload (its parts are deleted); never raises."""
        with contextlib.suppress(Exception):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)


def abort_upload(uri: str, upload_id: str | None, since: float | None = None) -> None:
    """Abort the multipart upload ``upload_id`` of ``uri``; without an id, every upload of that key
    begun since ``since`` (its id was never learnt). Never raises."""
    with contextlib.suppress(Exception):
        if upload_id is not None:
            MultipartUpload(uri, upload_id).abort()
            return
        if since is None:
            return
        joined = MultipartUpload(uri, "-")
        listing = joined.client.list_multipart_uploads(Bucket=joined.bucket, Prefix=joined.key)
        for upload in listing.get("Uploads", []):
            if upload["Key"] == joined.key and upload["Initiated"].timestamp() >= since - 5:
                MultipartUpload(uri, upload["UploadId"]).abort()


def part_body(prefix: list[bytes], source: BinaryIO, size: int, folder: Any) -> tuple[BinaryIO | None, FileRange]:
    """The body of a part: segments handed on (``prefix``) and then ``size`` bytes of ``source``. Without a
    prefix the segment's own file is read; with one, both are put in a spool file in ``folder`` (returned
    first, for the caller to close)."""
    if not prefix:
        return None, FileRange(source.fileno(), 0, size)
    spool = spool_file(folder)
    try:
        for data in prefix:
            spool.write(data)
        spool.flush()
        head = spool.tell()
        try:
            copy_range(source.fileno(), 0, spool.fileno(), head, size)
        except SourceEnded:
            raise RuntimeError(f"a segment of {size} bytes ended early") from None
        return spool, FileRange(spool.fileno(), 0, head + size)
    except BaseException:
        spool.close()
        raise


# ------------------------------------------------------------------------------------------------ the actor


def segment_writer_name(export_id: str, position: int) -> str:
    """Name of writer ``position`` (0-based) of ``export_id``; the first (aggregating) writer has the
    name the single writer has."""
    from actors.zip_writer import writer_actor_name

    name = writer_actor_name(export_id)
    return name if position == 0 else f"{name}_{position + 1}"


@ray.remote(num_cpus=0, max_restarts=0, concurrency_groups={"transfer": 2})
class SegmentWriterActor:
    """Ray actor wrapper of one writer of several: a :class:`SegmentAssembler`, and for the first (``aggregate``)
    also the :class:`TailAssembler` and, for an ``s3://`` output, the multipart upload.

    Detached and watching the driver's heartbeat through the progress actor, as the single writer does: once
    the export ended without the writer being stopped (the driver died), it discards its files, aborts the
    upload, removes the output's lock file (the aggregating writer of a local output) and ends its process.
    Segment bytes and part uploads run in their own threads (``transfer``), beside the writing.
    """

    def __init__(self, plan: AssemblyPlan, export_id: str | None = None, aggregate: bool = False) -> None:
        self.plan = plan
        self.segments = SegmentAssembler(plan)
        self.tail: TailAssembler | None = None
        self.upload: MultipartUpload | None = None
        self._joined_uploads: dict[str, MultipartUpload] = {}
        try:
            if aggregate:
                self.tail = TailAssembler(plan)
                if is_uri(plan.output):
                    self.upload = MultipartUpload(plan.output)
        except BaseException:
            self.abort()
            raise
        if export_id:
            watch_driver(export_id, self._driver_died)

    def _driver_died(self) -> None:
        self.abort()
        if self.tail is not None and not is_uri(self.plan.output):
            release_dead_lock(Path(self.plan.output))

    def upload_id(self) -> str | None:
        """The id of the multipart upload (the aggregating writer of an ``s3://`` output), else None."""
        return self.upload.upload_id if self.upload is not None else None

    @ray.method(num_returns=2)
    def add_batch(self, segment: int, table: pa.Table) -> tuple[tuple[int, int, int, dict[str, int]], list[dict]]:
        """((images written now, problems they carry, bytes written so far, reuse counts so far), the
        images' rows for the aggregating writer)."""
        before = self.segments.problem_count
        written, parts = self.segments.add_segment_batch(segment, table)
        release_free_heap()
        stats = (written, self.segments.problem_count - before, self.segments.bytes_written,
                 dict(self.segments.reuse_counts))  # fmt: skip
        return stats, parts

    def close_segment(self, segment: int) -> SegmentSummary:
        return self.segments.close_segment(segment)

    @ray.method(concurrency_group="transfer")
    def segment_bytes(self, segment: int) -> bytes:
        """The bytes of a closed segment (one smaller than a part, handed on)."""
        source = self.segments.segment_file(segment)
        size = os.fstat(source.fileno()).st_size
        return os.pread(source.fileno(), size, 0)

    @ray.method(concurrency_group="transfer")
    def upload_part(self, segment: int, part_number: int, upload_id: str, *prefix: bytes) -> dict[str, Any]:
        """Upload the segments handed on (``prefix``) and ``segment`` as part ``part_number``."""
        upload = self._joined_uploads.get(upload_id)
        if upload is None:
            upload = self._joined_uploads[upload_id] = MultipartUpload(self.plan.output, upload_id)
        source = self.segments.segment_file(segment)
        spool, body = part_body(list(prefix), source, os.fstat(source.fileno()).st_size, self.segments.spool)
        try:
            return upload.upload_part(part_number, body)
        finally:
            if spool is not None:
                spool.close()

    def drop_segment(self, segment: int) -> None:
        self.segments.drop_segment(segment)

    def add_parts(self, rows: list[dict]) -> None:
        self._tail().add_parts(rows)

    def add_segment(self, summary: SegmentSummary) -> list[int]:
        return self._tail().add_segment(summary)

    def finish(self, parts: list[dict], *left_over: bytes) -> dict:
        return self._tail().finish(parts, list(left_over), self.upload)

    def _tail(self) -> TailAssembler:
        if self.tail is None:
            raise RuntimeError("only the first writer aggregates")
        return self.tail

    def abort(self) -> None:
        """Discard every file of this writer and abort the upload; never raises."""
        self.segments.abort()
        if self.tail is not None:
            self.tail.abort()
        if self.upload is not None:
            self.upload.abort()

