"""Incremental export without Ray: copied entries, damage detection, fingerprints, problem order."""

from __future__ import annotations

import os
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from actors.zipstream import ZipOutputError, ZipStreamWriter
from ray_export.reuse import (
    ALL_REUSED,
    MEMBERS_REUSED,
    DamagedEntry,
    StoredEntry,
    file_fingerprint_of,
    member_fingerprint,
    merge_reused_problems,
    options_fingerprint,
    parts_fingerprint,
    read_stored_entry,
)

STAMP = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
MEMBERS = [
    ("images/a.png", os.urandom(70_000)),
    ("labels/ä b.txt", b"0 0.100000 0.200000 0.300000 0.400000\n" * 50),
    ("labels/empty.txt", b""),
    ("images/c.tif", b"II*\x00" + bytes(4000)),
    ("visualizations/a_viz.jpg", b"\xff\xd8" + os.urandom(3000)),
]


def _entry(zf: zipfile.ZipFile, name: str) -> StoredEntry:
    info = zf.getinfo(name)
    return StoredEntry("f", name, info.header_offset, info.compress_size, info.file_size, info.CRC,
                       info.compress_type, 1)  # fmt: skip


def _write(path: Path, copy_from: Path | None = None) -> None:
    with ZipStreamWriter(path, STAMP) as out:
        for name, data in MEMBERS:
            if copy_from is None:
                out.add_bytes(name, data)
                continue
            with zipfile.ZipFile(copy_from) as zf, open(copy_from, "rb") as fh:
                out.add_stored_entry(name, _entry(zf, name), fh)
        out.add_bytes("documentation/last.json", b"{}")


def test_copied_entries_give_the_bytes_of_freshly_written_ones(tmp_path):
    _write(tmp_path / "a.zip")
    _write(tmp_path / "b.zip", copy_from=tmp_path / "a.zip")
    assert (tmp_path / "b.zip").read_bytes() == (tmp_path / "a.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        assert zf.testzip() is None
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}


def test_an_entry_is_refused_under_a_name_that_calls_for_other_compression(tmp_path):
    _write(tmp_path / "a.zip")
    with zipfile.ZipFile(tmp_path / "a.zip") as zf, open(tmp_path / "a.zip", "rb") as fh:
        entry = _entry(zf, "images/a.png")
        with ZipStreamWriter(tmp_path / "c.zip", STAMP) as out, pytest.raises(ValueError, match="compression"):
            out.add_stored_entry("labels/a.txt", entry, fh)


def test_an_entry_that_changed_since_it_was_checked_fails_the_copy(tmp_path):
    _write(tmp_path / "a.zip")
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        entry = _entry(zf, "images/a.png")
    data = bytearray((tmp_path / "a.zip").read_bytes())
    data[entry.header_offset + 30 + len(entry.name) + 100] ^= 0xFF
    (tmp_path / "b.zip").write_bytes(bytes(data))
    out = ZipStreamWriter(tmp_path / "c.zip", STAMP)
    with open(tmp_path / "b.zip", "rb") as fh, pytest.raises(ZipOutputError, match="changed while it was copied"):
        out.add_stored_entry("images/a.png", entry, fh)
    out.abort()
    assert not (tmp_path / "c.zip").exists() and not (tmp_path / "c.zip.partial").exists()


@pytest.mark.parametrize("name", ["images/a.png", "labels/ä b.txt"])
def test_a_flipped_bit_or_a_truncation_is_caught(tmp_path, name):
    _write(tmp_path / "a.zip")
    data = bytearray((tmp_path / "a.zip").read_bytes())
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        entry = _entry(zf, name)
    start = entry.header_offset + 30 + len(name.encode())
    for position, mask in ((start + entry.compress_size // 2, 0x04), (start, 0x80), (entry.header_offset + 1, 0x01)):
        flipped = bytearray(data)
        flipped[position] ^= mask
        (tmp_path / "f.zip").write_bytes(bytes(flipped))
        with open(tmp_path / "f.zip", "rb") as fh, pytest.raises(DamagedEntry):
            read_stored_entry(fh, entry)
    (tmp_path / "t.zip").write_bytes(bytes(data[: start + entry.compress_size - 1]))
    with open(tmp_path / "t.zip", "rb") as fh, pytest.raises(DamagedEntry, match="truncated"):
        read_stored_entry(fh, entry)


def test_fingerprints_follow_every_input():
    row = {"image_id": "a", "updated_at": "2024-01-01T00:00:00+00:00", "polygons": "abc", "db_width": 10}
    file_print = file_fingerprint_of(b"bytes")
    base = member_fingerprint(row, file_print, "x.png")
    assert base == member_fingerprint(dict(reversed(list(row.items()))), file_print, "x.png")
    assert base != member_fingerprint({**row, "updated_at": "2024-01-01T00:00:01+00:00"}, file_print, "x.png")
    assert base != member_fingerprint({**row, "polygons": "abd"}, file_print, "x.png")
    assert base != member_fingerprint(row, file_fingerprint_of(b"bytez"), "x.png")
    assert base != member_fingerprint(row, None, "x.png")
    assert base != member_fingerprint(row, file_print, "x.tif")
    assert base == member_fingerprint(row, file_print, "y.PNG")  # the name itself enters the parts fingerprint
    parts = parts_fingerprint(base, 3, "x.png", "x", 0.5)
    assert parts != parts_fingerprint(base, 4, "x.png", "x", 0.5)
    assert parts != parts_fingerprint(base, 3, "x_2.png", "x_2", 0.5)
    assert parts != parts_fingerprint(base, 3, "x.png", "x", None)
    assert file_fingerprint_of(None, 5, 123, mode="mtime") == {"size": 5, "mtime_ns": 123}
    assert file_fingerprint_of(b"12345") == {"size": 5, "sha256": file_fingerprint_of(b"12345")["sha256"]}
    options = {"originals": True, "visualization": {"fill_opacity": 0.3}, "image_ids": None, "scale": None}
    assert options_fingerprint(options) == options_fingerprint({**options, "image_ids": ["a"], "scale": 2.0})
    assert options_fingerprint(options) != options_fingerprint({**options, "visualization": {"fill_opacity": 0.4}})


def test_reused_problems_keep_the_order_of_a_full_export():
    def p(code: str, stage: str) -> dict:
        return {"code": code, "stage": stage, "message": code}

    full = [p("text_invalid_utf8", "read"), p("image_size_mismatch", "copy"), p("render_failed", "visualize"),
            p("hole_orphan", "parse"), p("polyline_not_in_coco", "coco"), p("metric_undefined", "metrics")]  # fmt: skip
    # members reused: the read, parse, coco and metrics problems are computed now, the rest stored
    computed = [full[0], *full[3:]]
    assert merge_reused_problems(MEMBERS_REUSED, computed, full) == full
    # all reused: only the read problems are computed now
    assert merge_reused_problems(ALL_REUSED, [full[0]], full) == full
    assert merge_reused_problems(ALL_REUSED, [], full) == full[1:]
