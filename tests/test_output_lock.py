"""The output lock: one export per output, stale leftovers of dead exports removed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from ray_export.output_lock import OutputLock, OutputLocked, leftover_files, partial_path, spool_prefix


def test_second_lock_on_the_same_output_names_the_holder(tmp_path):
    out = tmp_path / "x.zip"
    with OutputLock(out, "aaa111"), pytest.raises(OutputLocked, match="being written by export aaa111"):
        OutputLock(out, "bbb222").acquire()
    assert not (tmp_path / "x.zip.lock").exists()
    with OutputLock(out, "bbb222") as lock:  # free again once released
        assert (tmp_path / "x.zip.lock").read_text() == "bbb222"
        assert lock.export_id == "bbb222"


def test_other_outputs_are_independent(tmp_path):
    with OutputLock(tmp_path / "a.zip", "one"), OutputLock(tmp_path / "b.zip", "two"):
        pass


def test_lock_of_a_killed_process_is_free_and_its_leftovers_are_removed(tmp_path):
    out = tmp_path / "x.zip"
    code = textwrap.dedent(
        f"""
        import os, pathlib, sys
        sys.path.insert(0, {os.getcwd()!r})
        from ray_export.output_lock import OutputLock, partial_path
        out = pathlib.Path({str(out)!r})
        OutputLock(out, "dead01").acquire()
        partial_path(out, "dead01").write_bytes(b"x" * 100)
        (out.parent / ".x.zip.spool-abc").mkdir()
        (out.parent / ".x.zip.spool-abc" / "metrics.csv").write_text("a")
        os.kill(os.getpid(), 9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -9
    assert (tmp_path / "x.zip.lock").read_text() == "dead01"  # left behind, but no longer locked
    (tmp_path / "x.zip.partial").write_bytes(b"old")  # the name older exports used
    (tmp_path / "unrelated.zip.dead01.partial").write_bytes(b"keep")
    lock = OutputLock(out, "new02")
    removed = lock.acquire()
    try:
        assert sorted(p.name for p in removed) == [".x.zip.spool-abc", "x.zip.dead01.partial", "x.zip.partial"]
        assert leftover_files(out) == []
        assert (tmp_path / "unrelated.zip.dead01.partial").exists()
    finally:
        lock.release()


def test_names_of_partial_and_spool(tmp_path):
    out = tmp_path / "my export.zip"
    assert partial_path(out, "ab12").name == "my export.zip.ab12.partial"
    assert spool_prefix(out) == ".my export.zip.spool-"
