"""Incremental export: what a previous ZIP of the same project lets an export take over unchanged.

Every export records, in the manifest member (:mod:`ray_export.formats.manifest`), a fingerprint of
each image's inputs and the per-image parts that feed the aggregated members. An export given a
previous ZIP (``reuse``) compares fingerprints image by image:

- the **member fingerprint** covers what the image's own members (``images/``, ``unreadable/``,
  ``visualizations/``) and its size, decodability and copy/visualize problems depend on: the image and
  segmentation rows (``updatedAt`` and every projected field) and the original file (size and SHA-256,
  or size and modification time with ``file_fingerprint: mtime``);
- the **parts fingerprint** adds what the annotation and metric parts depend on besides: the export
  index, the member names and the scale.

An image whose member fingerprint matches has its members copied from the previous ZIP as compressed
entries and is not drawn again; when its parts fingerprint matches too, its annotation and metric parts
come from the manifest and are not recomputed either. Each copied entry is checked once, by the copy
stage (in parallel): its local header, size and CRC-32, and where its data begins; the writer then has
the kernel copy that data from file to file (:func:`copy_entry_data`) without reading it, after checking
that the previous ZIP is still the file the entry was checked in (:class:`FileIdentity`: size,
modification time, inode), once more before the commit. Options
that shape the content and the software versions are compared once for the whole ZIP: a previous ZIP
made otherwise, of another project, without a readable manifest, or damaged, is not trusted, and the
images concerned are computed as in a full export. The result is byte-identical to a full export.

Nothing here knows about Ray.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import queue
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pyarrow as pa

#: The manifest member and the version of its layout.
MANIFEST_MEMBER = "documentation/export_manifest.parquet"
MANIFEST_VERSION = "1"
#: How an original file enters its image's fingerprint.
FILE_FINGERPRINTS = ("sha256", "mtime")
#: Reuse levels of an image: computed, members copied (parts recomputed), members and parts reused.
COMPUTED, MEMBERS_REUSED, ALL_REUSED = 0, 1, 2
#: Why an image was computed although a previous ZIP was given.
COMPUTE_REASONS = ("new", "changed", "renumbered", "damaged", "not_trusted")

#: Content options that do not decide whether the previous ZIP is trusted: image selection and scale
#: enter each image's parts fingerprint instead (an export of a subset can feed one of the whole).
_PER_IMAGE_OPTIONS = ("image_ids", "scale")

#: Where one stored entry of the previous ZIP lies, as the copy stage checked it, for the writer to copy
#: it from there: the bytes go from file to file, never through the object store. ``data_offset`` is
#: where the ``compress_size`` bytes checked begin; ``previous_*`` is the identity of the previous ZIP
#: when they were checked (:class:`FileIdentity`), which the writer compares with the file it copies from.
REUSED_ENTRY_TYPE = pa.struct(
    [
        pa.field("format", pa.string()),
        pa.field("name", pa.string()),
        pa.field("header_offset", pa.int64()),
        pa.field("compress_size", pa.int64()),
        pa.field("crc", pa.int64()),
        pa.field("file_size", pa.int64()),
        pa.field("method", pa.int64()),
        pa.field("data_offset", pa.int64()),
        pa.field("previous_size", pa.int64()),
        pa.field("previous_mtime_ns", pa.int64()),
        pa.field("previous_inode", pa.int64()),
        pa.field("previous_device", pa.int64()),
    ]
)
REUSED_ENTRIES_TYPE = pa.list_(REUSED_ENTRY_TYPE)


class DamagedEntry(ValueError):
    """A stored entry of the previous ZIP could not be read back intact."""


# ------------------------------------------------------------------------------------------------ fingerprints


def _digest(*values: Any) -> str:
    h = hashlib.sha256()
    for value in values:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def options_fingerprint(content_options: Mapping[str, Any]) -> str:
    """Fingerprint of the content options that decide whether a previous ZIP is trusted at all."""
    return _digest({k: v for k, v in content_options.items() if k not in _PER_IMAGE_OPTIONS})


def software_fingerprint(versions: Mapping[str, str]) -> str:
    """Fingerprint of the software versions that shape the bytes."""
    return _digest(dict(versions))


def member_fingerprint(row_fields: Mapping[str, Any], file_print: Mapping[str, Any] | None, file_name: str) -> str:
    """Fingerprint of an image's own members: its row fields (``updatedAt`` included), its file (size and
    hash or modification time; ``None`` when the file is not read) and its name's extension (which
    decides how the original is stored)."""
    suffix = file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
    return _digest(MANIFEST_VERSION, dict(row_fields), file_print, suffix)


def parts_fingerprint(member_print: str, index: int, file_name: str, stem: str, scale: float | None) -> str:
    """Fingerprint of an image's annotation and metric parts: its member fingerprint, index, names and scale."""
    return _digest(member_print, int(index), file_name, stem, None if scale is None else repr(float(scale)))


def file_fingerprint_of(data: bytes | memoryview | None, size: int | None = None, mtime_ns: int | None = None,
                        mode: str = "sha256") -> dict[str, Any] | None:  # fmt: skip
    """The file part of a fingerprint: size and SHA-256 of ``data``, or ``size`` and ``mtime_ns``."""
    if mode == "mtime":
        return None if size is None or mtime_ns is None else {"size": int(size), "mtime_ns": int(mtime_ns)}
    if data is None:
        return None
    return {"size": memoryview(data).nbytes, "sha256": hashlib.sha256(data).hexdigest()}


# ------------------------------------------------------------------------------------------ the previous ZIP


@dataclass(frozen=True)
class StoredEntry:
    """Where one member of an image lies in the previous ZIP, and the lowest reuse level that copies it."""

    format: str
    name: str
    header_offset: int
    compress_size: int
    file_size: int
    crc: int
    method: int
    level: int
    #: where its data begins, and the previous ZIP's identity, once the copy stage checked it (the writer
    #: then copies the data without reading it); ``None``: not checked, the writer checks it while copying
    data_offset: int | None = None
    checked_in: FileIdentity | None = None


@dataclass(frozen=True)
class ReuseCandidate:
    """What the previous ZIP holds for one image (by image id)."""

    member_fingerprint: str
    parts_fingerprint: str
    width: int
    height: int
    decodable: bool | None
    entries: tuple[StoredEntry, ...]
    #: a member the manifest lists is missing from the ZIP: the image is computed (``damaged``)
    broken: bool = False


@dataclass
class ReuseSource:
    """The previous ZIP as the copy stage sees it: where it is and what it holds per image id."""

    location: str
    candidates: dict[str, ReuseCandidate] = field(default_factory=dict)


@dataclass
class PreviousExport:
    """The outcome of opening a previous ZIP: a trusted source, or the reason it is not trusted."""

    location: str
    source: ReuseSource | None
    reason: str | None = None


@contextlib.contextmanager
def open_binary(location: str) -> Iterator[BinaryIO]:
    """A seekable binary file of a local path or a ``pyarrow.fs`` URI."""
    from .locations import is_uri, local_path

    if is_uri(location) and not location.lower().startswith("file:"):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(location)
        with fs.open_input_file(path) as fh:
            yield fh  # type: ignore[misc]
        return
    with open(local_path(location), "rb") as fh:
        yield fh


def reuse_location_exists(location: str) -> bool:
    """Whether ``location`` (a path or URI) names an existing file."""
    from .locations import is_uri, local_path

    if is_uri(location) and not location.lower().startswith("file:"):
        import pyarrow.fs as pafs

        try:
            fs, path = pafs.FileSystem.from_uri(location)
            return fs.get_file_info(path).type == pafs.FileType.File
        except Exception:
            return False
    return os.path.isfile(local_path(location))


def read_manifest(zf: zipfile.ZipFile) -> pa.Table:
    """The manifest table of an open ZIP (its CRC is checked while reading); ``KeyError`` without one."""
    import pyarrow.parquet as pq

    data = zf.read(MANIFEST_MEMBER)
    return pq.read_table(pa.BufferReader(data))


def manifest_metadata(table: pa.Table) -> dict[str, str]:
    """The manifest's own metadata (project, fingerprints, content options, versions)."""
    raw = table.schema.metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"ray_export.")}


def _options_difference(before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(before) | set(now) if k not in _PER_IMAGE_OPTIONS and before.get(k) != now.get(k))
    return ", ".join(keys) or "unknown"


def _versions_difference(before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    return ", ".join(f"{k} {before.get(k) or '-'} -> {now.get(k) or '-'}" for k in changed) or "unknown"


def open_previous_export(
    location: str,
    project_id: str,
    content_options: Mapping[str, Any],
    versions: Mapping[str, str],
    part_levels: Mapping[str, int],
) -> PreviousExport:
    """Open and check a previous ZIP; never raises for a bad ZIP (the reason says why it is not trusted).

    ``part_levels``: for each selected format with per-image members, the lowest reuse level at which
    its member is copied (:data:`MEMBERS_REUSED` for originals and visualizations, :data:`ALL_REUSED`
    for members made from annotation parts).
    """
    from .locations import uri_for_display

    shown = uri_for_display(location)
    try:
        with open_binary(location) as fh, zipfile.ZipFile(fh) as zf:
            try:
                table = read_manifest(zf)
            except KeyError:
                return PreviousExport(location, None, f"{shown} has no {MANIFEST_MEMBER}")
            infos = {info.filename: info for info in zf.infolist()}
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, pa.ArrowException) as exc:
        return PreviousExport(location, None, f"{shown} is damaged or not a ZIP: {type(exc).__name__}: {exc}")
    meta = manifest_metadata(table)
    if meta.get("ray_export.manifest_version") != MANIFEST_VERSION:
        return PreviousExport(location, None, f"{shown} has a manifest of another layout")
    if meta.get("ray_export.project_id") != project_id:
        return PreviousExport(location, None, f"{shown} is an export of another project")
    before_versions = json.loads(meta.get("ray_export.software_versions", "{}"))
    if meta.get("ray_export.software_fingerprint") != software_fingerprint(versions):
        changed = _versions_difference(before_versions, versions)
        return PreviousExport(location, None, f"{shown} was made by other software versions ({changed})")
    before_options = json.loads(meta.get("ray_export.content_options", "{}"))
    if meta.get("ray_export.options_fingerprint") != options_fingerprint(content_options):
        return PreviousExport(
            location, None,
            f"{shown} was made with other content options ({_options_difference(before_options, content_options)})",
        )  # fmt: skip
    return PreviousExport(location, ReuseSource(location, _candidates(table, infos, part_levels)))


def _candidates(
    table: pa.Table, infos: Mapping[str, zipfile.ZipInfo], part_levels: Mapping[str, int]
) -> dict[str, ReuseCandidate]:
    columns = ["image_id", "member_fingerprint", "parts_fingerprint", "width", "height", "decodable", "members"]
    out: dict[str, ReuseCandidate] = {}
    for row in table.select(columns).to_pylist():
        entries: list[StoredEntry] = []
        broken = False
        for member in row["members"] or []:
            info = infos.get(member["name"])
            level = part_levels.get(member["format"])
            if level is None:
                continue
            if info is None:
                broken = True
                continue
            entries.append(
                StoredEntry(member["format"], info.filename, info.header_offset, info.compress_size,
                            info.file_size, info.CRC, info.compress_type, level)
            )
        out[str(row["image_id"])] = ReuseCandidate(
            row["member_fingerprint"], row["parts_fingerprint"], int(row["width"] or 0), int(row["height"] or 0),
            row["decodable"], tuple(entries), broken,
        )  # fmt: skip
    return out


try:  # ISA-L's CRC-32 (the same checksum, several times faster than zlib's)
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a dependency
    _crc32 = zlib.crc32

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"


#: Bytes read at a time from a previous ZIP (into one buffer, reused for the whole entry).
COPY_CHUNK = 1 << 20
#: Most bytes one ``copy_file_range`` or ``sendfile`` call is asked for.
_KERNEL_CALL_BYTES = 1 << 30


def _fileno(fh: Any) -> int | None:
    """The descriptor of an open local file; ``None`` for other streams (a ``pyarrow.fs`` file)."""
    try:
        fd = fh.fileno()
    except (AttributeError, OSError, ValueError, NotImplementedError):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _seek_to_data(fh: BinaryIO, entry: StoredEntry) -> int:
    """Check the entry's local header, leave ``fh`` at its first data byte and return that offset."""
    try:
        fh.seek(entry.header_offset)
        header = fh.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size:
            raise DamagedEntry(f"{entry.name}: truncated local header")
        fields = _LOCAL_HEADER.unpack(header)
        if fields[0] != _LOCAL_SIGNATURE:
            raise DamagedEntry(f"{entry.name}: no local header at its offset")
        name_length, extra_length = fields[9], fields[10]
        name = fh.read(name_length)
        if name.decode("utf-8", "replace") != entry.name:
            raise DamagedEntry(f"{entry.name}: the local header names another member")
        data_offset = entry.header_offset + _LOCAL_HEADER.size + name_length + extra_length
        fh.seek(data_offset)
        return data_offset
    except DamagedEntry:
        raise
    except (OSError, ValueError) as exc:
        raise DamagedEntry(f"{entry.name}: {type(exc).__name__}: {exc}") from exc


def copy_stored_entry(fh: BinaryIO, entry: StoredEntry, write: Callable[[bytes], Any] | None = None) -> int:
    """Stream the compressed bytes of ``entry`` to ``write`` (none: only check them), checking the local
    header, the size and the CRC-32 while reading; return the offset of the entry's first data byte in
    ``fh`` (its data is the ``entry.compress_size`` bytes from there).

    Raises :class:`DamagedEntry` when they do not match the central directory; bytes already given to
    ``write`` are then not to be used.
    """
    data_offset = _seek_to_data(fh, entry)
    if entry.method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DamagedEntry(f"{entry.name}: compression method {entry.method} is not copied")
    inflater = zlib.decompressobj(-15) if entry.method == zipfile.ZIP_DEFLATED else None
    fd = _fileno(fh) if hasattr(os, "preadv") else None
    buffer = memoryview(bytearray(max(1, min(COPY_CHUNK, entry.compress_size))))
    crc, size, left, position = 0, 0, entry.compress_size, data_offset
    try:
        while left:
            want = buffer[: min(len(buffer), left)]
            # a local file is read with pread into the one buffer; other streams from their position
            got = os.preadv(fd, [want], position) if fd is not None else fh.readinto(want)  # type: ignore[attr-defined]
            if not got:
                raise DamagedEntry(f"{entry.name}: truncated data")
            chunk = want[:got]
            left -= got
            position += got
            if inflater is None:
                crc, size = _crc32(chunk, crc), size + got
            else:
                plain = inflater.decompress(chunk)
                crc, size = zlib.crc32(plain, crc), size + len(plain)
            if write is not None:
                write(bytes(chunk))
        if inflater is not None:
            plain = inflater.flush()
            crc, size = zlib.crc32(plain, crc), size + len(plain)
    except DamagedEntry:
        raise
    except (OSError, ValueError, zlib.error) as exc:
        raise DamagedEntry(f"{entry.name}: {type(exc).__name__}: {exc}") from exc
    if crc != entry.crc or size != entry.file_size:
        raise DamagedEntry(f"{entry.name}: CRC-32 or size mismatch")
    return data_offset


def read_stored_entry(fh: BinaryIO, entry: StoredEntry) -> bytes:
    """The compressed bytes of ``entry``, checked as :func:`copy_stored_entry` checks them."""
    parts: list[bytes] = []
    copy_stored_entry(fh, entry, parts.append)
    return b"".join(parts)


# ------------------------------------------------------------------------- the previous file, unchanged


@dataclass(frozen=True)
class FileIdentity:
    """One state of a file, told apart from any other cheaply: its size, modification time, inode and
    device (0 where the file system has none, as an object store).

    Any write to the file changes its modification time; a file put in its place has another inode.
    """

    size: int
    mtime_ns: int
    inode: int = 0
    device: int = 0


def identity_of_open(fh: Any) -> FileIdentity | None:
    """The identity of an open local file (``fstat``); ``None`` for a stream without a descriptor."""
    fd = _fileno(fh)
    if fd is None:
        return None
    st = os.fstat(fd)
    return FileIdentity(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def identity_of(location: str, fh: Any | None = None) -> FileIdentity:
    """The identity of the previous ZIP: of its open file ``fh`` where it has a descriptor, else of the
    object ``location`` names (size and modification time as its file system reports them)."""
    if fh is not None and (identity := identity_of_open(fh)) is not None:
        return identity
    from .locations import is_uri, local_path

    if is_uri(location) and not location.lower().startswith("file:"):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(location)
        info = fs.get_file_info(path)
        return FileIdentity(int(info.size or 0), int(info.mtime_ns or 0))
    st = os.stat(local_path(location))
    return FileIdentity(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


class PreviousChanged(ValueError):
    """The previous ZIP is not the file its entries were checked in: it changed, or was replaced."""


def changed_message(location: str) -> str:
    """The export's error when the previous ZIP changed while it ran."""
    from .locations import uri_for_display

    return (
        f"the previous export {uri_for_display(location)} changed while this export copied from it "
        "(it must stay as it is until the export ends); run the export again"
    )


def check_identity(recorded: FileIdentity | None, current: FileIdentity | None, what: str = "it") -> None:
    """Raise :class:`PreviousChanged` when the file's ``current`` identity is not the ``recorded`` one
    (``None`` on either side: nothing to compare)."""
    if recorded is None or current is None or recorded == current:
        return
    if (recorded.inode, recorded.device) != (current.inode, current.device):
        how = "is another file now"
    elif recorded.size != current.size:
        how = f"went from {recorded.size} to {current.size} bytes"
    else:
        how = "was written to"
    raise PreviousChanged(f"{what} {how} since its entries were checked")


# ------------------------------------------------------------------------------ copying by the kernel

#: How the bytes of a reused entry go from the previous ZIP to the new one, in the order tried: within
#: the kernel (``copy_file_range``: the file system may share or clone the blocks), through the page
#: cache by the kernel (``sendfile``), then read and written here. A method the platform or the pair of
#: file systems refuses hands the rest of the range to the next one.
COPY_METHODS: tuple[str, ...] = ("copy_file_range", "sendfile", "readwrite")


class SourceEnded(DamagedEntry):
    """The previous ZIP ended before the range to copy did."""


def copy_range(source_fd: int, source_offset: int, target_fd: int, target_offset: int, count: int,
               methods: tuple[str, ...] | None = None) -> str:  # fmt: skip
    """Copy ``count`` bytes from ``source_offset`` of one file to ``target_offset`` of another, both
    given by descriptor, with the first of ``methods`` (default :data:`COPY_METHODS`) that works; return
    the method that copied the last byte. A method that fails or stops short hands the rest to the next.
    The descriptors' file positions are left undefined (``sendfile`` moves the target's).

    Raises :class:`SourceEnded` when the source has fewer bytes, ``OSError`` when the last method fails.
    """
    methods = COPY_METHODS if methods is None else methods
    if count <= 0:
        return methods[0] if methods else "none"
    progress = [0]  # bytes copied so far, kept up to date by each method as it goes
    for method in methods:
        try:
            _COPIERS[method](source_fd, source_offset, target_fd, target_offset, count, progress)
        except OSError:
            if method == methods[-1]:
                raise
            continue
        if progress[0] == count:
            return method
        if os.fstat(source_fd).st_size < source_offset + count:
            raise SourceEnded(f"the previous export ends before byte {source_offset + count}")
    raise OSError(f"no copy method finished the copy ({progress[0]} of {count} bytes; tried {', '.join(methods)})")


def _copy_file_range(source_fd: int, source_offset: int, target_fd: int, target_offset: int, count: int,
                     progress: list[int]) -> None:  # fmt: skip
    if not hasattr(os, "copy_file_range"):
        raise OSError(errno.ENOSYS, "copy_file_range is not available")
    while (done := progress[0]) < count:
        n = os.copy_file_range(source_fd, target_fd, min(count - done, _KERNEL_CALL_BYTES),
                               source_offset + done, target_offset + done)  # fmt: skip
        if n <= 0:  # the source's end, or a file system that copies nothing this way: the caller decides
            return
        progress[0] += n


def _sendfile(source_fd: int, source_offset: int, target_fd: int, target_offset: int, count: int,
              progress: list[int]) -> None:  # fmt: skip
    if not hasattr(os, "sendfile"):
        raise OSError(errno.ENOSYS, "sendfile is not available")
    os.lseek(target_fd, target_offset + progress[0], os.SEEK_SET)
    while (done := progress[0]) < count:
        n = os.sendfile(target_fd, source_fd, source_offset + done, min(count - done, _KERNEL_CALL_BYTES))
        if n <= 0:
            return
        progress[0] += n


def _read_write(source_fd: int, source_offset: int, target_fd: int, target_offset: int, count: int,
                progress: list[int]) -> None:  # fmt: skip
    buffer = memoryview(bytearray(max(1, min(COPY_CHUNK, count - progress[0]))))
    while (done := progress[0]) < count:
        want = buffer[: min(len(buffer), count - done)]
        if hasattr(os, "preadv"):
            got = os.preadv(source_fd, [want], source_offset + done)
        else:  # pragma: no cover - platforms without preadv
            data = os.pread(source_fd, len(want), source_offset + done)
            got = len(data)
            want[:got] = data
        if got <= 0:
            return
        written = 0
        while written < got:
            n = os.pwrite(target_fd, want[written:got], target_offset + done + written)
            if n <= 0:
                raise OSError(errno.EIO, "the new ZIP took no bytes")
            written += n
        progress[0] += got


_COPIERS: dict[str, Callable[[int, int, int, int, int, list[int]], None]] = {
    "copy_file_range": _copy_file_range,
    "sendfile": _sendfile,
    "readwrite": _read_write,
}


#: Copies a :class:`BackgroundCopies` holds before the writer waits for room.
BACKGROUND_QUEUE = 256


class BackgroundCopies:
    """Byte ranges copied into one file by a thread of their own (:func:`copy_range`, in the order given)
    while the caller goes on writing other ranges of it: the kernel copies a reused entry's data while
    Python assembles the next members.

    The thread writes through a descriptor of its own (``sendfile`` moves its position, which the
    caller's must not see) and a duplicate of each source descriptor (the caller may close its own).
    A failed copy is raised by the next :meth:`submit` or by :meth:`wait`; later copies are skipped.
    """

    def __init__(self, target_fd: int) -> None:
        # a new open file description of the same file (unnamed ones included), with its own position
        self._target = os.open(f"/proc/self/fd/{target_fd}", os.O_WRONLY | os.O_CLOEXEC)
        self._queue: queue.Queue[tuple[int, int, int, int] | None] = queue.Queue(BACKGROUND_QUEUE)
        self._error: BaseException | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name="ray-export-copies", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, target_fd: int) -> BackgroundCopies | None:
        """Copies into ``target_fd`` in the background; ``None`` where the platform cannot (no ``/proc``)."""
        try:
            return cls(target_fd)
        except OSError:
            return None

    def submit(self, source_fd: int, source_offset: int, target_offset: int, count: int) -> None:
        """Queue one copy (see :func:`copy_range`); raises the failure of an earlier one."""
        self.raise_failure()
        duplicate = os.dup(source_fd)
        try:
            self._queue.put((duplicate, source_offset, target_offset, count))
        except BaseException:
            os.close(duplicate)
            raise

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                source, source_offset, target_offset, count = item
                try:
                    if self._error is None and not self._cancelled:
                        copy_range(source, source_offset, self._target, target_offset, count)
                except BaseException as exc:
                    self._error = exc
                finally:
                    os.close(source)
            finally:
                self._queue.task_done()

    def raise_failure(self) -> None:
        """Raise what made a copy fail, if one did."""
        if self._error is not None:
            raise self._error

    def wait(self) -> None:
        """Wait until every copy queued is done; raise what made one fail."""
        self._queue.join()
        self.raise_failure()

    def close(self, cancel: bool = False) -> None:
        """End the thread (``cancel``: skip the copies not begun) and close its descriptor. Idempotent."""
        if self._thread.is_alive():
            self._cancelled = self._cancelled or cancel
            self._queue.put(None)
            self._thread.join()
        if self._target >= 0:
            os.close(self._target)
            self._target = -1


def copy_entry_data(source: Any, data_offset: int, count: int, target: BinaryIO,
                    methods: tuple[str, ...] | None = None) -> str:  # fmt: skip
    """Append ``count`` bytes from ``data_offset`` of ``source`` (the previous ZIP) at ``target``'s
    position, and leave ``target`` after them; return how they were copied (see :func:`copy_range`).

    Between local files the kernel copies them (``target``, a buffered file, is flushed first and
    moved after); from a stream without a descriptor they are read and written here. Nothing is
    checked: the entry was checked by the copy stage (:func:`copy_stored_entry`).
    """
    start = target.tell()
    source_fd, target_fd = _fileno(source), _fileno(target)
    if source_fd is not None and target_fd is not None:
        target.flush()
        method = copy_range(source_fd, data_offset, target_fd, start, count, methods)
        target.seek(start + count)
        return method
    source.seek(data_offset)
    left = count
    while left:
        chunk = source.read(min(COPY_CHUNK, left))
        if not chunk:
            raise SourceEnded(f"the previous export ends before byte {data_offset + count}")
        target.write(chunk)
        left -= len(chunk)
    return "stream"


def reused_entry_value(entry: StoredEntry, data_offset: int, checked_in: FileIdentity) -> dict[str, Any]:
    """A ``reused_entries`` value (see :data:`REUSED_ENTRY_TYPE`): ``entry``, checked by the copy stage,
    its data found at ``data_offset`` of the previous ZIP whose identity was then ``checked_in``."""
    return {
        "format": entry.format, "name": entry.name, "header_offset": entry.header_offset,
        "compress_size": entry.compress_size, "crc": entry.crc, "file_size": entry.file_size,
        "method": entry.method, "data_offset": data_offset, "previous_size": checked_in.size,
        "previous_mtime_ns": checked_in.mtime_ns, "previous_inode": checked_in.inode,
        "previous_device": checked_in.device,
    }  # fmt: skip


def stored_entry_of(value: Mapping[str, Any]) -> StoredEntry:
    """A :class:`StoredEntry` from a ``reused_entries`` value (see :data:`REUSED_ENTRY_TYPE`)."""
    checked = value.get("data_offset") is not None and value.get("previous_size") is not None
    return StoredEntry(
        str(value["format"]), str(value["name"]), int(value["header_offset"]), int(value["compress_size"]),
        int(value["file_size"]), int(value["crc"]), int(value["method"]), 0,
        int(value["data_offset"]) if checked else None,
        FileIdentity(int(value["previous_size"]), int(value["previous_mtime_ns"]), int(value["previous_inode"] or 0),
                     int(value["previous_device"] or 0)) if checked else None,
    )  # fmt: skip


def merge_reused_problems(level: int, computed: list[dict], stored: list[dict]) -> list[dict]:
    """An image's problems in the order a full export gives them (read, copy, visualize, then the
    annotation and metric stages), from this export's (``computed``) and the manifest's (``stored``).

    At :data:`MEMBERS_REUSED` the copy and visualize problems are the stored ones and the others are
    computed; at :data:`ALL_REUSED` only the read problems (of this read of the rows) are computed.
    """
    read = [p for p in computed if p["stage"] == "read"]
    if level >= ALL_REUSED:
        return read + [p for p in stored if p["stage"] != "read"]
    members = [p for p in stored if p["stage"] in ("copy", "visualize")]
    return read + members + [p for p in computed if p["stage"] != "read"]
