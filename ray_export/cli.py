"""Command line: ``ray-export export | demo | status | cancel`` (also ``python -m ray_export``)."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TextIO

from .option_flags import add_export_arguments, command_line_name, options_from_args, overrides_from_args
from .options import OptionError, build_options, check_environment_address
from .ray_address import ray_address_problem

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130

EXIT_CODES_HELP = """\
exit codes:
  0    the export succeeded (stdout: the output path)
  2    usage error, found before any work: an invalid option, malformed --db or --address, unknown or
       ambiguous project, no images selected, images root missing, output exists without --force,
       output folder missing or not writable
  1    runtime failure: database unreachable, I/O error, disk full, a Ray or actor failure
  130  cancelled (ray-export cancel, Ctrl-C, SIGTERM / ray job stop); no output is left

Every failure is one line on stderr. The export id ("export id: ID") is printed on stderr once the
export runs, before any progress; ray-export status / cancel take it."""


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


EXPORT_USAGE = "ray-export export --db DSN_OR_PATH --project ID_OR_TITLE [--out FILE.zip] [options]"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit 2) with the command's usage, and that
    takes flags only as spelled out (no abbreviations: a script keeps working as flags are added)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def one_line_usage(self) -> str:
        return " ".join(self.format_usage().split())

    def error(self, message: str) -> NoReturn:
        _err(f"error: {message}; {self.one_line_usage()} (--help lists every flag)")
        sys.exit(EXIT_USAGE)

    def flags(self) -> list[str]:
        """Every flag this parser takes."""
        return [flag for action in self._actions for flag in action.option_strings]


def unknown_argument_message(parser: _Parser, extras: list[str]) -> str:
    """``unknown flag --ot (did you mean --out?)`` for the first unrecognized argument."""
    given = next((item for item in extras if item.startswith("-")), None)
    if given is None:
        return f"unexpected argument {extras[0]!r}"
    name = given.split("=", 1)[0]
    flags = parser.flags()
    close = [flag for flag in flags if flag.startswith(name) and flag.startswith("--")][:3]  # abbreviated
    close = close or difflib.get_close_matches(name, flags, n=1, cutoff=0.6)  # or mistyped
    return f"unknown flag {name}" + (f" (did you mean {' or '.join(close)}?)" if close else "")


def _parser() -> _Parser:
    from .demo_types import DEFAULT_TYPE, PROJECT_TYPES

    parser = _Parser(prog="ray-export", description="Export a segmentation project into one ZIP.")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser(
        "export", help="export a project", usage=EXPORT_USAGE, epilog=EXIT_CODES_HELP,
        description="Export a segmentation project into one ZIP.\n--db and --project are required (as flags or "
        "in the --options file); every other flag is optional.\nUnder `ray job submit`, --out is required too "
        "(an absolute path or a URI).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add_export_arguments(exp)
    exp.add_argument("--quiet", action="store_true", help="no progress output")
    _add_service_arguments(exp, "submit the export to this running export service (ray-export serve) instead")
    demo = sub.add_parser("demo", help="build (or reuse) the demo project and export it")
    demo.add_argument("--type", default=DEFAULT_TYPE, choices=PROJECT_TYPES, dest="project_type",
                      help=f"project type of the demo (default {DEFAULT_TYPE})")
    demo.add_argument("--images", type=int, default=None,
                      help="number of demo images (default 12; 6 for sperm, 8 for the other types)")
    demo.add_argument("--workdir", default="ray-export-demo", help="where the demo project lives")
    demo.add_argument("--out", default=None, help="output ZIP (default: <title>-<time>.zip here)")
    demo.add_argument("--force", action="store_true", default=None, help="overwrite the output")
    demo.add_argument("--address", default=None, help="Ray address (default: local Ray)")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    status = sub.add_parser("status", help="show the progress of exports on the cluster")
    status.add_argument("export_id", nargs="?", help="one export (default: every export on the cluster)")
    status.add_argument("--address", default=None, help="Ray cluster (default: RAY_ADDRESS or the local one)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    _add_service_arguments(status, "the exports of this export service (ray-export serve) instead")
    cancel = sub.add_parser("cancel", help="cancel a running export (and stop its Ray job, if it runs as one)")
    cancel.add_argument("export_id", help="the id the export printed first")
    cancel.add_argument("--address", default=None, help="Ray cluster (default: RAY_ADDRESS or the local one)")
    _add_service_arguments(cancel, "an export of this export service (ray-export serve)")
    _add_serve_parser(sub)
    return parser


def _add_service_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group("export service")
    group.add_argument("--service", metavar="URL", default=None, help=what)
    group.add_argument("--token-file", metavar="FILE", default=None,
                       help="the service's bearer token (default: RAY_EXPORT_TOKEN, if set)")


SERVE_USAGE = "ray-export serve --exports-root DIR --db DSN_OR_PATH [--db ...] [--images-root DIR ...] [options]"


def _add_serve_parser(sub: Any) -> None:
    from .service.config import DEFAULT_HOST, DEFAULT_PORT, TOKEN_ENV

    serve = sub.add_parser(
        "serve", help="run the export service: exports over HTTP, on a running cluster, with warm workers",
        usage=SERVE_USAGE,
        description="Run the export service until Ctrl-C or SIGTERM (which cancel its running exports cleanly). "
        "It prints its URL on stdout once it takes requests. See docs/service.md.",
    )  # fmt: skip
    serve.add_argument("--exports-root", required=True, metavar="DIR",
                       help="the folder every output (and --reuse file) of a request must lie in")
    serve.add_argument("--db", action="append", required=True, metavar="DSN_OR_PATH",
                       help="a database requests may export from (repeatable; the first is the default)")
    serve.add_argument("--images-root", action="append", default=[], metavar="DIR_OR_URI",
                       help="an images root requests may use, or a folder inside one (repeatable; the first is "
                       "the default; a SQLite database's folder is always allowed)")
    serve.add_argument("--host", default=DEFAULT_HOST,
                       help=f"address to listen on (default {DEFAULT_HOST}; any other needs a token)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)")
    serve.add_argument("--token-file", metavar="FILE", default=None,
                       help=f"bearer token every request must carry (default: {TOKEN_ENV}, if set)")
    serve.add_argument("--max-concurrent", type=int, default=1, metavar="N",
                       help="exports running at once (default 1); the rest wait in order")
    serve.add_argument("--address", default=None, help="Ray cluster (default: RAY_ADDRESS, else a local Ray)")


def _poll_snapshot(export_id: str, actor: Any) -> tuple[Any, dict | None]:
    """The export's progress actor (``actor`` when already found) and its snapshot; None while Ray or the
    actor is not there yet, or when the call fails (the next poll tries again)."""
    import ray

    from actors.progress import get_progress_actor

    try:
        if not ray.is_initialized():
            return actor, None
        actor = actor or get_progress_actor(export_id)
        if actor is None:
            return None, None
        return actor, ray.get(actor.snapshot.remote(), timeout=5)
    except Exception:
        return actor, None


#: ``(export id, state kept between calls) -> (state, snapshot or None)``
SnapshotPoll = Callable[[str, Any], "tuple[Any, dict | None]"]


class _ProgressPrinter(threading.Thread):
    """Draws a live bar on a terminal, or a log line every few seconds otherwise."""

    def __init__(self, export_id: str, tty: bool, period: float, poll: SnapshotPoll | None = None) -> None:
        super().__init__(daemon=True, name="ray-export-progress")
        self.export_id = export_id
        self.tty = tty
        self.period = period
        #: ``(export id, its state) -> (state, snapshot or None)``; default: the cluster's progress actor
        self.poll = poll or _poll_snapshot
        self.stopped = threading.Event()
        self.bar: Any = None

    def run(self) -> None:
        from actors.progress import BAR_FORMAT, eta_text

        actor = None
        last_line = ""
        while not self.stopped.wait(self.period):
            actor, snap = self.poll(self.export_id, actor)
            if snap is None:
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
    if snap.get("queue_position"):
        line += f" queue_position={snap['queue_position']}"
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


#: progress states in which an export has started (its usage checks and planning passed)
_STARTED_STATES = frozenset({"running", "finalizing", "succeeded"})
#: how often the export's state is looked at until its id is printed (seconds)
ANNOUNCE_POLL_S = 0.2


class _IdAnnouncer(threading.Thread):
    """Prints ``export id: ID`` on stderr once the export has started (so that a usage error, found
    before, stays one line), then starts the progress display (``printer``, if any)."""

    def __init__(self, export_id: str, printer: _ProgressPrinter | None) -> None:
        super().__init__(daemon=True, name="ray-export-id")
        self.export_id = export_id
        self.printer = printer
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._announced = False

    def run(self) -> None:
        actor = None
        while not self._announced and not self.closed.wait(ANNOUNCE_POLL_S):
            actor, snap = _poll_snapshot(self.export_id, actor)
            if snap is not None and snap.get("state") in _STARTED_STATES:
                self.announce()

    def announce(self, display: bool = True) -> None:
        """Print the id (once, never after :meth:`close`) and, with ``display``, start the progress display."""
        with self._lock:
            if self._announced or self.closed.is_set():
                return
            self._announced = True
            _err(f"export id: {self.export_id}")
            if display and self.printer is not None:
                self.printer.start()

    def close(self) -> None:
        """Nothing is printed from now on; the progress display stops."""
        with self._lock:
            self.closed.set()
        if self.printer is not None and self.printer.is_alive():
            self.printer.stop()


_OPTION_IN_MESSAGE = re.compile(r"^invalid option (\S+):")


def _name_options(message: str, name: Callable[[str], str] | None) -> str:
    """``message`` with the option it starts with (``invalid option X: ...``) named by ``name``."""
    if name is None:
        return message
    return _OPTION_IN_MESSAGE.sub(lambda match: f"invalid option {name(match.group(1))}:", message, count=1)


def done_line(result: Any) -> str:
    """``done: 12 images, 30 objects, 3 warnings, 4.2 s``, saying where the warnings are listed."""
    from .formats.export_report import MEMBER

    line = f"done: {result.summary_line()}"
    if result.counts.get("problems"):
        line += f" (warnings: see {MEMBER} in the ZIP)"
    return line


def _run_export(options, quiet: bool, option_name: Callable[[str], str] | None = None) -> int:
    """Run the export: ``export id: ID`` once it has started, then the output path (stdout) and a
    summary, or one error line. ``option_name`` names an option in an error (its flag)."""
    from .errors import ExportCancelled, ExportError
    from .run import install_signal_handlers, new_export_id, run_export

    export_id = new_export_id()
    cancel = threading.Event()
    install_signal_handlers(cancel)  # until Ray starts; run_export installs them again after ray.init
    printer = None
    if not quiet:
        printer = _ProgressPrinter(export_id, sys.stderr.isatty(), 0.5 if sys.stderr.isatty() else 5.0)
    announcer = _IdAnnouncer(export_id, printer)
    announcer.start()
    try:
        result = run_export(options, export_id=export_id, cancel=cancel, handle_signals=True)
        announcer.announce(display=False)
    except ExportCancelled:
        announcer.close()
        _err("cancelled: no output was written")
        return EXIT_CANCELLED
    except ExportError as exc:
        announcer.close()
        _err(f"error: {_name_options(str(exc), option_name)}")
        return exc.exit_code
    finally:
        announcer.close()
    _out(result.output)
    _err(done_line(result))
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
    _print_statuses(snapshots, args, "on this cluster")
    return EXIT_OK


def _print_statuses(snapshots: list[dict], args: argparse.Namespace, where: str) -> None:
    """What ``ray-export status`` prints: JSON, or a few lines per export."""
    if args.json:
        _out(json.dumps(snapshots[0] if args.export_id else snapshots, indent=2, default=str))
    elif not snapshots:
        _out(f"no exports {where}")
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


def _cancel(args) -> int:
    import ray

    from actors.progress import get_progress_actor

    from .errors import error_line

    if not _attach(args.address, "cancel on"):
        return EXIT_FAILED
    actor = get_progress_actor(args.export_id)
    if actor is None:
        _err(f"error: no export {args.export_id!r} on this cluster")
        return EXIT_USAGE
    try:
        snap = ray.get(actor.snapshot.remote(), timeout=10)
    except Exception as exc:
        _err(f"error: export {args.export_id!r} did not take the cancel request ({type(exc).__name__})")
        return EXIT_FAILED
    if snap.get("state") in ("succeeded", "failed", "cancelled"):
        _out(f"export {args.export_id} already {snap.get('state')}; nothing to cancel")
        return EXIT_OK
    job = snap.get("job_submission_id")
    if job:  # its driver is a Ray job: stopped through the Jobs API first, so that Ray records it STOPPED
        try:
            stop_ray_job(job, dashboard_url(args.address or os.environ.get("RAY_ADDRESS")))
        except Exception as exc:
            logging.getLogger("ray_export").debug("stopping job %s failed", job, exc_info=exc)
            _err(
                f"warning: could not stop the Ray job {job} ({type(exc).__name__}: {error_line(exc)[:200]}); "
                "the export is cancelled, but Ray will record the job as FAILED"
            )
    try:
        ray.get(actor.request_cancel.remote(), timeout=10)
    except Exception as exc:
        _err(f"error: export {args.export_id!r} did not take the cancel request ({type(exc).__name__})")
        return EXIT_FAILED
    _out(f"cancel requested for {args.export_id}" + (f" (its Ray job {job} is stopped)" if job else ""))
    return EXIT_OK


@contextlib.contextmanager
def _without_environment(*names: str) -> Iterator[None]:
    """Unset the environment variables ``names`` for the duration."""
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def dashboard_url(address: str | None) -> str:
    """The dashboard (Jobs API) URL of the attached cluster: ``address`` when it is a dashboard URL, else
    the one the cluster publishes."""
    from .cluster import is_dashboard_url

    if address and is_dashboard_url(address):
        return address
    from ray._private.worker import get_dashboard_url

    url = get_dashboard_url()
    if not url:
        raise RuntimeError("the cluster runs no dashboard (Jobs API)")
    return url if "://" in url else f"http://{url}"


def stop_ray_job(submission_id: str, url: str) -> bool:
    """Stop the Ray job ``submission_id`` through the Jobs API at ``url``, as ``ray job stop`` does: Ray
    sends its driver SIGTERM (an export driver cancels itself) and records the job ``STOPPED``. Returns
    whether the job was still running."""
    from ray.job_submission import JobSubmissionClient

    with _without_environment("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):  # they would replace ``url``
        client = JobSubmissionClient(url)
    return bool(client.stop_job(submission_id))


def _demo(args) -> int:
    from .demo import build_demo_project
    from .demo_types import default_image_count

    if args.images is not None and (args.images < 1 or args.images > 100000):
        _err(f"error: invalid option --images: {args.images} is not in 1..100000")
        return EXIT_USAGE
    n_images = default_image_count(args.project_type) if args.images is None else args.images
    problem = _address_error(args.address, attach_only=False)
    if problem:
        _err(problem)
        return EXIT_USAGE
    workdir = Path(args.workdir).expanduser().absolute()
    try:
        demo = build_demo_project(workdir, n_images=n_images, project_type=args.project_type)
    except OSError as exc:
        _err(f"error: cannot build the demo project in {workdir}: {exc}")
        return EXIT_FAILED
    _err(f"demo project: {demo.db_path} ({n_images} {args.project_type} images)")
    overrides: dict[str, Any] = {"db": str(demo.db_path), "project": demo.project_id,
                                 "images_root": str(demo.images_root)}
    if args.out:
        overrides["output"] = args.out
    if args.force:
        overrides["force"] = True
    if args.address:
        overrides["address"] = args.address
    flags = {key: overrides[key] for key in ("output", "force", "address") if key in overrides}

    def option_name(name: str) -> str:
        return command_line_name(name, flags, None) if name in flags else name

    try:
        options = build_options(None, overrides)
    except OptionError as exc:
        _err(f"error: invalid option {option_name(exc.option)}: {exc.reason}")
        return EXIT_USAGE
    return _run_export(options, args.quiet, option_name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ray-export`` command: one clear line on any error, never a traceback. Run as
    the command itself (no ``argv``), the process ends as soon as Ray is shut down (:func:`_end_process`)."""
    code = _main(argv)
    if argv is None:
        _end_process(code)
    return code


def _end_process(code: int) -> NoReturn:
    """End the command's process: shut down Ray (a local Ray started here stops with it), close the logs,
    flush the output, and exit without unloading every imported module one by one (about half a second
    after the work is done). Every file the command wrote is complete by now: a ZIP is fsynced before
    it is named."""
    if "ray" in sys.modules:
        with contextlib.suppress(Exception):
            import ray

            if ray.is_initialized():
                ray.shutdown()
    logging.shutdown()
    for stream in (_result_stream, sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    os._exit(code)


def _main(argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # Ray is started or attached explicitly; a late Ray call after shutdown must fail, not start a new
    # local cluster as the process ends.
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    parser = _parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = _subparser(parser, args.command)
        command.error(unknown_argument_message(command, extras))
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


def _subparser(parser: _Parser, command: str) -> _Parser:
    """The parser of ``command``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    return parser


def _address_error(address: str | None, attach_only: bool) -> str | None:
    """The error line for a malformed ``--address`` (or ``RAY_ADDRESS`` when no flag is given), or None.
    ``attach_only``: the command needs a running cluster, so ``local`` (start a new one) is refused."""
    name, value = "--address", address
    if value is None:
        name, value = "RAY_ADDRESS (environment variable)", os.environ.get("RAY_ADDRESS") or None
    if value is None:
        return None
    problem = ray_address_problem(value)
    if problem is None and attach_only and value == "local":
        problem = "'local' starts a new Ray, and this command needs a running cluster (give its address, or auto)"
    return f"error: invalid option {name}: {problem}" if problem else None


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return _serve(args)
    if getattr(args, "service", None):
        return _via_service(args)
    if args.command == "export":
        try:
            options = options_from_args(args)
            check_environment_address(options.address)
        except OptionError as exc:
            _err(f"error: {exc}")
            return EXIT_USAGE
        flags = overrides_from_args(args)

        def option_name(name: str) -> str:
            return command_line_name(name, flags, None)

        return _run_export(options, args.quiet, option_name)
    if args.command == "demo":
        return _demo(args)
    problem = _address_error(args.address, attach_only=True)
    if problem:
        _err(problem)
        return EXIT_USAGE
    if args.command == "status":
        return _status(args)
    return _cancel(args)


# ------------------------------------------------------------------------------------------ the export service


def _serve(args: argparse.Namespace) -> int:
    """``ray-export serve``: the URL on stdout once requests are taken; runs until Ctrl-C or SIGTERM."""
    from .service.config import ServiceConfigError, make_config, read_token
    from .service.server import ServiceStartError, run_service

    problem = _address_error(args.address, attach_only=False)
    if problem:
        _err(problem)
        return EXIT_USAGE
    try:
        token = read_token(args.token_file)
        config = make_config(
            args.exports_root, args.db, args.images_root, args.host, args.port, token, args.max_concurrent,
            args.address,
        )  # fmt: skip
    except ServiceConfigError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    logging.getLogger("ray_export.service").setLevel(logging.INFO)  # submitted, started, ended: on stderr
    try:
        return run_service(config, _out)
    except ServiceStartError as exc:
        _err(f"error: {exc}")
        return EXIT_FAILED


def _via_service(args: argparse.Namespace) -> int:
    """``export``, ``status`` and ``cancel`` with ``--service URL``: the same lines and exit codes as on a
    cluster, from the service's HTTP API."""
    from .errors import ExportError
    from .service.client import ServiceRefused, client_for

    try:
        client = client_for(args.service, args.token_file)
        if args.command == "export":
            return _export_via_service(client, args)
        if args.command == "status":
            snapshots = [client.status(args.export_id)] if args.export_id else client.statuses()
            _print_statuses(snapshots, args, "on this service")
            return EXIT_OK
        status = client.status(args.export_id)
        if status.get("state") in ("succeeded", "failed", "cancelled"):
            _out(f"export {args.export_id} already {status.get('state')}; nothing to cancel")
            return EXIT_OK
        status = client.cancel(args.export_id)
        _out(f"export {args.export_id} {status.get('state')}" if status.get("state") == "cancelled"
             else f"cancel requested for {args.export_id}")  # fmt: skip
        return EXIT_OK
    except ServiceRefused as exc:
        if exc.status == 404:
            _err(f"error: no export {getattr(args, 'export_id', '')!r} on the service at {client.url}")
            return EXIT_USAGE
        _err(f"error: {exc}")
        return exc.exit_code
    except ExportError as exc:
        _err(f"error: {exc}")
        return exc.exit_code


def _export_via_service(client: Any, args: argparse.Namespace) -> int:
    """Submit the export (options file and flags, as the service's options object), then follow it like a
    local one: ``export id: ID``, the live bar, the output path (on the service's machine) and the summary.
    Ctrl-C or SIGTERM cancel it on the service."""
    from .errors import ExportCancelled, ExportError
    from .options import load_options_file, merge_option_values
    from .run import install_signal_handlers
    from .service.client import wait_for

    options_path = getattr(args, "options", None)
    file_values = None
    try:
        flags = overrides_from_args(args)
        file_values = load_options_file(options_path) if options_path else None
    except OptionError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE

    def option_name(name: str) -> str:
        return command_line_name(name, flags, file_values, options_path)

    cancel = threading.Event()
    install_signal_handlers(cancel)
    printer = None
    try:
        export_id = client.submit(merge_option_values(file_values, flags))["id"]
        _err(f"export id: {export_id}")
        if not args.quiet:
            tty = sys.stderr.isatty()
            printer = _ProgressPrinter(export_id, tty, 0.5 if tty else 5.0, poll=_service_poll(client))
            printer.start()
        result = wait_for(client, export_id, cancel)
    except ExportCancelled:
        _err("cancelled: no output was written")
        return EXIT_CANCELLED
    except ExportError as exc:
        _err(f"error: {_name_options(str(exc), option_name)}")
        return exc.exit_code
    finally:
        if printer is not None:
            printer.stop()
    _out(result.output)
    _err(done_line(result))
    if result.reuse is not None:
        _err(reuse_line(result.reuse))
    return EXIT_OK


def _service_poll(client: Any) -> SnapshotPoll:
    """A :data:`SnapshotPoll` reading the export's status from the service."""

    def poll(export_id: str, state: Any) -> tuple[Any, dict | None]:
        try:
            return state, client.status(export_id)
        except Exception:
            return state, None

    return poll


if __name__ == "__main__":
    sys.exit(main())
