"""Usage errors: one line on stderr, exit 2, found before Ray starts; the command line names its flags,
options files and the Python API name their keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ray_export.cli import _parser, done_line, unknown_argument_message
from ray_export.errors import ExportError
from ray_export.options import OptionError

REPO = Path(__file__).resolve().parents[1]
BAD_ADDRESSES = ["notahost:xx", "127.0.0.1:", "127.0.0.1:70000", ":6379", "head:0"]


def _cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Run the command in a subprocess whose Ray temp folder is ``tmp_path/ray`` (a Ray that starts leaves
    a session folder there); returns the result and its wall time."""
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    environ.update({"RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(tmp_path / "ray"), **(env or {})})
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ray_export", *args], capture_output=True, text=True, timeout=60, env=environ,
        cwd=tmp_path,
    )  # fmt: skip
    return done, time.monotonic() - started


def _assert_usage_error(tmp_path: Path, done: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, exactly one line on stderr naming every needle, nothing on stdout, no Ray started."""
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert done.stdout == ""
    assert not (tmp_path / "ray").exists(), "Ray was started"
    return lines[0]


@pytest.fixture
def db(demo_project) -> str:
    return str(demo_project.db_path)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--stroke-width", "20"], ["--stroke-width", "20 is not an integer in 1..10"]),
        (["--viz-format", "gif"], ["--viz-format", "'gif'"]),
        (["--scale", "0"], ["--scale"]),
        (["--annotations", "coco,voc"], ["--annotations", "'voc'"]),
        (["--num-cpus", "copy=fast"], ["--num-cpus copy=fast"]),
        (["--batch-size", "render=2"], ["--batch-size", "unknown stage"]),
        (["--ot", "x.zip"], ["unknown flag --ot (did you mean --out?)", "usage: ray-export export --db"]),
        (["--imag", "x"], ["unknown flag --imag (did you mean --image-ids or --images-root?)"]),
        (["--stroke-width"], ["argument --stroke-width: expected one argument"]),
        (["--out", "/nonexistent-folder/x.zip"], ["/nonexistent-folder"]),
    ],
)
def test_cli_usage_errors_are_one_line_naming_the_flag(db, tmp_path, args, needles):
    done, seconds = _cli(tmp_path, "export", "--db", db, "--project", "p", *args)
    line = _assert_usage_error(tmp_path, done, *needles)
    assert "stroke_width" not in line and "viz_format" not in line
    assert seconds < 10, seconds  # no Ray start (about 2 s on a loaded machine; under 1 s idle)


def test_missing_required_flag_is_named(db, tmp_path):
    done, _ = _cli(tmp_path, "export", "--db", db)
    _assert_usage_error(tmp_path, done, "--project", "required")


def test_options_file_value_is_named_by_its_key(db, tmp_path):
    options = tmp_path / "opts.json"
    options.write_text(json.dumps({"project": "p", "visualization": {"stroke_width": 20}}), encoding="utf-8")
    done, _ = _cli(tmp_path, "export", "--db", db, "--options", str(options))
    line = _assert_usage_error(tmp_path, done, f"visualization.stroke_width (in {options})")
    assert "--stroke-width" not in line


@pytest.mark.parametrize("address", BAD_ADDRESSES)
@pytest.mark.parametrize("command", ["export", "status", "cancel"])
def test_malformed_address_is_a_usage_error(db, tmp_path, command, address):
    args = {"export": ["export", "--db", db, "--project", "p"], "status": ["status"], "cancel": ["cancel", "abc"]}
    done, seconds = _cli(tmp_path, *args[command], "--address", address)
    _assert_usage_error(tmp_path, done, "--address", repr(address))
    assert seconds < 10, seconds


@pytest.mark.parametrize("command", ["export", "status", "cancel"])
def test_malformed_ray_address_in_the_environment_is_named(db, tmp_path, command):
    args = {"export": ["export", "--db", db, "--project", "p"], "status": ["status"], "cancel": ["cancel", "abc"]}
    done, _ = _cli(tmp_path, *args[command], env={"RAY_ADDRESS": "127.0.0.1:"})
    _assert_usage_error(tmp_path, done, "RAY_ADDRESS", "'127.0.0.1:'")


def test_status_refuses_local(tmp_path):
    done, _ = _cli(tmp_path, "status", "--address", "local")
    _assert_usage_error(tmp_path, done, "--address", "running cluster")


def test_other_argument_errors_are_one_line(tmp_path):
    for args, needle in ((["cancel"], "export_id"), (["status", "a", "b"], "unexpected argument 'b'"), ([], "")):
        done, _ = _cli(tmp_path, *args)
        _assert_usage_error(tmp_path, done, needle)


def test_export_help_marks_required_flags_and_lists_exit_codes(tmp_path):
    done, _ = _cli(tmp_path, "export", "--help")
    assert done.returncode == 0
    text = done.stdout
    assert text.startswith("usage: ray-export export --db DSN_OR_PATH --project ID_OR_TITLE")
    assert text.count("required (here or in --options)") == 2
    assert "exit codes:" in text
    for code in ("0 ", "1 ", "2 ", "130 "):
        assert f"\n  {code}" in text, code


def test_unknown_argument_message():
    export = next(a for a in _parser()._actions if hasattr(a, "choices") and a.choices).choices["export"]
    assert unknown_argument_message(export, ["--ot", "x"]) == "unknown flag --ot (did you mean --out?)"
    expected = "unknown flag --strokewidth (did you mean --stroke-width?)"
    assert unknown_argument_message(export, ["--strokewidth=3"]) == expected
    assert unknown_argument_message(export, ["--zzzzzz"]) == "unknown flag --zzzzzz"
    assert unknown_argument_message(export, ["extra"]) == "unexpected argument 'extra'"


def test_done_line_says_where_the_warnings_are():
    def result(problems: int) -> SimpleNamespace:
        counts = {"images": 5, "objects": 9, "problems": problems}
        return SimpleNamespace(counts=counts, summary_line=lambda: f"5 images, 9 objects, {problems} warnings, 1.0 s")

    assert done_line(result(0)) == "done: 5 images, 9 objects, 0 warnings, 1.0 s"
    assert done_line(result(3)) == (
        "done: 5 images, 9 objects, 3 warnings, 1.0 s (warnings: see documentation/export_report.json in the ZIP)"
    )


# ----------------------------------------------------------------------------------------- Python API


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"visualization": {"stroke_width": 20}}, "stroke_width"),
        ({"visualization": {"format": "gif"}}, "visualization.format"),
        ({"stages": {"copy": {"num_cpus": 0}}}, "stages.copy.num_cpus"),
        ({"scale": 0}, "scale"),
        ({"address": "notahost:xx"}, "address"),
        ({"output_path": "x.zip"}, "output_path"),
    ],
)
def test_api_names_the_key(db, tmp_path, options, key):
    from ray_export.api import export

    with pytest.raises(OptionError) as info:
        export(db=db, project="p", output=str(tmp_path / "x.zip"), **options)
    assert str(info.value).startswith(f"invalid option {key}: ")
    assert "--" not in str(info.value).split(":")[0]


def test_api_names_a_malformed_ray_address_in_the_environment(demo_project, tmp_path, monkeypatch):
    import ray

    from ray_export.api import export

    if ray.is_initialized():
        pytest.skip("Ray already runs in this process: RAY_ADDRESS is not used")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:")
    with pytest.raises(ExportError) as info:
        export(db=str(demo_project.db_path), project=demo_project.project_id, output=str(tmp_path / "x.zip"))
    assert info.value.exit_code == 2 and "RAY_ADDRESS" in str(info.value)
    assert not ray.is_initialized()
