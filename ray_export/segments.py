"""Several ZIP writers for one export (``--writers N``): which writer gets which block, and which runs
of members become which part of an ``s3://`` upload. Plain Python (the Ray side is
:mod:`ray_export.writers`).

Each writer assembles *segments*: runs of consecutive images' members (local headers and data, offsets
relative to the segment). The ZIP is the segments in order, then the aggregated members and one central
directory with absolute offsets, written by the first writer (the aggregating one). Local headers hold
no offsets, so the bytes are the same wherever the runs are cut: the ZIP is byte-identical for every
writer count.

- :class:`BlockRouter` (on the driver, from block metadata only): consecutive blocks go to one writer
  until the run reaches :data:`SEGMENT_TARGET_BYTES` (or :data:`SEGMENT_MAX_BLOCKS` blocks), then the
  next run goes to the next writer, round robin, so the writers work side by side.
- :class:`PartPlanner`: for an ``s3://`` output each segment is one part of a multipart upload,
  uploaded from its writer's node. A run smaller than S3's minimum part is handed on to the next
  segment's part; what is left at the end goes before the aggregated members in the last part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: One writer per this many CPUs of the cluster, by default (at least one).
CPUS_PER_WRITER = 8
#: The most writers an export may ask for.
MAX_WRITERS = 64
#: A run goes to one writer until its blocks reach this many bytes (their in-memory size)...
SEGMENT_TARGET_BYTES = 32 << 20
#: ...or this many blocks; also the most blocks one writer is given ahead of its work.
SEGMENT_MAX_BLOCKS = 4
#: S3's smallest part (every part but the last) and its most parts.
S3_MIN_PART_BYTES = 5 << 20
S3_MAX_PARTS = 10_000
#: Runs become longer (the target doubles) every this many segments, so that even a huge export
#: stays within S3's parts; after :data:`MAX_SEGMENTS` the last run takes every further block.
SEGMENTS_PER_DOUBLING = 1_000
MAX_SEGMENTS = S3_MAX_PARTS - 1


def default_writer_count(cluster_cpus: float) -> int:
    """One writer per :data:`CPUS_PER_WRITER` CPUs of the cluster, at least one."""
    return max(1, min(MAX_WRITERS, int(cluster_cpus // CPUS_PER_WRITER)))


@dataclass(frozen=True)
class Route:
    """Where one block goes: its ``writer`` and ``segment``; ``closed``: the segment (and its writer)
    that this block ended, if any (it is complete once the writer has its blocks)."""

    writer: int
    segment: int
    closed: tuple[int, int] | None = None


@dataclass
class BlockRouter:
    """Routes consecutive blocks (in index order) to segments, and segments round robin to writers."""

    writers: int
    target_bytes: int = SEGMENT_TARGET_BYTES
    max_blocks: int = SEGMENT_MAX_BLOCKS
    max_segments: int = MAX_SEGMENTS
    #: the open segment (-1: none yet), its bytes and blocks so far
    segment: int = -1
    segment_bytes: int = 0
    segment_blocks: int = 0

    def __post_init__(self) -> None:
        if self.writers < 1 or self.target_bytes < 1 or self.max_blocks < 1 or self.max_segments < 1:
            raise ValueError("a block router needs at least one writer, byte, block and segment")

    def writer_of(self, segment: int) -> int:
        """The writer that assembles ``segment``."""
        return segment % self.writers

    def _target(self) -> int:
        return self.target_bytes << min(max(0, self.segment) // SEGMENTS_PER_DOUBLING, 32)

    def route(self, size_bytes: int | None) -> Route:
        """The route of the next block (``size_bytes``: its size from the block metadata)."""
        closed = None
        full = self.segment_bytes >= self._target() or self.segment_blocks >= self.max_blocks
        if self.segment < 0 or (full and self.segment + 1 < self.max_segments):
            if self.segment >= 0:
                closed = (self.segment, self.writer_of(self.segment))
            self.segment += 1
            self.segment_bytes = self.segment_blocks = 0
        self.segment_bytes += max(0, int(size_bytes or 0))
        self.segment_blocks += 1
        return Route(self.writer_of(self.segment), self.segment, closed)

    def end(self) -> tuple[int, int] | None:
        """The last segment (and its writer), complete once the stream ended; None when no block came."""
        return None if self.segment < 0 else (self.segment, self.writer_of(self.segment))

    @property
    def segments(self) -> int:
        """Segments opened so far."""
        return self.segment + 1


@dataclass(frozen=True)
class PartUpload:
    """One part of the multipart upload: ``segment``'s writer uploads the segments of ``prefix`` (handed
    on to it, in order) followed by its own, as part ``part_number``."""

    part_number: int
    segment: int
    prefix: tuple[int, ...] = ()

    @property
    def segments(self) -> tuple[int, ...]:
        """The segments in this part, in order."""
        return (*self.prefix, self.segment)


@dataclass
class PartPlanner:
    """Decides, as segments complete (in any order), which become parts: in segment order, a run of
    segments becomes one part once it holds ``min_part_bytes``; segment ``k`` (the run's last) gives
    the part number ``k + 1``, so part numbers rise with the offsets, and the last part (the segments
    left over, the aggregated members, the central directory) is :meth:`last_part_number`."""

    min_part_bytes: int = S3_MIN_PART_BYTES
    sizes: dict[int, int] = field(default_factory=dict)
    #: the next segment to consider, the run so far (not yet a part) and its bytes
    next_segment: int = 0
    run: list[int] = field(default_factory=list)
    run_bytes: int = 0

    def completed(self, segment: int, size: int) -> list[PartUpload]:
        """Record that ``segment`` (``size`` bytes) is complete; returns the parts that can go now."""
        if segment in self.sizes or segment < 0:
            raise ValueError(f"segment {segment} completed twice or is not a segment")
        self.sizes[segment] = int(size)
        ready: list[PartUpload] = []
        while self.next_segment in self.sizes:
            current = self.next_segment
            self.next_segment += 1
            self.run.append(current)
            self.run_bytes += self.sizes[current]
            if self.run_bytes >= self.min_part_bytes:
                ready.append(PartUpload(current + 1, current, tuple(self.run[:-1])))
                self.run, self.run_bytes = [], 0
        return ready

    def left_over(self) -> tuple[int, ...]:
        """The segments that went into no part (they go at the start of the last part)."""
        return tuple(self.run)

    def last_part_number(self, segments: int) -> int:
        """The number of the last part of an export with ``segments`` segments."""
        return segments + 1

    def uploaded_bytes(self) -> int:
        """The bytes of the segments in parts so far (where the last part starts in the ZIP, at the end)."""
        left = set(self.run)
        return sum(size for segment, size in self.sizes.items() if segment < self.next_segment and segment not in left)
