"""A throwaway PostgreSQL server for tests.

``start_postgres()`` runs ``initdb`` and ``pg_ctl`` (as the ``postgres`` user when running as root)
on a free 127.0.0.1 port, creates a login role with a password and a database it owns, and returns a
DSN plus a stop function. ``RAY_EXPORT_TEST_PG_DSN`` names an existing server to use instead.
Without PostgreSQL binaries the calling test is skipped (or, under ``CI``, failed).
``postgres_dsn_or_skip()`` shares one server per test process.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

ENV_DSN = "RAY_EXPORT_TEST_PG_DSN"
TEST_USER = "ray_export"
TEST_PASSWORD = "rx-S3cret-pw"
TEST_DATABASE = "ray_export_test"

_shared: tuple[str, Callable[[], None]] | None = None
#: (take down, bring up) of each server started here, by DSN: an outage of the server in a test
_outages: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {}


def find_pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` holding ``initdb`` and ``pg_ctl``, else ``PATH``'s."""
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.parent.name)
        except ValueError:
            return 0.0

    for initdb in sorted(candidates, key=version, reverse=True):
        folder = Path(initdb).parent
        if (folder / "pg_ctl").is_file():
            return folder
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: switch to the ``postgres`` user when we are root."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def _usable_parent(path: Path) -> bool:
    """Whether another user can traverse to ``path`` and a socket path inside it stays short."""
    if len(str(path.resolve())) > 60 or not path.is_dir():
        return False
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path.resolve(), *path.resolve().parents])


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")


def start_postgres(base_dir: Path | str | None = None, own_server: bool = False) -> tuple[str, Callable[[], None]]:
    """Start a PostgreSQL server; returns ``(dsn, stop)``. The DSN carries a password (TCP uses scram).

    ``RAY_EXPORT_TEST_PG_DSN`` is used instead unless ``own_server`` asks for a server of the test's own
    (one it may stop and start again: :func:`outage_controls`).

    The server's folder is created in ``base_dir`` when the ``postgres`` user can reach it and the
    socket path stays short, else in ``/tmp``; ``stop`` removes it. Without PostgreSQL binaries the
    calling test is skipped, or failed when the ``CI`` environment variable is set.
    """
    env_dsn = os.environ.get(ENV_DSN)
    if env_dsn and not own_server:
        return env_dsn, lambda: None
    bin_dir = find_pg_bin()
    if bin_dir is None:
        import pytest

        reason = f"no PostgreSQL server binaries found (install postgresql or set {ENV_DSN})"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)

    import psycopg

    parent = Path(base_dir) if base_dir is not None and _usable_parent(Path(base_dir)) else Path("/tmp")
    root = Path(tempfile.mkdtemp(prefix="rxpg-", dir=str(parent)))
    data_dir, sock_dir = root / "data", root / "s"
    sock_dir.mkdir()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sock_dir, "postgres", "postgres")
    port = _free_port()
    pg_ctl = str(bin_dir / "pg_ctl")
    options = (
        f"-k {sock_dir} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off"
    )
    started = False

    def stop() -> None:
        if started:
            subprocess.run(
                _as_postgres([pg_ctl, "-D", str(data_dir), "-m", "immediate", "-w", "stop"]),
                capture_output=True, timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)

    try:
        _run(_as_postgres([
            str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "-E", "UTF8", "--locale=C",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
        ]))
        _run(_as_postgres([pg_ctl, "-D", str(data_dir), "-l", str(root / "server.log"), "-w", "-t", "60",
                           "-o", options, "start"]))
        started = True
        with psycopg.connect(host=str(sock_dir), port=port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {TEST_USER} LOGIN PASSWORD '{TEST_PASSWORD}'")
            conn.execute(f"CREATE DATABASE {TEST_DATABASE} OWNER {TEST_USER}")
    except BaseException:
        stop()
        raise
    dsn = f"postgresql://{TEST_USER}:{TEST_PASSWORD}@127.0.0.1:{port}/{TEST_DATABASE}"

    def take_down() -> None:
        _run(_as_postgres([pg_ctl, "-D", str(data_dir), "-m", "immediate", "-w", "stop"]))

    def bring_up() -> None:
        _run(_as_postgres([pg_ctl, "-D", str(data_dir), "-l", str(root / "server.log"), "-w", "-t", "60",
                           "-o", options, "start"]))

    _outages[dsn] = (take_down, bring_up)
    return dsn, stop


def outage_controls(dsn: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(take_down, bring_up)`` of a server started by :func:`start_postgres` (same port, same data)."""
    return _outages[dsn]


def postgres_dsn_or_skip() -> str:
    """DSN of the per-process shared test server (started on first use, stopped at exit).

    Without PostgreSQL binaries (and no ``RAY_EXPORT_TEST_PG_DSN``) the calling test is skipped, or
    failed when the ``CI`` environment variable is set.
    """
    global _shared
    if _shared is not None:
        return _shared[0]
    _shared = start_postgres()
    atexit.register(_shared[1])
    return _shared[0]
