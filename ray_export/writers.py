"""The export's ZIP writer actors, from the driver: one (the direct path) or several (``--writers N``).

With one writer the driver streams the dataset's blocks into it (``run._feed_writer``). With several,
:class:`WriterGroup` routes whole consecutive blocks to one writer until the run is long enough, then to the
next (:class:`~ray_export.segments.BlockRouter`, from block metadata only; no block passes through the
driver), closes each run as a segment, hands the images' small rows to the first (aggregating) writer, has
a local output's segments joined into the partial file by it, or an ``s3://`` output's segments uploaded
as parts by their own writers (:class:`~ray_export.segments.PartPlanner`), and finally asks the aggregating
writer to finish. Every call's result is awaited here, so any writer's failure (or death) fails the
export; :meth:`WriterGroup.discard` then stops them all and aborts the upload.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from . import segments as seg
from .errors import ExportCancelled
from .locations import is_uri

log = logging.getLogger("ray_export")


def writer_count(requested: int | None, output: Any, cluster_cpus: Callable[[], float]) -> int:
    """How many writers an export to ``output`` runs: ``requested``, or one per 8 CPUs of the cluster. Several
    writers need a local output on Linux (``/proc``, where the segments are joined from) or an ``s3://``
    output (one part per segment); otherwise one writes it."""
    count = requested if requested is not None else seg.default_writer_count(cluster_cpus())
    if count <= 1:
        return 1
    if is_uri(str(output)):
        if not str(output).startswith("s3://") or not _has_boto3():
            log.info("one writer: several writers need an s3:// output and boto3")
            return 1
    elif not os.path.isdir("/proc/self/fd"):
        log.info("one writer: several writers join their segments through /proc, which this system lacks")
        return 1
    return count


def _has_boto3() -> bool:
    try:
        import boto3  # noqa: F401
    except ImportError:
        return False
    return True


class WriterGroup:
    """The writer actors of one export (created detached, named, in the progress actors' namespace)."""

    def __init__(self, handles: list[Any], output: Any, started: float) -> None:
        self.handles = handles
        self.output = output
        self.started = started
        #: the multipart upload's id, asked of the aggregating writer at once (an ``s3://`` output, several writers)
        self.upload_id_ref: Any = None
        self.upload_id: str | None = None

    @classmethod
    def create(cls, assembly: Any, export_id: str, count: int, driver_node: str) -> WriterGroup:
        """Start ``count`` writers: one is today's :class:`~actors.zip_writer.ZipWriterActor`; several are
        :class:`~actors.segment_writer.SegmentWriterActor`, the first aggregating. They run on the driver's
        node, except the others of an ``s3://`` output, which go anywhere (a local previous export to reuse
        keeps them on the driver's node too)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from actors.progress import PROGRESS_NAMESPACE
        from actors.zip_writer import ZipWriterActor, writer_actor_name

        pinned = NodeAffinitySchedulingStrategy(driver_node, soft=False)
        if count == 1:
            handle = ZipWriterActor.options(
                name=writer_actor_name(export_id),
                namespace=PROGRESS_NAMESPACE,
                lifetime="detached",
                scheduling_strategy=pinned,
            ).remote(assembly, export_id)
            return cls([handle], assembly.output, time.time())
        from actors.segment_writer import SegmentWriterActor, segment_writer_name

        remote = is_uri(assembly.output)
        spread = remote and not (assembly.reuse_location and not is_uri(assembly.reuse_location))
        handles = [
            SegmentWriterActor.options(
                name=segment_writer_name(export_id, position),
                namespace=PROGRESS_NAMESPACE,
                lifetime="detached",
                scheduling_strategy="SPREAD" if spread and position else pinned,
            ).remote(assembly, export_id, position == 0)
            for position in range(count)
        ]
        group = cls(handles, assembly.output, time.time())
        if remote:
            group.upload_id_ref = handles[0].upload_id.remote()
        return group

    @property
    def first(self) -> Any:
        """The single writer, or the aggregating one."""
        return self.handles[0]

    @property
    def segmented(self) -> bool:
        """Whether several writers write segments."""
        return len(self.handles) > 1

    def actor_names(self) -> dict[str, str]:
        """What each writer is, by actor id (hex), for error lines."""
        names = {}
        for position, handle in enumerate(self.handles):
            what = "the ZIP writer" if not self.segmented else f"ZIP writer {position + 1} of {len(self.handles)}"
            with contextlib.suppress(Exception):
                names[handle._actor_id.hex()] = what
        return names

    def feed(self, dataset: Any, progress: Any, cancel: threading.Event, timings: Any = None,
             track_reuse: bool = False) -> SegmentedFeed:  # fmt: skip
        """Stream the dataset into the writers as segments (several writers); returns the feed, for
        :meth:`finish`."""
        feed = SegmentedFeed(self, progress, cancel, timings, track_reuse)
        feed.run(dataset)
        return feed

    def finish(self, feed: SegmentedFeed | None = None) -> dict:
        """Have the single or the aggregating writer finish (and commit) the ZIP; returns its counts."""
        import ray

        if feed is None:
            return ray.get(self.first.finish.remote())
        return feed.finish()

    def kill(self) -> None:
        """End every writer (after the commit; they are detached actors)."""
        import ray

        for handle in self.handles:
            with contextlib.suppress(Exception):
                ray.kill(handle)

    def discard(self) -> None:
        """Stop every writer: a quick clean abort when the aggregating (or single) writer is idle, then a
        kill of each (their unnamed files go with them); an ``s3://`` upload is aborted from here too."""
        import ray

        with contextlib.suppress(Exception):
            ray.get(self.first.abort.remote(), timeout=1.0)
        self.kill()
        if self.upload_id_ref is not None:
            from actors.segment_writer import abort_upload

            upload_id = self.upload_id
            if upload_id is None:
                with contextlib.suppress(Exception):
                    upload_id = ray.get(self.upload_id_ref, timeout=2.0)
            abort_upload(str(self.output), upload_id, since=self.started)


class SegmentedFeed:
    """One run of the dataset into several writers (see the module's text). Every remote call made is
    kept with what to do with its result; :meth:`_settle` awaits them (a failed call raises here)."""

    def __init__(self, group: WriterGroup, progress: Any, cancel: threading.Event, timings: Any,
                 track_reuse: bool, max_blocks: int | None = None) -> None:  # fmt: skip
        self.group = group
        self.handles = group.handles
        self.progress = progress
        self.cancel = cancel
        self.timings = timings
        self.track_reuse = track_reuse
        count = len(self.handles)
        blocks = max_blocks or seg.SEGMENT_MAX_BLOCKS
        self.router = seg.BlockRouter(count, seg.SEGMENT_TARGET_BYTES, blocks)
        self.planner = seg.PartPlanner(seg.S3_MIN_PART_BYTES) if group.upload_id_ref is not None else None
        #: the most blocks given to one writer ahead of its work
        self.max_inflight = blocks
        self.inflight = [0] * count
        self.bytes = [0] * count
        self.reuse: list[dict[str, int]] = [{} for _ in range(count)]
        self.pending: dict[Any, Callable[[Any], None]] = {}
        self.parts: list[dict] = []
        self.last_written: float | None = None

    # ------------------------------------------------------------------ the stream
    def run(self, dataset: Any) -> None:
        """Stream the dataset's blocks into the writers and wait for every segment to be joined (or
        uploaded)."""
        try:
            self._run(dataset)
        except Exception as exc:
            dead = self._dead_writer(exc)
            if dead is None:
                raise
            raise dead from exc

    def _dead_writer(self, failure: Exception) -> BaseException | None:
        """The death of a writer, when one died: it explains a failure better than what it caused in
        another writer (its segment gone before it was joined). None when none died."""
        import ray
        from ray.exceptions import RayActorError

        if isinstance(failure, (RayActorError, ExportCancelled)) or self.cancel.is_set():
            return None
        pings = [handle.__ray_ready__.remote() for handle in self.handles]
        ready, _ = ray.wait(pings, num_returns=len(pings), timeout=2.0)
        for ref in ready:
            try:
                ray.get(ref)
            except RayActorError as dead:
                return dead
        return None

    def _run(self, dataset: Any) -> None:
        from .dataset import streamed_bundles

        with streamed_bundles(dataset, self.cancel) as bundles:
            for bundle in bundles:
                self._check_cancel()
                for entry in bundle.blocks:
                    self._route(entry.ref, entry.metadata.size_bytes)
                self._settle(wait=False)
                self._check_cancel()
            self._check_cancel()
        last = self.router.end()
        if last is not None:
            self._close(last)
        while self.pending:
            self._settle(wait=True)
        if self.timings is not None and self.last_written is not None:
            self.timings.mark("last_image_written", at=self.last_written)

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise ExportCancelled()

    def _route(self, block_ref: Any, size_bytes: int | None) -> None:
        route = self.router.route(size_bytes)
        if route.closed is not None:
            self._close(route.closed)
        while self.inflight[route.writer] >= self.max_inflight:
            self._settle(wait=True)
        stats, rows = self.handles[route.writer].add_batch.remote(route.segment, block_ref)
        self.inflight[route.writer] += 1
        self._expect(stats, lambda value, w=route.writer, r=rows: self._written(w, r, value))

    def _expect(self, ref: Any, then: Callable[[Any], None]) -> None:
        self.pending[ref] = then

    def _settle(self, wait: bool) -> None:
        """Handle the calls that finished (``wait``: at least one)."""
        import ray

        refs = list(self.pending)
        if not refs:
            return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        if not ready and wait:
            ready, _ = ray.wait(refs, num_returns=1)
        for ref in ready:
            then = self.pending.pop(ref)
            then(ray.get(ref))

    # ------------------------------------------------------------------ what each result leads to
    def _written(self, writer: int, rows: Any, stats: tuple) -> None:
        written, problems, nbytes, reuse = stats
        self.inflight[writer] -= 1
        self.bytes[writer] = nbytes
        aggregator = self.handles[0]
        self._expect(aggregator.add_parts.remote(rows), _ignore)
        if written:
            if self.timings is not None:
                self.timings.mark("writer_ready")
                self.timings.mark("first_batch_written")
            self.last_written = time.time()
            self.progress.add_done.remote("write", written)
        if problems:
            self.progress.add_problems.remote(problems)
        self.progress.set_bytes.remote(sum(self.bytes))
        if self.track_reuse and written:
            self.reuse[writer] = reuse
            totals: dict[str, int] = {}
            for counts in self.reuse:
                for name, value in counts.items():
                    totals[name] = totals.get(name, 0) + value
            self.progress.set_reuse.remote(totals)

    def _close(self, closed: tuple[int, int]) -> None:
        segment, writer = closed
        self._expect(self.handles[writer].close_segment.remote(segment), self._closed)

    def _closed(self, summary: Any) -> None:
        aggregator = self.handles[0]
        self._expect(aggregator.add_segment.remote(summary), self._joined)
        if self.planner is not None:
            for part in self.planner.completed(summary.segment, summary.size):
                self._upload(part)

    def _joined(self, segments: list[int]) -> None:
        for segment in segments:
            self._drop(segment)

    def _writer_of(self, segment: int) -> Any:
        return self.handles[self.router.writer_of(segment)]

    def _drop(self, segment: int) -> None:
        self._expect(self._writer_of(segment).drop_segment.remote(segment), _ignore)

    def _upload(self, part: seg.PartUpload) -> None:
        prefix = [self._writer_of(s).segment_bytes.remote(s) for s in part.prefix]
        writer = self._writer_of(part.segment)
        ref = writer.upload_part.remote(part.segment, part.part_number, self.group.upload_id_ref, *prefix)
        self._expect(ref, lambda done, p=part: self._uploaded(p, done))

    def _uploaded(self, part: seg.PartUpload, done: dict) -> None:
        self.parts.append(done)
        for segment in part.segments:
            self._drop(segment)

    # ------------------------------------------------------------------ the end
    def finish(self) -> dict:
        """The aggregating writer writes the aggregated members and the central directory and commits (an
        ``s3://`` output: uploads the last part, with the segments left over, and completes)."""
        import ray

        try:
            left_over = []
            if self.planner is not None:
                self.group.upload_id = ray.get(self.group.upload_id_ref)
                left_over = [self._writer_of(s).segment_bytes.remote(s) for s in self.planner.left_over()]
            return ray.get(self.handles[0].finish.remote(self.parts, *left_over))
        except Exception as exc:
            dead = self._dead_writer(exc)
            if dead is None:
                raise
            raise dead from exc


def _ignore(_value: Any) -> None:
    """A call whose result is only checked for an error."""
