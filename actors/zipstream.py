"""Deterministic, streaming ZIP writing and in-order release of per-image results.

Pure Python (no Ray): the writer actor drives these classes.

- ``member_compression`` decides stored vs deflated per member.
- ``ZipStreamWriter`` writes a partial file (unnamed where possible), then flushes, fsyncs and names it
  on ``commit()``; ``abort()`` discards it. The same sequence of calls gives byte-identical files.
- ``ReorderBuffer`` releases results keyed by a 1-based index strictly in index order.
"""

from __future__ import annotations

import contextlib
import copy
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Generic, TypeVar

from isal.isal_zlib import crc32 as _crc32

from ray_export.output_files import OutputFolderError, PartialFile, create_partial
from ray_export.reuse import (
    BackgroundCopies,
    DamagedEntry,
    FileIdentity,
    PreviousChanged,
    SourceEnded,
    StoredEntry,
    check_identity,
    copy_entry_data,
    copy_range,
    copy_stored_entry,
    identity_of_open,
    read_stored_entry,
)

__all__ = [
    "ZIP_DEFLATED",
    "ZIP_STORED",
    "ReorderBuffer",
    "ZipOutputError",
    "ZipStreamWriter",
    "member_compression",
    "tiff_compression",
    "zip_date_time",
]

ZIP_STORED = zipfile.ZIP_STORED
ZIP_DEFLATED = zipfile.ZIP_DEFLATED

STORED_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp"})
TIFF_EXTENSIONS = frozenset({".tif", ".tiff"})
COPY_CHUNK_BYTES = 1 << 20
MEMBER_PERMISSIONS = 0o644
UNIX_CREATE_SYSTEM = 3

_TIFF_COMPRESSION_TAG = 259
_TIFF_UNCOMPRESSED = 1
_TIFF_MAX_ENTRIES = 4096
# ZIP64 is forced for members whose size makes the 32-bit fields unsafe (zipfile's own margin is 5 %).
_ZIP64_MEMBER_THRESHOLD = int(zipfile.ZIP64_LIMIT / 1.05)
_ZIP_MIN_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_ZIP_MAX_DATE_TIME = (2107, 12, 31, 23, 59, 58)
#: zlib deflate level of deflated members. ISA-L's deflate (about 20 times as fast on the export's JSON
#: and CSV members) was measured not to give the same bytes for the same input in every process, so
#: members stay with zlib, whose output depends only on the input and the level.
DEFLATE_LEVEL = 6


def _deflater(level: int) -> Any:
    """A raw deflate compressor (zlib)."""
    return zlib.compressobj(level, zlib.DEFLATED, -15)


def _needs_zip64(size: int) -> bool:
    """Whether a member of ``size`` bytes gets ZIP64 sizes from the start (as ``ZipFile.open`` decides it)."""
    return size > _ZIP64_MEMBER_THRESHOLD or size * 1.05 > zipfile.ZIP64_LIMIT


_COMPRESS_LEVEL_ATTR = "compress_level" if "compress_level" in zipfile.ZipInfo.__slots__ else "_compresslevel"


class ZipOutputError(OSError):
    """The ZIP output cannot be created: folder missing or not writable, or the partial file failed."""


# --------------------------------------------------------------------------------------------------------------------
# Compression choice


def _tiff_compression_from(read_at: Callable[[int, int], bytes]) -> int | None:
    """Compression value of the first IFD of a TIFF or BigTIFF, read through ``read_at(offset, length)``.

    Returns 1 when the tag is absent (the TIFF default), None when the data is not a parseable TIFF.
    """
    header = read_at(0, 16)
    if len(header) < 8:
        return None
    if header[:2] == b"II":
        endian = "<"
    elif header[:2] == b"MM":
        endian = ">"
    else:
        return None
    (version,) = struct.unpack(endian + "H", header[2:4])
    if version == 42:
        (ifd_offset,) = struct.unpack(endian + "I", header[4:8])
        count_format, count_size, entry_size, value_size = "H", 2, 12, 4
    elif version == 43:
        if len(header) < 16:
            return None
        offset_size, _reserved = struct.unpack(endian + "HH", header[4:8])
        if offset_size != 8:
            return None
        (ifd_offset,) = struct.unpack(endian + "Q", header[8:16])
        count_format, count_size, entry_size, value_size = "Q", 8, 20, 8
    else:
        return None
    if ifd_offset < 8:
        return None
    count_bytes = read_at(ifd_offset, count_size)
    if len(count_bytes) < count_size:
        return None
    (entry_count,) = struct.unpack(endian + count_format, count_bytes)
    if entry_count == 0 or entry_count > _TIFF_MAX_ENTRIES:
        return None
    entries = read_at(ifd_offset + count_size, entry_count * entry_size)
    if len(entries) < entry_count * entry_size:
        return None
    value_formats = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
    for start in range(0, entry_count * entry_size, entry_size):
        tag, field_type = struct.unpack(endian + "HH", entries[start : start + 4])
        if tag != _TIFF_COMPRESSION_TAG:
            continue
        value_format = value_formats.get(field_type)
        if value_format is None:
            return None
        value_start = start + 4 + (4 if value_size == 4 else 8)  # after the count field
        width = struct.calcsize(value_format)
        if width > value_size:
            return None
        (value,) = struct.unpack(endian + value_format, entries[value_start : value_start + width])
        return int(value)
    return _TIFF_UNCOMPRESSED


def tiff_compression(data: bytes) -> int | None:
    """Compression tag (259) of the first IFD in TIFF bytes; 1 when absent, None when not parseable."""
    view = memoryview(data)
    return _tiff_compression_from(lambda offset, length: bytes(view[offset : offset + length]))


def _is_tiff_name(name: str) -> bool:
    return Path(name).suffix.lower() in TIFF_EXTENSIONS


def _compression_for(name: str, tiff_value: Callable[[], int | None]) -> int:
    suffix = Path(name).suffix.lower()
    if suffix in STORED_EXTENSIONS:
        return ZIP_STORED
    if suffix in TIFF_EXTENSIONS:
        value = tiff_value()
        if value is not None and value != _TIFF_UNCOMPRESSED:
            return ZIP_STORED
    return ZIP_DEFLATED


def member_compression(name: str, data_head: bytes = b"") -> int:
    """ZIP_STORED for PNG/JPEG/WebP and compressed TIFF members, ZIP_DEFLATED for everything else.

    A TIFF is judged from ``data_head`` (it must reach the first IFD); unparseable TIFF data is deflated.
    """
    return _compression_for(name, lambda: tiff_compression(data_head))


def _file_compression(name: str, source: BinaryIO) -> int:
    def read_tiff_value() -> int | None:
        def read_at(offset: int, length: int) -> bytes:
            source.seek(offset)
            return source.read(length)

        try:
            return _tiff_compression_from(read_at)
        finally:
            source.seek(0)

    return _compression_for(name, read_tiff_value)


# --------------------------------------------------------------------------------------------------------------------
# Writer


def zip_date_time(timestamp: datetime) -> tuple[int, int, int, int, int, int]:
    """ZIP member time from ``timestamp``: UTC fields (naive values are taken as UTC), clamped to 1980..2107."""
    if timestamp.tzinfo is not None:
        timestamp = timestamp.astimezone(timezone.utc)
    fields = (timestamp.year, timestamp.month, timestamp.day, timestamp.hour, timestamp.minute, timestamp.second)
    if fields < _ZIP_MIN_DATE_TIME:
        return _ZIP_MIN_DATE_TIME
    if fields > _ZIP_MAX_DATE_TIME:
        return _ZIP_MAX_DATE_TIME
    return fields


def _open_partial(folder: Path, partial_path: Path | None) -> PartialFile:
    try:
        return create_partial(folder, partial_path)
    except OutputFolderError as error:
        raise ZipOutputError(str(error)) from error.__cause__


class _Descriptor:
    """An open descriptor seen as a file (for :func:`~ray_export.reuse.identity_of_open`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


class ZipStreamWriter:
    """Streams members into a partial file (see :mod:`ray_export.output_files`: an unnamed file in the
    output's folder where the platform allows it, else ``partial_path``, else a private temporary name);
    ``commit()`` gives it the name ``output_path``. Without ``output_path`` the ZIP is made in ``folder``
    and ``commit()`` leaves it open as :attr:`file` (for an upload), to be closed with :meth:`abort`.

    With ``spool`` (an open, empty, unnamed file) the ZIP is written there instead; ``start_offset`` is
    where that file begins in the ZIP when the bytes before it are written elsewhere (see *Segments*
    below).

    Every member gets the same date-time (from ``timestamp``), Unix permissions 0644, no extra fields and
    the fixed deflate level, so the same sequence of calls gives byte-identical files. As a context manager
    it commits on a clean exit (unless already committed or aborted) and aborts on an exception.
    """

    #: Whether the kernel copies reused entries' data on a thread of its own while members go on being
    #: written (:class:`~ray_export.reuse.BackgroundCopies`); :meth:`commit` waits for them, and whoever
    #: uses the file otherwise first calls :meth:`wait_for_copies`.
    background_copies: bool = False
    _copies: BackgroundCopies | None = None
    #: the previous ZIPs copied from, by their identity when checked: a descriptor of each (see commit)
    _sources: dict[FileIdentity, int] | None = None

    def __init__(
        self,
        output_path: str | Path | None,
        timestamp: datetime,
        compresslevel: int = DEFLATE_LEVEL,
        partial_path: str | Path | None = None,
        replace: bool = True,
        folder: str | Path | None = None,
        spool: BinaryIO | None = None,
        start_offset: int = 0,
    ) -> None:
        self._committed = True  # nothing to discard until the partial file exists
        if not 0 <= compresslevel <= 9:
            raise ValueError(f"compresslevel must be 0..9, got {compresslevel}")
        if output_path is None and folder is None and spool is None:
            raise ValueError("a ZIP writer needs an output path, a folder or a spool file")
        #: where in the ZIP this writer's file begins (the bytes before it are written elsewhere)
        self._start_offset = int(start_offset)
        self.output_path = Path(output_path) if output_path is not None else None
        #: False: ``commit()`` refuses to replace an output file that appeared while the ZIP was written
        self.replace = replace
        self.date_time = zip_date_time(timestamp)
        self.compresslevel = compresslevel
        self._names: set[str] = set()
        self._final_size: int | None = None
        self._closed = False
        #: where compressed-ahead members are spooled (None: they are written one by one)
        self._spool_folder: Path | None = None
        #: members compressed ahead, waiting for their turn (see :meth:`compressing_ahead`)
        self._ahead: _AheadQueue | None = None
        if spool is not None:
            self._partial = PartialFile(spool, None)
        else:
            where = Path(folder) if folder is not None else self.output_path.parent  # type: ignore[union-attr]
            self._spool_folder = where
            self._partial = _open_partial(where, Path(partial_path) if partial_path is not None else None)
        self._file = self._partial.file
        self._committed = False
        try:
            target = _ShiftedFile(self._file, self._start_offset) if self._start_offset else self._file
            self._zip = zipfile.ZipFile(target, mode="w", allowZip64=True)
        except BaseException:
            self._partial.discard()
            raise

    @property
    def partial_path(self) -> Path | None:
        """The partial file's name while it has one (None: an unnamed file, or committed)."""
        return self._partial.path

    @property
    def file(self) -> BinaryIO:
        """The ZIP's open file (after a ``commit()`` without output path: the whole ZIP, to upload)."""
        return self._file

    # ---------------------------------------------------------------------------------------------------------------
    @property
    def member_count(self) -> int:
        """Number of members written so far."""
        return len(self._names)

    @property
    def bytes_written(self) -> int:
        """Current size of the partial file (the final size after ``commit()``, 0 after ``abort()``)."""
        if self._final_size is not None:
            return self._final_size
        if self._closed:
            return 0
        return self._start_offset + self._file.tell()

    @property
    def closed(self) -> bool:
        """True after ``commit()`` or ``abort()``."""
        return self._closed

    # ---------------------------------------------------------------------------------------------------------------
    def _member_info(self, name: str, compress_type: int) -> zipfile.ZipInfo:
        if self._closed:
            raise ValueError("ZIP writer is already committed or aborted")
        if not isinstance(name, str) or not name or name.startswith("/") or name.endswith("/"):
            raise ValueError(f"invalid ZIP member name: {name!r}")
        if name in self._names:
            raise ValueError(f"duplicate ZIP member name: {name!r}")
        if compress_type not in (ZIP_STORED, ZIP_DEFLATED):
            raise ValueError(f"unsupported compress_type {compress_type!r} for {name!r}")
        info = zipfile.ZipInfo(name, date_time=self.date_time)
        info.compress_type = compress_type
        setattr(info, _COMPRESS_LEVEL_ATTR, self.compresslevel if compress_type == ZIP_DEFLATED else None)
        info.create_system = UNIX_CREATE_SYSTEM
        info.external_attr = MEMBER_PERMISSIONS << 16
        info.extra = b""
        info.comment = b""
        return info

    def add_bytes(
        self, name: str, data: bytes | bytearray | memoryview | str, compress_type: int | None = None
    ) -> None:
        """Add one member from memory; ``compress_type`` None picks it with ``member_compression``."""
        payload = data.encode("utf-8") if isinstance(data, str) else data
        if compress_type is None:
            compress_type = member_compression(name, bytes(payload) if _is_tiff_name(name) else b"")
        if self._ahead is not None and compress_type == ZIP_DEFLATED:
            self._ahead.submit(name, memoryview(payload).nbytes, _MemorySource(bytes(payload)))
            return
        self._write_written_ahead()
        self._write_member(name, compress_type, memoryview(payload).nbytes, [payload])

    def add_file(self, name: str, source: str | Path | BinaryIO, compress_type: int | None = None) -> None:
        """Add one member by streaming a file in chunks: a path, or an open binary file (a spool file,
        read from its start); ``compress_type`` None picks it."""
        with contextlib.ExitStack() as stack:
            if isinstance(source, (str, Path)):
                handle: BinaryIO = stack.enter_context(open(source, "rb"))
            else:
                handle = source
                handle.flush()
                handle.seek(0)
            if compress_type is None:
                compress_type = _file_compression(name, handle)
            size = os.fstat(handle.fileno()).st_size
            if self._ahead is not None and compress_type == ZIP_DEFLATED:
                # its own descriptor: the caller may close (and so delete) an unnamed spool file now
                self._ahead.submit(name, size, _FileSource(os.dup(handle.fileno())))
                return
            self._write_written_ahead()
            self._write_member(name, compress_type, size, iter(lambda: handle.read(COPY_CHUNK_BYTES), b""))

    @contextlib.contextmanager
    def compressing_ahead(self, threads: int) -> Iterator[None]:
        """Within the block, deflated members given to :meth:`add_bytes` and :meth:`add_file` are
        compressed side by side on ``threads`` threads (zlib lets go of the interpreter while it works)
        into unnamed spool files, and written in the order they were given: before any other member,
        and at the latest when the block ends. The ZIP's bytes are those of writing them one by one (a
        deflate stream does not depend on how its input is cut). Without a folder for spool files, or
        with one thread, members are written one by one."""
        if self._ahead is not None or self._spool_folder is None or threads < 2:
            yield
            return
        self._ahead = _AheadQueue(self, self._spool_folder, threads)
        try:
            yield
            self._write_written_ahead()
        finally:
            queue, self._ahead = self._ahead, None
            queue.close()

    def _write_written_ahead(self) -> None:
        """Write the members compressed ahead, in order (waiting for each one's compression)."""
        if self._ahead is None:
            return
        waiting = self._ahead.take()
        for position, (name, size, job) in enumerate(waiting):
            try:
                crc, read, compressed, spool = job.result()
            except BaseException:
                _drop_jobs(waiting[position + 1 :])
                raise
            try:
                if read != size:
                    raise ZipOutputError(f"{name}: {read} bytes given for a member of {size}")
                zip64 = _needs_zip64(size)
                if not zip64 and compressed > zipfile.ZIP64_LIMIT:
                    raise ZipOutputError(f"{name}: compressed size needs ZIP64")
                info = self._member_info(name, ZIP_DEFLATED)
                info.file_size, info.CRC, info.compress_size = size, crc, compressed
                with self._raw_member(info, zip64) as out:
                    spool.seek(0)
                    while chunk := spool.read(COPY_CHUNK_BYTES):
                        out.write(chunk)
            except BaseException:
                _drop_jobs(waiting[position + 1 :])
                raise
            finally:
                spool.close()

    @contextlib.contextmanager
    def _raw_member(self, info: zipfile.ZipInfo, zip64: bool) -> Iterator[BinaryIO]:
        """Write one member's bytes directly: the local header, then the caller writes the data to the file
        it is given and fills ``info.CRC`` and ``info.compress_size``, then the header again with them and
        the member is registered — the steps ``ZipFile.open(mode="w")`` takes on a seekable file."""
        archive = self._zip
        with archive._lock:
            if archive._writing:
                raise ValueError("another member is being written")
            archive.fp.seek(archive.start_dir)
            info.header_offset = archive.fp.tell()
            archive._writecheck(info)
            archive._didModify = True
            archive.fp.write(info.FileHeader(zip64))
            yield archive.fp
            end = archive.fp.tell()
            archive.fp.seek(info.header_offset)
            archive.fp.write(info.FileHeader(zip64))
            archive.fp.seek(end)
            archive.start_dir = end
            archive.filelist.append(info)
            archive.NameToInfo[info.filename] = info
        self._names.add(info.filename)

    def _write_member(self, name: str, compress_type: int, size: int, chunks: Iterable[Any]) -> None:
        """Write one member of ``size`` bytes given in ``chunks`` (raw deflate at :attr:`compresslevel`, or stored)."""
        info = self._member_info(name, compress_type)
        info.file_size = size
        info.CRC = 0
        info.compress_size = 0
        zip64 = _needs_zip64(size)
        with self._raw_member(info, zip64) as out:
            deflater = _deflater(self.compresslevel) if compress_type == ZIP_DEFLATED else None
            crc = written = compressed = 0
            for chunk in chunks:
                crc = _crc32(chunk, crc)
                written += memoryview(chunk).nbytes
                data = deflater.compress(chunk) if deflater is not None else chunk
                compressed += memoryview(data).nbytes
                out.write(data)
            if deflater is not None:
                data = deflater.flush()
                compressed += len(data)
                out.write(data)
            if written != size:
                raise ZipOutputError(f"{name}: {written} bytes given for a member of {size}")
            if not zip64 and compressed > zipfile.ZIP64_LIMIT:
                raise ZipOutputError(f"{name}: compressed size needs ZIP64")
            info.CRC = crc
            info.compress_size = compressed

    def add_stored_entry(self, name: str, entry: StoredEntry, source: BinaryIO) -> None:
        """Add one member by copying ``entry``, an entry of another ZIP written this way (``source``), as its
        compressed bytes.

        The bytes written are those :meth:`add_bytes` gives for the uncompressed data under ``name``:
        the same local header and the same compressed stream (the deflate level and library are part
        of the software versions an entry is reused across). An entry compressed otherwise than
        ``name`` calls for is refused.

        An entry the copy stage checked (``entry.checked_in``, ``entry.data_offset``) is not read here:
        its data goes from file to file by the kernel where both are local files (see
        :func:`~ray_export.reuse.copy_entry_data`), once ``source`` is found to be the file it was
        checked in (same size, modification time, inode and device; a stream without a descriptor is
        the caller's to compare). Any other entry is checked (local header, size, CRC-32) before it is
        copied. A failed check raises :class:`ZipOutputError` (the ZIP being written is then unusable:
        abort it).
        """
        self._write_written_ahead()
        method, size = int(entry.method), int(entry.file_size)
        # A TIFF entry's method was chosen from its bytes under a TIFF name, as it would be here: only a
        # TIFF name given an entry of another name needs the bytes to tell.
        if not (_is_tiff_name(name) and _is_tiff_name(entry.name)):
            head = b""
            if _is_tiff_name(name):
                raw = read_stored_entry(source, entry)
                head = raw if method == ZIP_STORED else zlib.decompress(raw, -15)
            if member_compression(name, head) != method:
                raise ValueError(
                    f"stored entry for {name!r} has compression method {method}, not the one it calls for"
                )
        try:
            if entry.checked_in is not None and entry.data_offset is not None:
                check_identity(entry.checked_in, identity_of_open(source), "the previous export")
                data_offset = entry.data_offset
            else:
                data_offset = copy_stored_entry(source, entry)
        except (DamagedEntry, PreviousChanged) as exc:
            raise ZipOutputError(f"the previous export changed while it was copied: {exc}") from exc
        info = self._member_info(name, method)
        info.file_size = size
        info.compress_size = int(entry.compress_size)
        info.CRC = int(entry.crc)
        copies = self._background_copies(source, entry)
        with self._raw_member(info, _needs_zip64(size)):
            # into the file itself, whose positions are those of its bytes (the ZIP's may be shifted)
            if copies is not None:  # the range is left for the copier: the next member goes after it
                start = self._file.tell()
                self._file.seek(start + info.compress_size)
                copies.submit(source.fileno(), data_offset, start, info.compress_size)
                return
            try:
                copy_entry_data(source, data_offset, info.compress_size, self._file)
            except SourceEnded as exc:
                raise ZipOutputError(f"the previous export changed while it was copied: {exc}") from exc

    def _background_copies(self, source: BinaryIO, entry: StoredEntry) -> BackgroundCopies | None:
        """The copier of a checked entry's data when it goes by the kernel in the background (local files,
        :attr:`background_copies`); notes ``source`` for the check after the last copy."""
        if entry.checked_in is None or identity_of_open(source) is None or identity_of_open(self._file) is None:
            return None
        if self._sources is None:
            self._sources = {}
        if entry.checked_in not in self._sources:
            self._sources[entry.checked_in] = os.dup(source.fileno())
        if not self.background_copies:
            return None
        if self._copies is None:
            self._copies = BackgroundCopies.open(self._file.fileno())
            if self._copies is None:
                self.background_copies = False
                return None
        try:
            self._copies.raise_failure()
        except DamagedEntry as exc:
            raise ZipOutputError(f"the previous export changed while it was copied: {exc}") from exc
        return self._copies

    def wait_for_copies(self) -> None:
        """Wait for the reused entries' data still being copied, then check that each previous ZIP copied
        from is still the file its entries were checked in (a write moves its modification time)."""
        try:
            if self._copies is not None:
                self._copies.wait()
            for identity, fd in (self._sources or {}).items():
                check_identity(identity, identity_of_open(_Descriptor(fd)), "the previous export")
        except (DamagedEntry, PreviousChanged) as exc:
            raise ZipOutputError(f"the previous export changed while it was copied: {exc}") from exc

    def _stop_copies(self, cancel: bool) -> None:
        """End the copier and close the previous ZIPs' descriptors (``cancel``: skip copies not begun)."""
        copies, self._copies = self._copies, None
        if copies is not None:
            copies.close(cancel)
        sources, self._sources = self._sources, None
        for fd in (sources or {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)

    # ---------------------------------------------------------------------------------------------------------------
    def commit(self) -> int:
        """Write the central directory, flush, fsync and give the partial file the output's name; return
        the final size. An output that appeared meanwhile is left alone without ``replace``."""
        if self._closed:
            if self._final_size is not None:
                return self._final_size
            raise ValueError("ZIP writer was aborted")
        try:
            self._write_written_ahead()
            self.wait_for_copies()
            self._stop_copies(cancel=False)
            self._zip.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            size = self._start_offset + os.fstat(self._file.fileno()).st_size
            if self.output_path is not None:
                try:
                    self._partial.commit(self.output_path, self.replace)
                except FileExistsError:
                    raise ZipOutputError(
                        f"output {self.output_path} appeared while the export ran; it was left as it is"
                    ) from None
        except BaseException:
            self.abort()
            raise
        self._committed = self.output_path is not None
        self._closed = True
        self._final_size = size
        return size

    def abort(self) -> None:
        """Close and remove the partial file (or the uncommitted ZIP). Idempotent; never raises."""
        if self._ahead is not None:
            queue, self._ahead = self._ahead, None
            queue.close()
        if self._committed:
            return
        self._committed = True
        self._closed = True
        # The partial is being discarded: a failed close or unlink changes nothing for the caller.
        with contextlib.suppress(Exception):
            self._stop_copies(cancel=True)  # before the file closes: the copier writes through it
        with contextlib.suppress(Exception):
            self._zip.close()
        self._partial.discard()

    def __enter__(self) -> ZipStreamWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.commit()

    def __del__(self) -> None:
        # A writer dropped without commit leaves no partial behind.
        if not getattr(self, "_committed", True):
            self.abort()

    # ---------------------------------------------------------------------------------------------------------------
    # Segments: a ZIP assembled from runs of members written by several writers. Local headers hold no
    # offsets, so a run's bytes are the same wherever it lands; only the central directory, written once
    # at the end, holds the members' absolute offsets.

    def segment_members(self) -> tuple[int, list[zipfile.ZipInfo]]:
        """End this writer as a segment: its size and copies of its members' records (offsets from the
        segment's start). The file keeps exactly those bytes (no central directory); :meth:`abort` drops it."""
        self._write_written_ahead()
        if self._closed:
            raise ValueError("ZIP writer is already committed or aborted")
        self.wait_for_copies()  # its reused entries' bytes are all there, from the files they were checked in
        archive = self._zip
        with archive._lock:
            if archive._writing:
                raise ValueError("a member is being written")
            archive.fp.flush()
            return archive.start_dir - self._start_offset, [copy.copy(info) for info in archive.filelist]

    def adopt_members(self, infos: Iterable[zipfile.ZipInfo], offset: int) -> None:
        """List members written elsewhere, at ``offset`` in the ZIP (their records' offsets are relative to
        it), in the central directory; their bytes are not in this writer's file."""
        self._write_written_ahead()
        if self._closed:
            raise ValueError("ZIP writer is already committed or aborted")
        archive = self._zip
        with archive._lock:
            for info in infos:
                if info.filename in self._names:
                    raise ValueError(f"duplicate ZIP member name: {info.filename!r}")
                shifted = copy.copy(info)
                shifted.header_offset = info.header_offset + offset
                archive.filelist.append(shifted)
                archive.NameToInfo[shifted.filename] = shifted
                self._names.add(shifted.filename)

    def append_segment(
        self, source: BinaryIO | bytes | memoryview, size: int, infos: Iterable[zipfile.ZipInfo]
    ) -> None:
        """Append a segment: the first ``size`` bytes of ``source`` (an open file, copied by the kernel
        where it can, or bytes) at the current end, and its members (``infos``, offsets relative to the
        segment) to the directory."""
        self._write_written_ahead()
        if self._closed:
            raise ValueError("ZIP writer is already committed or aborted")
        archive = self._zip
        with archive._lock:
            if archive._writing:
                raise ValueError("a member is being written")
            start = archive.start_dir
            archive.fp.seek(start)
            archive.fp.flush()
            if isinstance(source, (bytes, bytearray, memoryview)):
                copied = _pwrite_all(self._file.fileno(), memoryview(source)[:size], start - self._start_offset)
                if copied != size:
                    raise ZipOutputError(f"a segment of {size} bytes ended after {copied} bytes")
            else:
                try:
                    copy_range(source.fileno(), 0, self._file.fileno(), start - self._start_offset, size)
                except SourceEnded:
                    raise ZipOutputError(f"a segment of {size} bytes ended early") from None
            archive.start_dir = start + size
            archive.fp.seek(archive.start_dir)
            archive._didModify = True
            self.adopt_members(infos, start)


class _MemorySource:
    """A member's data in memory, to be compressed ahead."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def chunks(self) -> Iterator[memoryview]:
        view = memoryview(self.data)
        for start in range(0, len(view), COPY_CHUNK_BYTES):
            yield view[start : start + COPY_CHUNK_BYTES]

    def close(self) -> None:
        self.data = b""


class _FileSource:
    """A member's data in a file (its own descriptor, read from the start), to be compressed ahead."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def chunks(self) -> Iterator[bytes]:
        offset = 0
        while chunk := os.pread(self.fd, COPY_CHUNK_BYTES, offset):
            offset += len(chunk)
            yield chunk

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class _AheadQueue:
    """The members of :meth:`ZipStreamWriter.compressing_ahead`: each compressed on a pool thread into an
    unnamed spool file, waiting to be written in the order given."""

    def __init__(self, writer: ZipStreamWriter, folder: Path, threads: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.level = writer.compresslevel
        self.folder = folder
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ray-export-deflate")
        self.waiting: list[tuple[str, int, Any]] = []
        self.names: set[str] = set()
        self.writer = writer

    def submit(self, name: str, size: int, source: _MemorySource | _FileSource) -> None:
        """Queue member ``name`` of ``size`` bytes; its compression starts now."""
        try:
            self.writer._member_info(name, ZIP_DEFLATED)  # a bad or duplicate name fails here, as it would
            if name in self.names:
                raise ValueError(f"duplicate ZIP member name: {name!r}")
        except BaseException:
            source.close()
            raise
        self.names.add(name)
        self.waiting.append((name, size, self.pool.submit(self._compress, source)))

    def _compress(self, source: _MemorySource | _FileSource) -> tuple[int, int, int, BinaryIO]:
        from ray_export.output_files import spool_file

        spool = spool_file(self.folder)
        try:
            deflater = _deflater(self.level)
            crc = read = compressed = 0
            for chunk in source.chunks():
                crc = _crc32(chunk, crc)
                read += len(chunk)
                data = deflater.compress(chunk)
                compressed += len(data)
                spool.write(data)
            data = deflater.flush()
            compressed += len(data)
            spool.write(data)
            spool.flush()
        except BaseException:
            spool.close()
            raise
        finally:
            source.close()
        return crc, read, compressed, spool

    def take(self) -> list[tuple[str, int, Any]]:
        """The members waiting, in order (the queue is then empty)."""
        waiting, self.waiting = self.waiting, []
        self.names.clear()
        return waiting

    def close(self) -> None:
        """Drop whatever is still waiting (its spool files go) and end the threads."""
        _drop_jobs(self.take())
        self.pool.shutdown(wait=True)


def _drop_jobs(waiting: list[tuple[str, int, Any]]) -> None:
    """Cancel compressions not started, and close the spool files of those done."""
    for _name, _size, job in waiting:
        job.cancel()
    for _name, _size, job in waiting:
        with contextlib.suppress(BaseException):
            job.result()[3].close()


class _ShiftedFile:
    """A file seen ``offset`` bytes further on: what zipfile reads as positions are positions in the whole
    ZIP, while the file holds only the part from ``offset`` on."""

    def __init__(self, raw: BinaryIO, offset: int) -> None:
        self.raw = raw
        self.offset = offset

    def tell(self) -> int:
        return self.raw.tell() + self.offset

    def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            if position < self.offset:
                raise ValueError(f"position {position} lies before this file's start {self.offset}")
            return self.raw.seek(position - self.offset) + self.offset
        return self.raw.seek(position, whence) + self.offset

    def write(self, data: Any) -> int:
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()


def _pwrite_all(fd: int, data: memoryview, offset: int) -> int:
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)
    return written


# --------------------------------------------------------------------------------------------------------------------
# Reorder buffer

T = TypeVar("T")


class ReorderBuffer(Generic[T]):
    """Holds results keyed by index and releases them strictly in index order, starting at ``first_index``."""

    def __init__(self, first_index: int = 1) -> None:
        self._next_index = first_index
        self._held: dict[int, T] = {}
        self._max_pending = 0

    @property
    def next_index(self) -> int:
        """The index the buffer waits for."""
        return self._next_index

    @property
    def pending(self) -> int:
        """Number of results held, waiting for an earlier index."""
        return len(self._held)

    @property
    def max_pending(self) -> int:
        """Largest number of results held at once so far."""
        return self._max_pending

    def put(self, index: int, item: T) -> list[tuple[int, T]]:
        """Add one result; return the contiguous run now releasable, in index order (possibly empty)."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if index < self._next_index:
            raise ValueError(f"index {index} was already released (next expected {self._next_index})")
        if index in self._held:
            raise ValueError(f"duplicate index {index}")
        self._held[index] = item
        released: list[tuple[int, T]] = []
        while self._next_index in self._held:
            released.append((self._next_index, self._held.pop(self._next_index)))
            self._next_index += 1
        self._max_pending = max(self._max_pending, len(self._held))
        return released

    def pending_indices(self) -> list[int]:
        """Indices held, ascending (for diagnostics)."""
        return sorted(self._held)
