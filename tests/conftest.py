"""Shared fixtures: one Ray session for the whole test run, the demo project, PostgreSQL."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"
# No implicit ray.init(): a late Ray call after the session's Ray shut down must fail, not start a
# whole new local cluster.
os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
# Memory pressure from other processes on a shared test machine must not kill the tests' actors.
os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that needs it (2 CPUs, no dashboard, its own temp dir)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    temp_dir = tempfile.mkdtemp(prefix="rxt-", dir="/tmp")
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=300 * 1024 * 1024,
        namespace="ray_export",
        _temp_dir=temp_dir,
    )
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory):
    """The demo project (SQLite + image files), built once per test session."""
    from ray_export.demo import build_demo_project

    workdir = tmp_path_factory.mktemp("demo")
    return build_demo_project(workdir, n_images=12, seed=0)


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory):
    """DSN of a PostgreSQL server: RAY_EXPORT_TEST_PG_DSN or a throwaway local server."""
    from tests.pg_server import start_postgres

    dsn, stop = start_postgres(Path(tmp_path_factory.mktemp("pg")))
    yield dsn
    stop()
