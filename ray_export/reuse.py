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
entries (CRC checked while reading them) and is not drawn again; when its parts fingerprint matches
too, its annotation and metric parts come from the manifest and are not recomputed either. Options
that shape the content and the software versions are compared once for the whole ZIP: a previous ZIP
made otherwise, of another project, without a readable manifest, or damaged, is not trusted, and the
images concerned are computed as in a full export. The result is byte-identical to a full export.

Nothing here knows about Ray.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
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

#: Where one stored entry of the previous ZIP lies (checked by the copy stage), for the writer to copy it
#: from there: the bytes go from file to file, never through the object store.
REUSED_ENTRY_TYPE = pa.struct(
    [
        pa.field("format", pa.string()),
        pa.field("name", pa.string()),
        pa.field("header_offset", pa.int64()),
        pa.field("compress_size", pa.int64()),
        pa.field("crc", pa.int64()),
        pa.field("file_size", pa.int64()),
        pa.field("method", pa.int64()),
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
    import os

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


#: Bytes copied at a time from a previous ZIP.
COPY_CHUNK = 4 << 20


def _seek_to_data(fh: BinaryIO, entry: StoredEntry) -> None:
    """Check the entry's local header and leave ``fh`` at its first data byte."""
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
        fh.seek(extra_length, 1)
    except DamagedEntry:
        raise
    except (OSError, ValueError) as exc:
        raise DamagedEntry(f"{entry.name}: {type(exc).__name__}: {exc}") from exc


def copy_stored_entry(fh: BinaryIO, entry: StoredEntry, write: Callable[[bytes], Any] | None = None) -> None:
    """Stream the compressed bytes of ``entry`` to ``write`` (none: only check them), checking the local
    header, the size and the CRC-32 while reading.

    Raises :class:`DamagedEntry` when they do not match the central directory; bytes already given to
    ``write`` are then not to be used.
    """
    _seek_to_data(fh, entry)
    if entry.method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DamagedEntry(f"{entry.name}: compression method {entry.method} is not copied")
    inflater = zlib.decompressobj(-15) if entry.method == zipfile.ZIP_DEFLATED else None
    crc, size, left = 0, 0, entry.compress_size
    try:
        while left:
            chunk = fh.read(min(COPY_CHUNK, left))
            if not chunk:
                raise DamagedEntry(f"{entry.name}: truncated data")
            left -= len(chunk)
            if inflater is None:
                crc, size = _crc32(chunk, crc), size + len(chunk)
            else:
                plain = inflater.decompress(chunk)
                crc, size = zlib.crc32(plain, crc), size + len(plain)
            if write is not None:
                write(chunk)
        if inflater is not None:
            plain = inflater.flush()
            crc, size = zlib.crc32(plain, crc), size + len(plain)
    except DamagedEntry:
        raise
    except (OSError, ValueError, zlib.error) as exc:
        raise DamagedEntry(f"{entry.name}: {type(exc).__name__}: {exc}") from exc
    if crc != entry.crc or size != entry.file_size:
        raise DamagedEntry(f"{entry.name}: CRC-32 or size mismatch")


def read_stored_entry(fh: BinaryIO, entry: StoredEntry) -> bytes:
    """The compressed bytes of ``entry``, checked as :func:`copy_stored_entry` checks them."""
    parts: list[bytes] = []
    copy_stored_entry(fh, entry, parts.append)
    return b"".join(parts)


def stored_entry_of(value: Mapping[str, Any]) -> StoredEntry:
    """A :class:`StoredEntry` from a ``reused_entries`` value (see :data:`REUSED_ENTRY_TYPE`)."""
    return StoredEntry(
        str(value["format"]), str(value["name"]), int(value["header_offset"]), int(value["compress_size"]),
        int(value["file_size"]), int(value["crc"]), int(value["method"]), 0,
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
