"""The files beside a local output (ray_export.output_files): the lock, the unnamed partial and spool
files, the sweep of dead exports' leftovers, and what is refused (links, non-regular files, files that
are not the export's own)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ray_export.output_files import (
    OutputFiles,
    OutputLocked,
    UnsafeOutputPath,
    create_partial,
    leftover_files,
    partial_path,
    spool_file,
    spool_prefix,
)
from tests.open_files import named_files_in, unnamed_files_in, wait_until

REPO = Path(__file__).resolve().parents[1]
DEAD_ID = "0123456789ab"


# ------------------------------------------------------------------------------------------------ the lock
def test_second_lock_on_the_same_output_names_the_holder(tmp_path):
    out = tmp_path / "x.zip"
    with OutputFiles(out, "aaa111aaa111"), pytest.raises(OutputLocked, match="being written by export aaa111aaa111"):
        OutputFiles(out, "bbb222bbb222").start()
    assert not (tmp_path / "x.zip.lock").exists()
    with OutputFiles(out, "bbb222bbb222") as files:  # free again once released
        assert (tmp_path / "x.zip.lock").read_text() == "bbb222bbb222"
        assert files.held


def test_other_outputs_are_independent(tmp_path):
    with OutputFiles(tmp_path / "a.zip", "one"), OutputFiles(tmp_path / "b.zip", "two"):
        assert named_files_in(tmp_path) == ["a.zip.lock", "b.zip.lock"]


def test_a_lock_planted_as_a_symlink_is_refused_and_never_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "s.zip.lock").symlink_to(victim)
    with pytest.raises(UnsafeOutputPath, match=r"s\.zip\.lock is a symbolic link"):
        OutputFiles(tmp_path / "s.zip", "aaa111aaa111").start()
    assert victim.read_text() == "precious"
    assert (tmp_path / "s.zip.lock").is_symlink()
    # a dangling link too: O_CREAT would have created its target
    (tmp_path / "d.zip.lock").symlink_to(tmp_path / "created-through-link")
    with pytest.raises(UnsafeOutputPath, match="symbolic link"):
        OutputFiles(tmp_path / "d.zip", "aaa111aaa111").start()
    assert not (tmp_path / "created-through-link").exists()


def test_a_lock_path_that_is_a_fifo_a_folder_or_another_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "f.zip.lock")
    with pytest.raises(UnsafeOutputPath, match=r"f\.zip\.lock exists and is not a regular file"):
        OutputFiles(tmp_path / "f.zip", "aaa111aaa111").start()
    (tmp_path / "d.zip.lock").mkdir()
    with pytest.raises(UnsafeOutputPath, match="not a regular file"):
        OutputFiles(tmp_path / "d.zip", "aaa111aaa111").start()
    # a hard link to someone's file: the same inode, truncating it would destroy the file
    victim = tmp_path / "victim.txt"
    victim.write_text("abc")
    os.link(victim, tmp_path / "h.zip.lock")
    with pytest.raises(UnsafeOutputPath, match=r"h\.zip\.lock exists and is not an export's lock"):
        OutputFiles(tmp_path / "h.zip", "aaa111aaa111").start()
    assert victim.read_text() == "abc"
    # a user's own file that happens to carry the name, with content that is no export id
    (tmp_path / "u.zip.lock").write_text("my notes, please keep\n")
    with pytest.raises(UnsafeOutputPath, match="not an export's lock"):
        OutputFiles(tmp_path / "u.zip", "aaa111aaa111").start()
    assert (tmp_path / "u.zip.lock").read_text() == "my notes, please keep\n"
    assert sorted(named_files_in(tmp_path)) == ["d.zip.lock", "f.zip.lock", "h.zip.lock", "u.zip.lock", "victim.txt"]


def test_a_dead_exports_lock_is_replaced_not_rewritten(tmp_path):
    stale = tmp_path / "x.zip.lock"
    stale.write_text(DEAD_ID)
    inode = stale.stat().st_ino
    keep = os.open(stale, os.O_RDONLY)  # see whether the old file is written to
    try:
        with OutputFiles(tmp_path / "x.zip", "new000new000"):
            assert stale.read_text() == "new000new000"
            assert stale.stat().st_ino != inode
            assert os.pread(keep, 100, 0) == DEAD_ID.encode()
    finally:
        os.close(keep)


# ------------------------------------------------------------------------------------------------ the sweep
def test_the_sweep_takes_only_dead_leftovers_of_this_output(tmp_path):
    out = tmp_path / "c.zip"
    mine = partial_path(out, DEAD_ID)
    mine.write_bytes(b"PK" * 100)
    legacy_spool = tmp_path / ".c.zip.spool-ab_cd123"
    legacy_spool.mkdir()
    (legacy_spool / "coco.spool").write_text("{}")
    kept = [
        tmp_path / f"c.zip.1.{DEAD_ID}.partial",  # the partial of an export to c.zip.1
        tmp_path / f"c.zip.{DEAD_ID}x.partial",  # not an export id
        tmp_path / "c.zip.partial",  # no export id: not provably an export's
        tmp_path / "xc.zip.0123456789ab.partial",
    ]
    for path in kept:
        path.write_bytes(b"keep")
    linked = tmp_path / "c.zip.abcdefabcdef.partial"
    linked.symlink_to(tmp_path / "c.zip.1.0123456789ab.partial")  # a link is never a leftover
    (tmp_path / ".c.zip.1.spool-ab_cd123").mkdir()  # c.zip.1's
    with OutputFiles(out, "new000new000") as files:
        assert files.held
    assert not mine.exists() and not legacy_spool.exists()
    for path in kept:
        assert path.read_bytes() == b"keep"
    assert linked.is_symlink() and (tmp_path / ".c.zip.1.spool-ab_cd123").is_dir()
    assert leftover_files(out) == []


def test_a_live_export_to_a_longer_name_keeps_its_partial(tmp_path):
    """An export to c.zip.1 is running (holds its lock, its partial exists): an export to c.zip leaves it."""
    live = OutputFiles(tmp_path / "c.zip.1", "aaaaaaaaaaaa")
    live.start()
    try:
        partial = create_partial(tmp_path, partial_path(tmp_path / "c.zip.1", "aaaaaaaaaaaa"))
        partial.file.write(b"live work")
        with OutputFiles(tmp_path / "c.zip", "bbbbbbbbbbbb") as other:
            assert other.held
        partial.file.flush()
        partial.commit(tmp_path / "c.zip.1", replace=False)
        assert (tmp_path / "c.zip.1").read_bytes() == b"live work"
    finally:
        live.release()


# ------------------------------------------------------------------------------------------------ partial and spool
def test_the_partial_has_no_name_until_its_commit(tmp_path):
    out = tmp_path / "x.zip"
    partial = create_partial(tmp_path, partial_path(out, "aaaaaaaaaaaa"))
    assert partial.path is None
    partial.file.write(b"zip bytes")
    partial.file.flush()
    assert named_files_in(tmp_path) == []
    assert len(unnamed_files_in(tmp_path)) == 1
    partial.commit(out, replace=False)
    assert named_files_in(tmp_path) == ["x.zip"] and out.read_bytes() == b"zip bytes"
    assert unnamed_files_in(tmp_path) == []
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_commit_never_replaces_a_file_that_appeared_unless_asked(tmp_path):
    out = tmp_path / "x.zip"
    partial = create_partial(tmp_path, None)
    partial.file.write(b"new")
    partial.file.flush()
    out.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        partial.commit(out, replace=False)
    assert out.read_bytes() == b"someone else's"
    partial.discard()
    second = create_partial(tmp_path, None)
    second.file.write(b"new")
    second.file.flush()
    second.commit(out, replace=True)
    assert out.read_bytes() == b"new" and named_files_in(tmp_path) == ["x.zip"]


def test_commit_over_a_symlink_replaces_the_link_not_its_target(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "x.zip"
    out.symlink_to(victim)
    partial = create_partial(tmp_path, None)
    partial.file.write(b"zip")
    partial.file.flush()
    with pytest.raises(FileExistsError):
        partial.commit(out, replace=False)
    partial.commit(out, replace=True)
    assert victim.read_text() == "precious" and not out.is_symlink() and out.read_bytes() == b"zip"


def test_a_discarded_partial_leaves_nothing(tmp_path):
    partial = create_partial(tmp_path, None)
    partial.file.write(b"x" * 1000)
    partial.discard()
    partial.discard()
    assert named_files_in(tmp_path) == [] and unnamed_files_in(tmp_path) == []


def test_named_fallback_is_created_exclusively_and_never_through_a_link(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_EXPORT_NAMED_PARTIAL", "1")
    out = tmp_path / "x.zip"
    fallback = partial_path(out, "aaaaaaaaaaaa")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    fallback.symlink_to(victim)
    with pytest.raises(UnsafeOutputPath, match="symbolic link"):
        create_partial(tmp_path, fallback)
    fallback.unlink()
    fallback.write_bytes(b"someone's")
    with pytest.raises(UnsafeOutputPath, match="exists already"):
        create_partial(tmp_path, fallback)
    assert fallback.read_bytes() == b"someone's" and victim.read_text() == "precious"
    fallback.unlink()
    partial = create_partial(tmp_path, fallback)
    assert partial.path == fallback and fallback.exists()
    partial.file.write(b"zip")
    partial.file.flush()
    partial.commit(out, replace=False)
    assert named_files_in(tmp_path) == ["victim.txt", "x.zip"] and out.read_bytes() == b"zip"


def test_spool_files_have_no_name(tmp_path):
    with spool_file(tmp_path) as fh:
        fh.write(b"rows")
        assert named_files_in(tmp_path) == []
        assert len(unnamed_files_in(tmp_path)) == 1
    assert unnamed_files_in(tmp_path) == []


def test_names_of_partial_and_legacy_spool(tmp_path):
    out = tmp_path / "my export.zip"
    assert partial_path(out, "ab12").name == "my export.zip.ab12.partial"
    assert spool_prefix(out) == ".my export.zip.spool-"


def test_a_process_killed_outright_leaves_only_a_free_lock(tmp_path):
    """kill -9 after taking the lock and writing a partial and spool files: nothing is left but the lock
    file, which the next export to the output takes over."""
    out = tmp_path / "k.zip"
    code = textwrap.dedent(
        f"""
        import os, pathlib, sys
        sys.path.insert(0, {str(REPO)!r})
        from ray_export.output_files import OutputFiles, create_partial, partial_path, spool_file
        out = pathlib.Path({str(out)!r})
        OutputFiles(out, {DEAD_ID!r}).start()
        partial = create_partial(out.parent, partial_path(out, {DEAD_ID!r}))
        partial.file.write(b"x" * 100_000)
        spool = spool_file(out.parent)
        spool.write(b"y" * 100_000)
        os.kill(os.getpid(), 9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert named_files_in(tmp_path) == ["k.zip.lock"]
    assert (tmp_path / "k.zip.lock").read_text() == DEAD_ID
    with OutputFiles(out, "new000new000") as files:
        assert files.held and (tmp_path / "k.zip.lock").read_text() == "new000new000"
    assert named_files_in(tmp_path) == []


def test_write_back_flushes_a_growing_partial_and_stops_at_commit(tmp_path: Path) -> None:
    partial = create_partial(tmp_path, None)
    assert partial.write_back is not None and partial.write_back.is_alive()
    partial.write_back.every_bytes = 1 << 20
    partial.write_back.poll_s = 0.02
    partial.file.write(os.urandom(3 << 20))
    partial.file.flush()
    wait_until(lambda: partial.write_back.synced >= 3 << 20, 30, "the background flush of the written bytes")
    thread = partial.write_back
    partial.commit(tmp_path / "out.zip", replace=False)
    assert not thread.is_alive() and partial.write_back is None
    assert (tmp_path / "out.zip").stat().st_size == 3 << 20


def test_write_back_stops_when_the_partial_is_discarded(tmp_path: Path) -> None:
    partial = create_partial(tmp_path, tmp_path / "x.partial")
    thread = partial.write_back
    partial.discard()
    assert thread is not None and not thread.is_alive()
    assert list(tmp_path.iterdir()) == []
