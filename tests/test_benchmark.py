"""The benchmark script runs end to end and finds the pipeline's ZIP identical to the one-process ZIP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "benchmark.py"), "--images", "6", "--cpus", "2", "--repeat", "1",
         "--plans", "default,split", "--workdir", str(tmp_path), "--object-store-mb", "200", "--json"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    text = json.dumps(result)
    assert "MISMATCH" not in text
    assert result["one_process"]["images_per_s"] > 0
    plans = {p["plan"]: p for p in result["plans"]}
    assert set(plans) == {"default", "split"}
    assert all(p["zip_identical"] for p in plans.values())


@pytest.mark.slow
def test_benchmark_writer_counts_smoke(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "benchmark.py"), "--images", "6", "--cpus", "2", "--repeat", "1",
         "--plans", "default", "--writers", "1,2", "--no-visualizations", "--workdir", str(tmp_path),
         "--object-store-mb", "200", "--json"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout)["writers"]
    assert [row["writers"] for row in rows] == [1, 2]
    assert all(row["zip_identical"] and row["images_per_s"] > 0 for row in rows)
    # 6 small images are one run (one segment): only the first writer gets work (if the timeline has it yet)
    assert all(len(row["writer_busy"]) <= row["writers"] for row in rows)
    assert all(0 <= busy <= 1 for row in rows for busy in row["writer_busy"])
