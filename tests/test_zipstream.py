"""ZIP streaming core: compression choice, determinism, partial/rename/abort, ZIP64, reorder buffer."""

from __future__ import annotations

import io
import os
import struct
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actors.zipstream import (
    ZIP_DEFLATED,
    ZIP_STORED,
    ReorderBuffer,
    ZipOutputError,
    ZipStreamWriter,
    member_compression,
    tiff_compression,
    zip_date_time,
)
from tests.open_files import unnamed_files_in

EXPORT_TIME = datetime(2024, 5, 17, 13, 45, 30, tzinfo=timezone.utc)


def _pillow_tiff(compression: str | None) -> bytes:
    pixels = (np.arange(64 * 48 * 3, dtype=np.uint32) % 251).astype(np.uint8).reshape(48, 64, 3)
    buffer = io.BytesIO()
    if compression is None:
        Image.fromarray(pixels).save(buffer, format="TIFF")
    else:
        Image.fromarray(pixels).save(buffer, format="TIFF", compression=compression)
    return buffer.getvalue()


def _classic_tiff(endian: str, compression: int | None, field_type: int = 3, ifd_offset: int = 8) -> bytes:
    """Minimal classic TIFF: header, optional padding, one IFD with ImageWidth and maybe Compression."""
    marker = b"II" if endian == "<" else b"MM"
    entries = [struct.pack(endian + "HHI", 256, 3, 1) + struct.pack(endian + "H", 4) + b"\0\0"]
    if compression is not None:
        if field_type == 3:
            value = struct.pack(endian + "H", compression) + b"\0\0"
        else:
            value = struct.pack(endian + "I", compression)
        entries.append(struct.pack(endian + "HHI", 259, field_type, 1) + value)
    header = marker + struct.pack(endian + "HI", 42, ifd_offset)
    padding = b"\0" * (ifd_offset - len(header))
    ifd = struct.pack(endian + "H", len(entries)) + b"".join(entries) + struct.pack(endian + "I", 0)
    return header + padding + ifd


def _big_tiff(endian: str, compression: int) -> bytes:
    marker = b"II" if endian == "<" else b"MM"
    header = marker + struct.pack(endian + "HHHQ", 43, 8, 0, 16)
    entry = struct.pack(endian + "HHQ", 259, 3, 1) + struct.pack(endian + "H", compression) + b"\0" * 6
    return header + struct.pack(endian + "Q", 1) + entry + struct.pack(endian + "Q", 0)


def _write(path: Path, timestamp: datetime = EXPORT_TIME) -> int:
    with ZipStreamWriter(path, timestamp) as writer:
        writer.add_bytes("images/a.png", b"\x89PNG fake image payload" * 10)
        writer.add_bytes("labels/a.txt", "0 0.1 0.2 0.3 0.4\n" * 50)
        writer.add_bytes("documentation/README.md", "# Export\n" + "text " * 400)
        writer.add_bytes("images/b.tif", _pillow_tiff("tiff_lzw"))
        return writer.member_count


# --------------------------------------------------------------------------------------------------------------------
# Compression choice


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("images/a.png", ZIP_STORED),
        ("images/A.PNG", ZIP_STORED),
        ("images/a.jpg", ZIP_STORED),
        ("images/a.JPEG", ZIP_STORED),
        ("visualizations/a_viz.webp", ZIP_STORED),
        ("labels/a.txt", ZIP_DEFLATED),
        ("annotations/instances_default.json", ZIP_DEFLATED),
        ("metrics/metrics.csv", ZIP_DEFLATED),
        ("images/a.bmp", ZIP_DEFLATED),
        ("images/noextension", ZIP_DEFLATED),
        ("data.yaml", ZIP_DEFLATED),
    ],
)
def test_member_compression_by_name(name: str, expected: int) -> None:
    assert member_compression(name) == expected


@pytest.mark.parametrize(
    ("compression", "expected"),
    [
        (None, ZIP_DEFLATED),
        ("raw", ZIP_DEFLATED),
        ("tiff_lzw", ZIP_STORED),
        ("tiff_adobe_deflate", ZIP_STORED),
        ("packbits", ZIP_STORED),
        ("jpeg", ZIP_STORED),
    ],
)
def test_member_compression_pillow_tiff(compression: str | None, expected: int) -> None:
    data = _pillow_tiff(compression)
    assert member_compression("images/x.tif", data) == expected
    assert member_compression("images/x.TIFF", data) == expected


@pytest.mark.parametrize("endian", ["<", ">"])
def test_tiff_header_parsing_both_endians(endian: str) -> None:
    assert tiff_compression(_classic_tiff(endian, 5)) == 5
    assert tiff_compression(_classic_tiff(endian, 1)) == 1
    assert tiff_compression(_classic_tiff(endian, 7, field_type=4)) == 7
    assert tiff_compression(_classic_tiff(endian, None)) == 1  # absent tag: TIFF default, uncompressed
    assert tiff_compression(_big_tiff(endian, 8)) == 8
    assert member_compression("a.tif", _classic_tiff(endian, 32773)) == ZIP_STORED
    assert member_compression("a.tif", _classic_tiff(endian, 1)) == ZIP_DEFLATED


@pytest.mark.parametrize(
    "data",
    [b"", b"II", b"not a tiff at all", b"II*\x00\xff\xff\xff\xff", _classic_tiff("<", 5)[:12]],
)
def test_unparseable_tiff_is_deflated(data: bytes) -> None:
    assert tiff_compression(data) is None
    assert member_compression("images/broken.tif", data) == ZIP_DEFLATED


def test_zip_date_time_uses_utc_fields_and_clamps() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert zip_date_time(datetime(2024, 5, 17, 15, 45, 30, tzinfo=plus_two)) == (2024, 5, 17, 13, 45, 30)
    assert zip_date_time(datetime(2024, 5, 17, 13, 45, 30)) == (2024, 5, 17, 13, 45, 30)
    assert zip_date_time(datetime(1970, 1, 1, tzinfo=timezone.utc)) == (1980, 1, 1, 0, 0, 0)
    assert zip_date_time(datetime(2200, 1, 1)) == (2107, 12, 31, 23, 59, 58)


# --------------------------------------------------------------------------------------------------------------------
# Writer


def test_members_have_fixed_metadata_and_chosen_compression(tmp_path: Path) -> None:
    output = tmp_path / "export.zip"
    _write(output)
    with zipfile.ZipFile(output) as archive:
        assert archive.testzip() is None
        infos = {info.filename: info for info in archive.infolist()}
        assert list(infos) == ["images/a.png", "labels/a.txt", "documentation/README.md", "images/b.tif"]
        assert infos["images/a.png"].compress_type == ZIP_STORED
        assert infos["images/b.tif"].compress_type == ZIP_STORED
        assert infos["labels/a.txt"].compress_type == ZIP_DEFLATED
        assert infos["documentation/README.md"].compress_type == ZIP_DEFLATED
        assert infos["labels/a.txt"].compress_size < infos["labels/a.txt"].file_size
        for info in infos.values():
            assert info.date_time == (2024, 5, 17, 13, 45, 30)
            assert info.create_system == 3
            assert info.external_attr == 0o644 << 16
            assert info.extra == b""
        assert archive.read("labels/a.txt") == b"0 0.1 0.2 0.3 0.4\n" * 50
        assert archive.read("images/b.tif") == _pillow_tiff("tiff_lzw")


def test_uncompressed_tiff_member_is_deflated(tmp_path: Path) -> None:
    output = tmp_path / "tiff.zip"
    raw = _pillow_tiff(None)
    with ZipStreamWriter(output, EXPORT_TIME) as writer:
        writer.add_bytes("images/raw.tif", raw)
        writer.add_bytes("images/forced.txt", b"abc", compress_type=ZIP_STORED)
    with zipfile.ZipFile(output) as archive:
        assert archive.getinfo("images/raw.tif").compress_type == ZIP_DEFLATED
        assert archive.getinfo("images/forced.txt").compress_type == ZIP_STORED
        assert archive.read("images/raw.tif") == raw


def test_same_calls_give_byte_identical_files(tmp_path: Path) -> None:
    first, second, other_time = tmp_path / "one.zip", tmp_path / "two.zip", tmp_path / "three.zip"
    _write(first)
    _write(second)
    _write(other_time, EXPORT_TIME + timedelta(days=1))
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other_time.read_bytes()


def test_unnamed_partial_file_then_link(tmp_path: Path) -> None:
    output = tmp_path / "out.zip"
    writer = ZipStreamWriter(output, EXPORT_TIME)
    assert writer.partial_path is None  # an unnamed file: nothing to leave if the process dies
    writer.add_bytes("a.txt", b"hello " * 1000)
    assert list(tmp_path.iterdir()) == []
    assert len(unnamed_files_in(tmp_path)) == 1
    written_before_commit = writer.bytes_written
    assert written_before_commit > 0
    size = writer.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["out.zip"]
    assert unnamed_files_in(tmp_path) == []
    assert output.stat().st_size == size == writer.bytes_written
    assert size > written_before_commit  # the central directory came last
    assert writer.commit() == size  # a second commit is harmless
    with zipfile.ZipFile(output) as archive:
        assert archive.read("a.txt") == b"hello " * 1000
    with pytest.raises(ValueError, match="already committed"):
        writer.add_bytes("b.txt", b"late")


def test_abort_leaves_nothing_and_is_idempotent(tmp_path: Path) -> None:
    output = tmp_path / "out.zip"
    writer = ZipStreamWriter(output, EXPORT_TIME)
    writer.add_bytes("a.txt", b"x" * 10_000)
    writer.abort()
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    assert writer.bytes_written == 0
    with pytest.raises(ValueError, match="aborted"):
        writer.commit()


def test_context_manager_aborts_on_exception_and_commits_otherwise(tmp_path: Path) -> None:
    output = tmp_path / "out.zip"
    with pytest.raises(RuntimeError, match="boom"), ZipStreamWriter(output, EXPORT_TIME) as writer:
        writer.add_bytes("a.txt", b"data")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with ZipStreamWriter(output, EXPORT_TIME) as writer:
        writer.add_bytes("a.txt", b"data")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.zip"]


def test_a_file_named_like_a_partial_is_left_alone(tmp_path: Path) -> None:
    output = tmp_path / "out.zip"
    (tmp_path / "out.zip.partial").write_bytes(b"not the export's" * 100)
    with ZipStreamWriter(output, EXPORT_TIME) as writer:
        writer.add_bytes("a.txt", b"data")
    with zipfile.ZipFile(output) as archive:
        assert archive.namelist() == ["a.txt"]
    assert (tmp_path / "out.zip.partial").read_bytes() == b"not the export's" * 100


def test_zip_without_output_path_stays_open_for_an_upload(tmp_path: Path) -> None:
    writer = ZipStreamWriter(None, EXPORT_TIME, folder=tmp_path)
    writer.add_bytes("a.txt", b"data")
    size = writer.commit()
    assert list(tmp_path.iterdir()) == []
    writer.file.seek(0)
    data = writer.file.read()
    assert len(data) == size
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.read("a.txt") == b"data"
    writer.abort()
    assert writer.file.closed and unnamed_files_in(tmp_path) == []


def test_missing_folder_is_a_clear_oserror(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(ZipOutputError, match="output folder does not exist") as caught:
        ZipStreamWriter(missing / "out.zip", EXPORT_TIME)
    assert isinstance(caught.value, OSError)
    assert str(missing) in str(caught.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_unwritable_folder_is_a_clear_oserror(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ZipOutputError, match="not writable"):
            ZipStreamWriter(locked / "out.zip", EXPORT_TIME)
    finally:
        locked.chmod(0o700)


def test_path_that_is_a_file_is_a_clear_oserror(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_bytes(b"")
    with pytest.raises(ZipOutputError):
        ZipStreamWriter(not_a_folder / "out.zip", EXPORT_TIME)


def test_duplicate_and_invalid_member_names_raise(tmp_path: Path) -> None:
    with ZipStreamWriter(tmp_path / "out.zip", EXPORT_TIME) as writer:
        writer.add_bytes("images/a.png", b"1")
        with pytest.raises(ValueError, match="duplicate"):
            writer.add_bytes("images/a.png", b"2")
        source = tmp_path / "spool.bin"
        source.write_bytes(b"3")
        with pytest.raises(ValueError, match="duplicate"):
            writer.add_file("images/a.png", source)
        for bad in ["", "/abs.txt", "folder/"]:
            with pytest.raises(ValueError, match="invalid"):
                writer.add_bytes(bad, b"x")
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert archive.namelist() == ["images/a.png"]
        assert archive.read("images/a.png") == b"1"


def test_add_file_streams_same_content_as_add_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    payload = rng.integers(0, 256, size=1_500_000, dtype=np.uint8).tobytes() + b"metric,value\n" * 200_000
    spool = tmp_path / "metrics.csv.spool"
    spool.write_bytes(payload)
    tiff = tmp_path / "lzw.tif"
    tiff.write_bytes(_pillow_tiff("tiff_lzw"))

    from_file, from_bytes = tmp_path / "file.zip", tmp_path / "bytes.zip"
    with ZipStreamWriter(from_file, EXPORT_TIME) as writer:
        writer.add_file("metrics/metrics.csv", spool)
        writer.add_file("images/lzw.tif", tiff)
    with ZipStreamWriter(from_bytes, EXPORT_TIME) as writer:
        writer.add_bytes("metrics/metrics.csv", payload)
        writer.add_bytes("images/lzw.tif", tiff.read_bytes())

    with zipfile.ZipFile(from_file) as streamed, zipfile.ZipFile(from_bytes) as in_memory:
        assert streamed.testzip() is None
        assert streamed.read("metrics/metrics.csv") == payload
        for name in ["metrics/metrics.csv", "images/lzw.tif"]:
            assert streamed.read(name) == in_memory.read(name)
            assert streamed.getinfo(name).CRC == in_memory.getinfo(name).CRC
            assert streamed.getinfo(name).compress_type == in_memory.getinfo(name).compress_type
        assert streamed.getinfo("metrics/metrics.csv").compress_type == ZIP_DEFLATED
        assert streamed.getinfo("images/lzw.tif").compress_type == ZIP_STORED
    assert from_file.read_bytes() == from_bytes.read_bytes()  # chunked deflate gives the same stream


def test_add_file_reads_a_tiff_ifd_placed_after_the_image_data(tmp_path: Path) -> None:
    late_ifd = _classic_tiff(">", 5, ifd_offset=200_000)
    assert member_compression("late.tif", late_ifd[:1024]) == ZIP_DEFLATED  # head alone does not reach the IFD
    source = tmp_path / "late.tif"
    source.write_bytes(late_ifd)
    with ZipStreamWriter(tmp_path / "out.zip", EXPORT_TIME) as writer:
        writer.add_file("images/late.tif", source)
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert archive.getinfo("images/late.tif").compress_type == ZIP_STORED


def test_zip64_with_70000_members(tmp_path: Path) -> None:
    output = tmp_path / "many.zip"
    count = 70_000
    with ZipStreamWriter(output, EXPORT_TIME) as writer:
        for number in range(count):
            writer.add_bytes(f"labels/{number:05d}.txt", b"%d\n" % number, compress_type=ZIP_STORED)
    data = output.read_bytes()
    assert b"PK\x06\x06" in data[-200:]  # ZIP64 end of central directory record
    with zipfile.ZipFile(output) as archive:
        names = archive.namelist()
        assert len(names) == count
        assert names[0] == "labels/00000.txt"
        assert names[-1] == "labels/69999.txt"
        assert archive.read("labels/65536.txt") == b"65536\n"
        assert archive.testzip() is None


# --------------------------------------------------------------------------------------------------------------------
# Reorder buffer


def test_reorder_buffer_releases_in_index_order() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer()
    assert buffer.next_index == 1
    assert buffer.put(3, "c") == []
    assert buffer.put(2, "b") == []
    assert buffer.pending == 2
    assert buffer.pending_indices() == [2, 3]
    assert buffer.put(1, "a") == [(1, "a"), (2, "b"), (3, "c")]
    assert buffer.pending == 0
    assert buffer.put(4, "d") == [(4, "d")]
    assert buffer.put(6, "f") == []
    assert buffer.put(5, "e") == [(5, "e"), (6, "f")]
    assert buffer.next_index == 7
    assert buffer.max_pending == 2


def test_reorder_buffer_rejects_duplicates_and_released_indices() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer()
    buffer.put(1, 10)
    buffer.put(3, 30)
    with pytest.raises(ValueError, match="already released"):
        buffer.put(1, 11)
    with pytest.raises(ValueError, match="duplicate"):
        buffer.put(3, 31)
    with pytest.raises(ValueError, match="already released"):
        buffer.put(0, 0)
    with pytest.raises(TypeError):
        buffer.put("2", 20)  # type: ignore[arg-type]
    assert buffer.put(2, 20) == [(2, 20), (3, 30)]


def test_reorder_buffer_random_permutation_is_released_sorted() -> None:
    rng = np.random.default_rng(3)
    order = [int(index) for index in rng.permutation(np.arange(1, 501))]
    buffer: ReorderBuffer[int] = ReorderBuffer()
    released = [index for position in order for index, _ in buffer.put(position, position * 2)]
    assert released == list(range(1, 501))
    assert buffer.pending == 0
    assert 0 < buffer.max_pending < 500


def test_named_partial_and_no_replace_of_an_output_that_appeared(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RAY_EXPORT_NAMED_PARTIAL", "1")  # as on a file system without unnamed files
    out = tmp_path / "x.zip"
    partial = tmp_path / "x.zip.ab12.partial"
    writer = ZipStreamWriter(out, datetime(2024, 1, 1, tzinfo=timezone.utc), partial_path=partial, replace=False)
    writer.add_bytes("a.txt", b"hello")
    assert partial.exists() and not (tmp_path / "x.zip.partial").exists()
    out.write_bytes(b"someone else's file")  # appears while the export runs
    with pytest.raises(ZipOutputError, match="appeared while the export ran"):
        writer.commit()
    assert out.read_bytes() == b"someone else's file"
    assert not partial.exists()


def test_no_replace_commit_when_the_output_is_absent(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RAY_EXPORT_NAMED_PARTIAL", "1")
    out = tmp_path / "x.zip"
    partial = tmp_path / "x.zip.ab12.partial"
    writer = ZipStreamWriter(out, datetime(2024, 1, 1, tzinfo=timezone.utc), partial_path=partial, replace=False)
    writer.add_bytes("a.txt", b"hello")
    size = writer.commit()
    assert size == out.stat().st_size and not partial.exists()
    with zipfile.ZipFile(out) as zf:
        assert zf.read("a.txt") == b"hello"


def _members_in_order(zip_: ZipStreamWriter, folder: Path, rng: np.random.Generator) -> None:
    """A finish-like sequence: spooled and in-memory deflated members, a stored one between them."""
    from ray_export.output_files import spool_file

    text = " ".join(str(v) for v in rng.integers(0, 10_000, 400_000)).encode()
    zip_.add_bytes("annotations/instances.json", text[: len(text) // 2])
    with spool_file(folder) as fh:  # closed (and gone) right after it is handed over
        fh.write(text)
        zip_.add_file("metrics/metrics.csv", fh)
    zip_.add_bytes("chart.png", b"\x89PNG" + bytes(rng.integers(0, 256, 5000, dtype=np.uint8)))
    zip_.add_bytes("README.md", "# export\n" * 1000)
    zip_.add_bytes("empty.json", b"")


@pytest.mark.parametrize("threads", [2, 4])
def test_members_compressed_ahead_give_the_bytes_of_writing_them_one_by_one(tmp_path: Path, threads: int) -> None:
    one = ZipStreamWriter(tmp_path / "one.zip", EXPORT_TIME)
    _members_in_order(one, tmp_path, np.random.default_rng(5))
    one.commit()
    ahead = ZipStreamWriter(tmp_path / "ahead.zip", EXPORT_TIME)
    with ahead.compressing_ahead(threads):
        _members_in_order(ahead, tmp_path, np.random.default_rng(5))
    ahead.commit()
    assert (tmp_path / "ahead.zip").read_bytes() == (tmp_path / "one.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "ahead.zip") as zf:
        assert zf.testzip() is None
        assert zf.namelist() == ["annotations/instances.json", "metrics/metrics.csv", "chart.png", "README.md",
                                 "empty.json"]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ahead.zip", "one.zip"]


def test_compressing_ahead_refuses_a_duplicate_name_and_an_abort_leaves_nothing(tmp_path: Path) -> None:
    zip_ = ZipStreamWriter(tmp_path / "out.zip", EXPORT_TIME)
    with pytest.raises(ValueError, match="duplicate"), zip_.compressing_ahead(2):
        zip_.add_bytes("a.json", b"{}" * 1000)
        zip_.add_bytes("a.json", b"[]")
    zip_.abort()
    assert list(tmp_path.iterdir()) == [] and unnamed_files_in(tmp_path) == []
