"""bench/incremental.py: its targets and table from given figures, and (slow) a smoke run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import incremental  # noqa: E402


def _report(cold_reuse: float, warm_full: float, warm_same: float, warm_edited: float) -> dict:
    bare = {"best_seconds": 7.0}
    return {
        "images": 1000, "size": "mixed", "cpus": 2, "zip_bytes": 3 << 30,
        "bare_ray": {"plain": bare, "no_dashboard": {"best_seconds": 6.0}},
        "ray_start_seconds": 9.0, "copy_seconds": 4.0,
        "full": {"seconds": 60.0},
        "unchanged": {"seconds": cold_reuse, "identical": True, "reuse": "reuse: 1000 images taken over, 0 computed"},
        "changed": {"seconds": 20.0, "full_seconds": 60.0, "edited": 10, "identical": True, "reuse": ""},
        "warm": {"cpus": 2, "warmup_seconds": 3.0, "full_seconds": warm_full, "full_identical": True,
                 "unchanged": {"seconds": warm_same, "identical": True, "reuse": ""},
                 "changed": {"seconds": warm_edited, "identical": True, "reuse": ""}},
    }  # fmt: skip


def test_targets_are_judged_against_bare_ray_the_copy_and_the_warm_full_export():
    met = incremental.targets_of(_report(cold_reuse=12.9, warm_full=50.0, warm_same=5.0, warm_edited=10.0))
    assert [t["met"] for t in met] == [True, True, True]
    assert "12.90 s vs 13.00 s (7.00 + 1.5 x 4.00)" in met[0]["measured"]
    assert met[1]["measured"].startswith("10.00x") and met[2]["measured"].startswith("5.00x")
    missed = incremental.targets_of(_report(cold_reuse=13.1, warm_full=50.0, warm_same=5.1, warm_edited=10.1))
    assert [t["met"] for t in missed] == [False, False, False]


def test_the_table_shows_every_run_and_each_target():
    report = _report(cold_reuse=20.0, warm_full=50.0, warm_same=4.0, warm_edited=12.0)
    report["targets"] = incremental.targets_of(report)
    text = incremental.format_report(report)
    for label in ("bare Ray (ray.init()", "plain copy of the ZIP", "cold: full export",
                  "cold: --reuse, nothing changed", "cold: --reuse, 10 segmentations edited", "warm: full export",
                  "warm: --reuse, nothing changed", "warm: --reuse, 10 segmentations edited"):  # fmt: skip
        assert label in text
    assert "MISSED  cold --reuse" in text and "MET   warm --reuse, nothing changed >= 10x" in text
    assert "MISSED  warm --reuse, 10 segmentations edited >= 5x" in text


@pytest.mark.slow
def test_incremental_benchmark_smoke(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "incremental.py"), "--images", "6", "--changed", "2", "--bare-runs", "1",
         "--workdir", str(tmp_path), "--object-store-mb", "200", "--json", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["unchanged"]["identical"] and result["changed"]["identical"]
    assert result["warm"]["unchanged"]["identical"] and result["warm"]["changed"]["identical"]
    assert len(result["targets"]) == 3 and "targets:" in done.stdout
