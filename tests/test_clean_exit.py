"""A process that ran exports ends quietly: no Ray Data executor outlives the export that used it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The child process runs with its own Ray. It logs Ray Data to a stream that it closes before it
# exits (as pytest does with its captured output): anything Ray Data logs after that point, such as
# an executor shut down by the garbage collector at exit, prints "--- Logging error ---".
CHILD = textwrap.dedent(
    """
    import io, logging, sys, threading, time
    from pathlib import Path

    import ray
    import ray.data

    from ray_export.demo import build_demo_project
    import ray_export.api as rx
    from ray_export.dataset import streamed_bundles
    from ray_export.errors import ExportCancelled

    work = Path(sys.argv[1])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=150 * 1024 * 1024, _temp_dir=sys.argv[2])
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    data_logger = logging.getLogger("ray.data")

    # 1. A stream left after its first block by an error whose traceback is kept alive.
    def slow(batch):
        time.sleep(0.1)
        return batch

    data_logger.addHandler(handler)
    data_logger.setLevel(logging.DEBUG)
    dataset = ray.data.range(400, override_num_blocks=200).map_batches(slow, batch_size=None)
    kept = []
    try:
        with streamed_bundles(dataset) as bundles:
            for _bundle in bundles:
                raise RuntimeError("stop after the first block")
    except RuntimeError as exc:
        kept.append(exc)

    # 2. A stream cancelled after its first block ends there, without waiting for the other blocks.
    cancel = threading.Event()
    received = 0
    with streamed_bundles(dataset, cancel) as bundles:
        for _bundle in bundles:
            received += 1
            cancel.set()

    # 3. A whole export, then one cancelled after its first image was written.
    demo = build_demo_project(work / "demo", n_images=16, seed=2)
    stages = {stage: {"batch_size": 1} for stage in ("copy", "visualize", "annotate", "metrics")}
    stages["read"] = {"batch_size": 4}
    result = rx.export(db=str(demo.db_path), project=demo.project_id, output=str(work / "full.zip"))
    handle = rx.start(db=str(demo.db_path), project=demo.project_id, output=str(work / "cancelled.zip"),
                      stages=stages)
    while not handle.done() and (handle.progress().get("done") or {}).get("write", 0) < 1:
        time.sleep(0.05)
    handle.cancel()
    try:
        handle.wait(120)
        outcome = "finished"
    except ExportCancelled:
        outcome = "cancelled"
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.DEBUG)
    executors = [t.name for t in threading.enumerate() if t.name.startswith("StreamingExecutor")]
    print("result", result.counts["images"], outcome, len(executors), received < 200, flush=True)
    captured.close()
    """
)


@pytest.mark.slow
def test_process_that_ran_exports_exits_without_late_errors(tmp_path):
    ray_dir = Path(tempfile.mkdtemp(prefix="rxq-", dir="/tmp"))  # Ray's socket paths must stay short
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_ENABLE_AUTO_CONNECT": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(REPO),
    }
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), str(ray_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    shutil.rmtree(ray_dir, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    # every image of the full export, no Ray Data executor left running at the end, and the cancelled
    # stream stopped before its 200 blocks
    assert done.stdout.split() in (
        ["result", "16", "cancelled", "0", "True"],
        ["result", "16", "finished", "0", "True"],
    ), done.stdout
    for noise in ("Logging error", "Exception ignored", "Traceback"):
        assert noise not in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "cancelled.zip").exists()
    assert not list(tmp_path.glob("cancelled.zip*.partial"))
