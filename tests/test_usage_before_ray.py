"""Usage errors that need the database (unknown project or image ids, no images) and the output checks
come before Ray starts: one line, exit 2, and no Ray session folder is ever made."""

from __future__ import annotations

import pytest

from tests.test_usage_errors import _assert_usage_error, _cli


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--project", "no such project"], ["unknown project 'no such project'"]),
        (["--image-ids", "nope1,nope2"], ["no images selected"]),
    ],
)
def test_database_usage_errors_come_before_ray_starts(demo_project, tmp_path, args, needles):
    done, seconds = _cli(tmp_path, "export", "--db", str(demo_project.db_path), "--project", demo_project.project_id,
                         "--out", str(tmp_path / "x.zip"), *args)  # fmt: skip
    _assert_usage_error(tmp_path, done, *needles)
    print(f"{' '.join(args)}: usage error after {seconds:.2f} s")
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "x.zip.lock").exists()


def test_output_and_database_errors_come_before_ray_starts(demo_project, tmp_path):
    existing = tmp_path / "exists.zip"
    existing.write_bytes(b"keep")
    cases = [
        (["--db", str(tmp_path / "missing.db"), "--out", str(tmp_path / "a.zip")], ["missing.db", "does not exist"]),
        (["--db", str(demo_project.db_path), "--out", str(existing)], [str(existing), "--force"]),
        (["--db", str(demo_project.db_path), "--out", str(tmp_path / "no" / "a.zip")], [str(tmp_path / "no")]),
    ]
    for args, needles in cases:
        done, seconds = _cli(tmp_path, "export", "--project", demo_project.project_id, *args)
        _assert_usage_error(tmp_path, done, *needles)
        print(f"{args[-1]}: usage error after {seconds:.2f} s")
    assert existing.read_bytes() == b"keep"


def test_a_planted_lock_link_is_refused_before_ray_starts(demo_project, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "s.zip.lock").symlink_to(victim)
    done, _ = _cli(tmp_path, "export", "--db", str(demo_project.db_path), "--project", demo_project.project_id,
                   "--out", str(tmp_path / "s.zip"))  # fmt: skip
    _assert_usage_error(tmp_path, done, str(tmp_path / "s.zip.lock"), "symbolic link")
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zip.lock", "victim.txt"]
