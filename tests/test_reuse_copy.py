"""Reused entries copied by the kernel: each copy method gives the same bytes, the writer reads nothing,
and a previous ZIP that changed after its entries were checked fails the export. No Ray: the stages and
the writer are driven in this process."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

import actors.zipstream as zipstream
import ray_export.reuse as reuse
from actors.zipstream import ZipOutputError, ZipStreamWriter
from ray_export.reuse import (
    BackgroundCopies,
    FileIdentity,
    SourceEnded,
    StoredEntry,
    copy_range,
    copy_stored_entry,
    identity_of,
    reused_entry_value,
    stored_entry_of,
)

STAMP = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
MEMBERS = [
    ("images/a.png", os.urandom(3_000_000)),  # larger than one read-write chunk
    ("labels/ä b.txt", b"0 0.100000 0.200000 0.300000 0.400000\n" * 50),
    ("labels/empty.txt", b""),
    ("images/c.tif", b"II*\x00" + bytes(4000)),
    ("images/d.tiff", b"II*\x00\x08\x00\x00\x00" + os.urandom(5000)),
    ("visualizations/a_viz.jpg", b"\xff\xd8" + os.urandom(3000)),
]
FORCED = [("copy_file_range",), ("sendfile",), ("readwrite",)]


def _entry(zf: zipfile.ZipFile, name: str) -> StoredEntry:
    info = zf.getinfo(name)
    return StoredEntry("f", name, info.header_offset, info.compress_size, info.file_size, info.CRC,
                       info.compress_type, 1)  # fmt: skip


def _write_fresh(path: Path) -> None:
    with ZipStreamWriter(path, STAMP) as out:
        for name, data in MEMBERS:
            out.add_bytes(name, data)
        out.add_bytes("documentation/last.json", b"{}")


def _checked_entries(previous: Path) -> dict[str, StoredEntry]:
    """Every member of ``previous`` checked as the copy stage checks it, as the writer receives it."""
    with zipfile.ZipFile(previous) as zf, open(previous, "rb") as fh:
        identity = identity_of(str(previous), fh)
        checked = {name: reused_entry_value(_entry(zf, name), copy_stored_entry(fh, _entry(zf, name)), identity)
                   for name, _ in MEMBERS}  # fmt: skip
    return {name: stored_entry_of(value) for name, value in checked.items()}


def _write_copied(path: Path, previous: Path, entries: dict[str, StoredEntry], background: bool = False) -> None:
    with ZipStreamWriter(path, STAMP) as out, open(previous, "rb") as fh:
        out.background_copies = background
        for name, _ in MEMBERS:
            out.add_stored_entry(name, entries[name], fh)
        out.add_bytes("documentation/last.json", b"{}")


def _never(*args, **kwargs):
    raise AssertionError("the writer read a checked entry")


@pytest.mark.parametrize("background", [False, True], ids=["in-line", "background"])
@pytest.mark.parametrize("methods", FORCED, ids=lambda m: m[0])
def test_each_copy_method_gives_the_bytes_of_a_fresh_zip_without_reading_them(tmp_path, monkeypatch, methods,
                                                                              background):  # fmt: skip
    _write_fresh(tmp_path / "a.zip")
    entries = _checked_entries(tmp_path / "a.zip")
    used: list[str] = []
    copy = reuse._COPIERS[methods[0]]
    monkeypatch.setattr(reuse, "COPY_METHODS", methods)
    monkeypatch.setitem(reuse._COPIERS, methods[0], lambda *a: (used.append(methods[0]), copy(*a)))
    # the writer neither reads nor checks the data of an entry the copy stage checked
    monkeypatch.setattr(zipstream, "copy_stored_entry", _never)
    monkeypatch.setattr(zipstream, "read_stored_entry", _never)
    _write_copied(tmp_path / "b.zip", tmp_path / "a.zip", entries, background)
    assert (tmp_path / "b.zip").read_bytes() == (tmp_path / "a.zip").read_bytes()
    assert len(used) == len(MEMBERS)
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        assert zf.testzip() is None


@pytest.mark.parametrize("methods", [*FORCED, None], ids=lambda m: m[0] if m else "default")
@pytest.mark.parametrize("count", [0, 1, 5000, 3 << 20])
def test_copy_range_copies_exactly_the_range(tmp_path, methods, count):
    source = tmp_path / "source"
    data = os.urandom(count + 777)
    source.write_bytes(data)
    target = tmp_path / "target"
    target.write_bytes(b"x" * 100)
    with open(source, "rb") as src, open(target, "r+b") as dst:
        copy_range(src.fileno(), 333, dst.fileno(), 50, count, methods)
    expected = b"x" * 50 + data[333 : 333 + count]
    if count < 50:
        expected += b"x" * (50 - count)
    assert target.read_bytes() == expected


def test_a_refused_or_idle_method_hands_the_rest_to_the_next(tmp_path, monkeypatch):
    data = os.urandom(2_500_000)
    (tmp_path / "source").write_bytes(data)
    calls: list[str] = []

    def refused(*args):
        calls.append("copy_file_range")
        raise OSError(errno.EXDEV, "cross-device")

    real_sendfile = os.sendfile

    def one_chunk_then_nothing(out_fd, in_fd, offset, count):
        calls.append("sendfile")
        return real_sendfile(out_fd, in_fd, offset, min(count, 100_000)) if calls.count("sendfile") == 1 else 0

    monkeypatch.setattr(os, "copy_file_range", refused)
    monkeypatch.setattr(os, "sendfile", one_chunk_then_nothing)
    with open(tmp_path / "source", "rb") as src, open(tmp_path / "target", "w+b") as dst:
        assert copy_range(src.fileno(), 0, dst.fileno(), 0, len(data)) == "readwrite"
    assert (tmp_path / "target").read_bytes() == data
    assert calls == ["copy_file_range", "sendfile", "sendfile"]


@pytest.mark.parametrize("methods", [*FORCED, None], ids=lambda m: m[0] if m else "default")
def test_a_source_shorter_than_the_range_is_caught(tmp_path, methods):
    (tmp_path / "source").write_bytes(b"y" * 1000)
    with open(tmp_path / "source", "rb") as src, open(tmp_path / "target", "w+b") as dst, pytest.raises(SourceEnded):
        copy_range(src.fileno(), 500, dst.fileno(), 0, 600, methods)


def test_the_data_offset_checked_is_where_the_compressed_bytes_begin(tmp_path):
    # a ZIP with extra fields in its local headers (written by zipfile itself, with ZIP64 extras)
    path = tmp_path / "extra.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in MEMBERS:
            with zf.open(zipfile.ZipInfo(name), "w", force_zip64=True) as member:
                member.write(data)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        for name, data in MEMBERS:
            entry = _entry(zf, name)
            offset = copy_stored_entry(fh, entry)
            assert offset > entry.header_offset + 30 + len(name.encode())  # past the extra field
            assert raw[offset : offset + entry.compress_size] == data  # stored: the bytes themselves


# ------------------------------------------------------------------------------------- a changed previous ZIP


def _rewrite_in_place(path: Path, position: int) -> None:
    """Flip one byte of ``path`` in place (same size and inode) and move its modification time on."""
    before = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(position)
        byte = fh.read(1)
        fh.seek(position)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))


def test_a_previous_zip_written_after_the_check_fails_the_copy(tmp_path):
    _write_fresh(tmp_path / "a.zip")
    entries = _checked_entries(tmp_path / "a.zip")
    entry = entries["images/a.png"]
    _rewrite_in_place(tmp_path / "a.zip", entry.data_offset + 1000)
    out = ZipStreamWriter(tmp_path / "c.zip", STAMP)
    with open(tmp_path / "a.zip", "rb") as fh, pytest.raises(ZipOutputError, match="changed"):
        out.add_stored_entry("images/a.png", entry, fh)
    out.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_a_previous_zip_replaced_after_the_check_fails_the_copy(tmp_path):
    _write_fresh(tmp_path / "a.zip")
    entries = _checked_entries(tmp_path / "a.zip")
    shutil.copy2(tmp_path / "a.zip", tmp_path / "same-bytes.zip")
    os.replace(tmp_path / "same-bytes.zip", tmp_path / "a.zip")  # the same bytes and time, another file
    out = ZipStreamWriter(tmp_path / "c.zip", STAMP)
    with open(tmp_path / "a.zip", "rb") as fh, pytest.raises(ZipOutputError, match="changed"):
        out.add_stored_entry("labels/ä b.txt", entries["labels/ä b.txt"], fh)
    out.abort()


def test_a_previous_zip_written_while_its_entries_are_copied_fails_the_commit(tmp_path):
    _write_fresh(tmp_path / "a.zip")
    entries = _checked_entries(tmp_path / "a.zip")
    out = ZipStreamWriter(tmp_path / "c.zip", STAMP)
    out.background_copies = True
    with open(tmp_path / "a.zip", "rb") as fh:
        for name, _ in MEMBERS:
            out.add_stored_entry(name, entries[name], fh)
    # written after the last entry was handed over (the file the copies read from is closed here)
    _rewrite_in_place(tmp_path / "a.zip", entries["images/a.png"].data_offset + 10)
    with pytest.raises(ZipOutputError, match="changed"):
        out.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_background_copies_report_a_failure_and_stop_cleanly(tmp_path):
    (tmp_path / "source").write_bytes(os.urandom(4 << 20))
    with open(tmp_path / "source", "rb") as src, open(tmp_path / "target", "w+b") as dst:
        copies = BackgroundCopies(dst.fileno())
        copies.submit(src.fileno(), 0, 1000, 3 << 20)
        copies.submit(src.fileno(), 1 << 20, 0, 1000)
        copies.wait()
        data = (tmp_path / "source").read_bytes()
        assert (tmp_path / "target").read_bytes() == data[1 << 20 : (1 << 20) + 1000] + data[: 3 << 20]
        copies.submit(src.fileno(), 4 << 20, 0, 10)  # past the source's end
        with pytest.raises(SourceEnded):
            copies.wait()
        with pytest.raises(SourceEnded):
            copies.submit(src.fileno(), 0, 0, 10)
        copies.close(cancel=True)
        copies.close()
    assert not [t for t in threading.enumerate() if t.name == "ray-export-copies"]


def test_an_aborted_zip_stops_its_copies_and_leaves_nothing(tmp_path):
    _write_fresh(tmp_path / "a.zip")
    entries = _checked_entries(tmp_path / "a.zip")
    out = ZipStreamWriter(tmp_path / "c.zip", STAMP)
    out.background_copies = True
    with open(tmp_path / "a.zip", "rb") as fh:
        for name, _ in MEMBERS:
            out.add_stored_entry(name, entries[name], fh)
    out.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]
    assert not [t for t in threading.enumerate() if t.name == "ray-export-copies"]


def test_file_identity_tells_states_apart(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    with open(path, "rb") as fh:
        first = identity_of(str(path), fh)
    assert first == identity_of(str(path)) and first.size == 3 and first.inode == os.stat(path).st_ino
    _rewrite_in_place(path, 1)
    assert identity_of(str(path)) != first
    assert identity_of(str(path)).size == first.size
    assert FileIdentity(1, 2) == FileIdentity(1, 2, 0, 0)


def _one_process_export(values: dict, before_writer=None, writer_open=None) -> dict:
    """An export in this process: the pipeline's stages on batches, then the writer (``ExportAssembler``);
    ``before_writer`` runs before the writer opens, ``writer_open`` once it is open. Returns its counts."""
    from actors.zip_writer import ExportAssembler
    from ray_export.datasource import ProjectImagesDatasource
    from ray_export.options import build_options
    from ray_export.output_files import spool_folder
    from ray_export.planning import assembly_plan, open_reuse, plan_export
    from ray_export.stages import finish_stage, stage_chain

    options = build_options(values)
    plan = plan_export(options)
    previous = open_reuse(options, plan)
    chain = stage_chain(options, plan.images_root, plan.scale_um_per_px, previous.source if previous else None,
                        plan.project_type, plan.type_context)  # fmt: skip
    source = ProjectImagesDatasource(plan.target, plan.rows, plan.need_polygons, plan.need_path, 4)
    tables = []
    for table in source.read_in_process():
        for step in chain:
            table = step.fn(table, **step.kwargs)
        tables.append(finish_stage(table))
    if before_writer is not None:
        before_writer()
    assembler = ExportAssembler(assembly_plan(options, plan, spool_folder(plan.output), None, previous))
    try:
        if writer_open is not None:
            writer_open()
        for table in tables:
            assembler.add_batch(table)
        return assembler.finish()
    except BaseException:
        assembler.abort()
        raise


@pytest.fixture(scope="module")
def full_export(demo_project, tmp_path_factory):
    """A full export of the demo project, made once in this process: (its options, its ZIP)."""
    values = {"db": str(demo_project.db_path), "project": demo_project.project_id, "metrics": ["csv"],
              "annotations": ["coco", "yolo"]}  # fmt: skip
    full = tmp_path_factory.mktemp("full") / "full.zip"
    _one_process_export({**values, "output": str(full)})
    return values, full


@pytest.fixture
def exported(full_export, tmp_path):
    """The full export's options, and a folder holding a copy of its ZIP (``full.zip``)."""
    values, full = full_export
    shutil.copyfile(full, tmp_path / "full.zip")
    return values, tmp_path


@pytest.mark.parametrize("methods", FORCED, ids=lambda m: m[0])
def test_a_reuse_export_is_byte_identical_with_each_copy_method(exported, monkeypatch, methods):
    values, folder = exported
    monkeypatch.setattr(reuse, "COPY_METHODS", methods)
    monkeypatch.setattr(zipstream, "copy_stored_entry", _never)
    counts = _one_process_export({**values, "output": str(folder / "again.zip"), "reuse": str(folder / "full.zip")})
    assert counts["reuse"]["reused"] == counts["images"] > 0
    assert (folder / "again.zip").read_bytes() == (folder / "full.zip").read_bytes()


@pytest.mark.parametrize("change", ["written", "replaced"])
def test_a_previous_zip_changed_between_check_and_copy_fails_the_export_cleanly(exported, change):
    values, folder = exported
    previous = folder / "previous.zip"
    shutil.copyfile(folder / "full.zip", previous)
    with zipfile.ZipFile(previous) as zf:
        info = next(i for i in zf.infolist() if i.filename.startswith("images/"))

    def written() -> None:  # in place, while the writer has it open
        _rewrite_in_place(previous, info.header_offset + 200)

    def replaced() -> None:  # before the writer opens it: it opens another file than the one checked
        shutil.copy2(folder / "full.zip", folder / "other.zip")
        os.replace(folder / "other.zip", previous)

    hooks = {"writer_open": written} if change == "written" else {"before_writer": replaced}
    output = {**values, "output": str(folder / "again.zip"), "reuse": str(previous)}
    with pytest.raises(ZipOutputError, match=r"previous export .*previous\.zip changed while this export copied"):
        _one_process_export(output, **hooks)
    assert sorted(p.name for p in folder.iterdir()) == ["full.zip", "previous.zip"]


def test_a_previous_zip_replaced_once_the_writer_has_it_open_is_still_copied_from(exported):
    values, folder = exported
    previous = folder / "previous.zip"
    shutil.copyfile(folder / "full.zip", previous)

    def replaced() -> None:  # the writer copies from the file it opened, the one that was checked
        (folder / "other.zip").write_bytes(b"not a ZIP")
        os.replace(folder / "other.zip", previous)

    _one_process_export({**values, "output": str(folder / "again.zip"), "reuse": str(previous)}, writer_open=replaced)
    assert (folder / "again.zip").read_bytes() == (folder / "full.zip").read_bytes()
