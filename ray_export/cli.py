"""Command line: ``ray-export export | demo | status | cancel`` (also ``python -m ray_export``)."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from .options import OptionError, add_export_arguments, build_options, options_from_args

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


#: Where results go (the output path, status lines): the process's original stdout. Anything else that
#: writes to file descriptor 1 (Ray's start-up messages, its processes' warnings) goes to stderr.
_result_stream: TextIO = sys.stdout


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _out(line: str) -> None:
    print(line, file=_result_stream, flush=True)


class _LogLines(io.TextIOBase):
    """A text stream whose lines go to the log (``ray_export.console``, kept off the console)."""

    def __init__(self) -> None:
        super().__init__()
        self._pending = ""
        self._log = logging.getLogger("ray_export.console")

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.strip():
                self._log.info("%s", _ANSI_ESCAPE.sub("", line))
        return len(text)


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def _keep_stdout_for_results() -> None:
    """Keep the original stdout for results only: file descriptor 1 (what Ray's processes inherit)
    points at stderr, and Python-level prints to ``sys.stdout`` (Ray relays its raylet's warnings that
    way) go to the log."""
    global _result_stream
    try:
        if sys.stdout is None or sys.stdout.fileno() != 1:
            return
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
    except (OSError, ValueError, io.UnsupportedOperation):
        return
    _result_stream = os.fdopen(saved, "w", buffering=1, encoding=sys.stdout.encoding or "utf-8")
    sys.stdout = _LogLines()


def _log_to_file() -> None:
    """``RAY_EXPORT_LOG=<file>``: the details behind every error line (tracebacks) go to that file."""
    path = os.environ.get("RAY_EXPORT_LOG")
    if not path:
        return
    try:
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        _err(f"warning: cannot write the log file {path}: {exc.strerror or exc}")
        return
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for console in logging.getLogger().handlers:  # the console keeps to warnings
        console.setLevel(max(console.level, logging.WARNING))
    logger = logging.getLogger("ray_export")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ray-export", description="Export a segmentation project into one ZIP.")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="export a project")
    add_export_arguments(exp)
    exp.add_argument("--quiet", action="store_true", help="no progress output")
    demo = sub.add_parser("demo", help="build (or reuse) the demo project and export it")
    demo.add_argument("--images", type=int, default=12, help="number of demo images (default 12)")
    demo.add_argument("--workdir", default="ray-export-demo", help="where the demo project lives")
    demo.add_argument("--out", default=None, help="output ZIP (default: <title>-<time>.zip here)")
    demo.add_argument("--force", action="store_true", default=None, help="overwrite the output")
    demo.add_argument("--address", default=None, help="Ray address (default: local Ray)")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    status = sub.add_parser("status", help="show the progress of exports on the cluster")
    status.add_argument("export_id", nargs="?", help="one export (default: every export on the cluster)")
    status.add_argument("--address", default=None, help="Ray cluster (default: RAY_ADDRESS or the local one)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    cancel = sub.add_parser("cancel", help="cancel a running export")
    cancel.add_argument("export_id", help="the id the export printed first")
    cancel.add_argument("--address", default=None, help="Ray cluster (default: RAY_ADDRESS or the local one)")
    return parser


class _ProgressPrinter(threading.Thread):
    """Draws a live bar on a terminal, or a log line every few seconds otherwise."""

    def __init__(self, export_id: str, tty: bool, period: float) -> None:
        super().__init__(daemon=True, name="ray-export-progress")
        self.export_id = export_id
        self.tty = tty
        self.period = period
        self.stopped = threading.Event()
        self.bar: Any = None

    def run(self) -> None:
        import ray

        from actors.progress import BAR_FORMAT, eta_text, get_progress_actor

        actor = None
        last_line = ""
        while not self.stopped.wait(self.period):
            try:
                if not ray.is_initialized():
                    continue
                actor = actor or get_progress_actor(self.export_id)
                if actor is None:
                    continue
                snap = ray.get(actor.snapshot.remote(), timeout=5)
            except Exception:
                continue
            total = (snap.get("totals") or {}).get("write") or 0
            done = (snap.get("done") or {}).get("write", 0)
            if self.tty and total:
                if self.bar is None:
                    from tqdm import tqdm

                    self.bar = tqdm(
                        total=total, unit="img", desc="export", file=sys.stderr, leave=False, bar_format=BAR_FORMAT
                    )
                self.bar.n = done
                reuse = snap.get("reuse") or {}
                taken = int(reuse.get("reused", 0)) + int(reuse.get("reused_members", 0))
                eta = eta_text(snap)
                self.bar.set_postfix_str(
                    snap.get("state", "") + (f", {taken} reused" if reuse else "") + (f", eta {eta}" if eta else "")
                )
                self.bar.refresh()
            elif not self.tty:
                line = _status_line(snap)
                if line != last_line:
                    _err(f"{_clock(time.time())} {line}")
                    last_line = line

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=2)
        if self.bar is not None:
            self.bar.close()


def _status_line(snap: dict) -> str:
    totals = snap.get("totals") or {}
    done = snap.get("done") or {}
    stages = " ".join(f"{k}={done.get(k, 0)}/{v}" for k, v in totals.items())
    from actors.progress import eta_text

    eta = eta_text(snap)  # a duration, "stalled" or None
    eta_part = f" eta={eta}" if eta else ""
    line = f"[{snap.get('export_id')}] {snap.get('state')} {stages} problems={snap.get('problems', 0)}{eta_part}"
    reuse = snap.get("reuse")
    if reuse:
        line += f" reused={int(reuse.get('reused', 0)) + int(reuse.get('reused_members', 0))}"
        line += f" computed={int(reuse.get('computed', 0))}"
    stalled = snap.get("stalled")
    if stalled:
        from .dataset import stall_message

        line += f" ({stall_message(stalled)})"
    return line


def reuse_line(reuse: dict) -> str:
    """``reuse: 990 images taken over, 10 computed (8 changed, 2 new)`` (and why a previous export was
    not trusted) from reuse counts."""
    taken = int(reuse.get("reused", 0)) + int(reuse.get("reused_members", 0))
    line = f"reuse: {taken} images taken over, {int(reuse.get('computed', 0))} computed"
    reasons = [
        f"{int(n)} {key.removeprefix('computed_').replace('_', ' ')}"
        for key, n in reuse.items()
        if key.startswith("computed_") and isinstance(n, int) and n
    ]
    if reasons:
        line += f" ({', '.join(reasons)})"
    if reuse.get("reused_members"):
        line += f"; {int(reuse['reused_members'])} with recomputed annotations (index or name changed)"
    if reuse.get("note"):
        line += f"; previous export not used: {reuse['note']}"
    return line


def _clock(seconds: float) -> str:
    """A wall-clock time for log lines and status: ``2026-01-31 12:00:05 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _run_export(options, quiet: bool) -> int:
    from .errors import ExportCancelled, ExportError
    from .run import install_signal_handlers, new_export_id, run_export

    export_id = new_export_id()
    _err(f"export id: {export_id}")
    cancel = threading.Event()
    install_signal_handlers(cancel)  # until Ray starts; run_export installs them again after ray.init
    printer = None
    if not quiet:
        printer = _ProgressPrinter(export_id, sys.stderr.isatty(), 0.5 if sys.stderr.isatty() else 5.0)
        printer.start()
    try:
        result = run_export(options, export_id=export_id, cancel=cancel, handle_signals=True)
    except ExportCancelled:
        _err("cancelled: no output was written")
        return EXIT_CANCELLED
    except ExportError as exc:
        _err(f"error: {exc}")
        return exc.exit_code
    finally:
        if printer is not None:
            printer.stop()
    _out(result.output)
    _err(f"done: {result.summary_line()}")
    if result.reuse is not None:
        _err(reuse_line(result.reuse))
    return EXIT_OK


def _attach(address: str | None, purpose: str) -> bool:
    """Connect to an existing cluster; False (with an error line) when there is none."""
    import ray

    from actors.progress import PROGRESS_NAMESPACE

    from .cluster import RayUnreachable, probe_ray_address

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from .cluster import gcs_address_of

    target = gcs_address_of(address or os.environ.get("RAY_ADDRESS")) or "auto"
    try:
        probe_ray_address(target)
    except RayUnreachable as exc:
        _err(f"error: no Ray cluster to {purpose}: {exc}")
        return False
    try:
        ray.init(address=target, namespace=PROGRESS_NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        _err(f"error: no Ray cluster to {purpose}: {reason}")
        return False
    return True


def _status(args) -> int:
    import ray

    from actors.progress import get_progress_actor, list_progress_actors

    if not _attach(args.address, "read status from"):
        return EXIT_FAILED
    ids = [args.export_id] if args.export_id else list_progress_actors()
    snapshots = []
    for export_id in ids:
        actor = get_progress_actor(export_id)
        if actor is None:
            if args.export_id:
                _err(f"error: no export {export_id!r} on this cluster (finished exports are kept for 10 minutes)")
                return EXIT_USAGE
            continue
        try:
            snapshots.append(ray.get(actor.snapshot.remote(), timeout=10))
        except Exception:
            continue
    if args.export_id and not snapshots:
        _err(f"error: export {args.export_id!r} did not answer (it may have just ended)")
        return EXIT_FAILED
    if args.json:
        _out(json.dumps(snapshots[0] if args.export_id else snapshots, indent=2, default=str))
    elif not snapshots:
        _out("no exports on this cluster")
    else:
        for snap in snapshots:
            _out(_status_line(snap))
            started, ended = snap.get("started_at"), snap.get("finished_at")
            if started:
                _out(f"  started: {_clock(started)}" + (f", ended: {_clock(ended)}" if ended else ""))
            if snap.get("reuse"):
                _out(f"  {reuse_line(snap['reuse'])}")
            if snap.get("output"):
                _out(f"  output: {snap['output']}")
            if snap.get("message"):
                _out(f"  {snap['message']}")
    return EXIT_OK


def _cancel(args) -> int:
    import ray

    from actors.progress import get_progress_actor

    if not _attach(args.address, "cancel on"):
        return EXIT_FAILED
    actor = get_progress_actor(args.export_id)
    if actor is None:
        _err(f"error: no export {args.export_id!r} on this cluster")
        return EXIT_USAGE
    try:
        state = ray.get(actor.snapshot.remote(), timeout=10).get("state")
        if state in ("succeeded", "failed", "cancelled"):
            _out(f"export {args.export_id} already {state}; nothing to cancel")
            return EXIT_OK
        ray.get(actor.request_cancel.remote(), timeout=10)
    except Exception as exc:
        _err(f"error: export {args.export_id!r} did not take the cancel request ({type(exc).__name__})")
        return EXIT_FAILED
    _out(f"cancel requested for {args.export_id}")
    return EXIT_OK


def _demo(args) -> int:
    from .demo import build_demo_project

    if args.images < 1 or args.images > 100000:
        _err("error: invalid option images: must be in 1..100000")
        return EXIT_USAGE
    workdir = Path(args.workdir).expanduser().absolute()
    try:
        demo = build_demo_project(workdir, n_images=args.images)
    except OSError as exc:
        _err(f"error: cannot build the demo project in {workdir}: {exc}")
        return EXIT_FAILED
    _err(f"demo project: {demo.db_path} ({args.images} images)")
    overrides: dict[str, Any] = {"db": str(demo.db_path), "project": demo.project_id,
                                 "images_root": str(demo.images_root)}
    if args.out:
        overrides["output"] = args.out
    if args.force:
        overrides["force"] = True
    if args.address:
        overrides["address"] = args.address
    try:
        options = build_options(None, overrides)
    except OptionError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    return _run_export(options, args.quiet)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ray-export`` command: one clear line on any error, never a traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # Ray is started or attached explicitly; a late Ray call after shutdown must fail, not start a new
    # local cluster as the process ends.
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    args = _parser().parse_args(argv)
    if argv is None:  # the command itself, not a call from Python
        _keep_stdout_for_results()
    _log_to_file()
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        _err("cancelled: no output was written")
        return EXIT_CANCELLED
    except Exception as exc:
        logging.getLogger("ray_export").debug("unexpected error", exc_info=exc)
        text = str(exc).strip().splitlines()
        _err(f"error: {type(exc).__name__}: {text[-1] if text else ''}")
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "export":
        try:
            options = options_from_args(args)
        except OptionError as exc:
            _err(f"error: {exc}")
            return EXIT_USAGE
        return _run_export(options, args.quiet)
    if args.command == "demo":
        return _demo(args)
    if args.command == "status":
        return _status(args)
    return _cancel(args)


if __name__ == "__main__":
    sys.exit(main())
