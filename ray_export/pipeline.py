"""The Ray export job: projected read -> copy / visualize / annotate / metrics -> ZIP-writer actor.

This is the only module of :mod:`ray_export` that talks to Ray; the stage functions are in
:mod:`ray_export.stages` and the actors in :mod:`actors`.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .documents import ExportSummary, format_export_time, software_versions
from .naming import assign_member_names, default_output_name
from .options import (
    MAX_SCALE_UM_PER_PX,
    MIN_SCALE_UM_PER_PX,
    STAGE_NAMES,
    ExportOptions,
    OptionError,
    is_remote_uri,
    is_uri,
    local_path,
    running_under_job_submit,
)
from .problems import Problem
from .sources import DbTarget, SourceError, list_images, parse_db_target, resolve_project

log = logging.getLogger("ray_export")



class ExportError(Exception):
    """A fatal export problem: one clear line and an exit code (SPEC 7)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ExportCancelled(ExportError):
    """The export was cancelled (cancel, Ctrl-C, SIGTERM or ``handle.cancel()``)."""

    def __init__(self, message: str = "export cancelled") -> None:
        super().__init__(message, exit_code=130)


@dataclass
class ExportResult:
    """What a finished export reports."""

    export_id: str
    output: str
    counts: dict[str, int]
    seconds: float

    def summary_line(self) -> str:
        c = self.counts
        return (
            f"{c.get('images', 0)} images, {c.get('objects', 0)} objects, {c.get('problems', 0)} warnings, "
            f"{self.seconds:.1f} s"
        )


@dataclass
class ExportPlan:
    """Everything the driver settles before the first ZIP entry (the light query)."""

    target: DbTarget
    project: Any
    rows: list[dict]
    output: Path | str
    images_root: str
    export_time: datetime
    scale_um_per_px: float | None
    scale_source: str
    driver_problems: dict[int, list[dict]] = field(default_factory=dict)
    unknown_image_ids: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def new_export_id() -> str:
    """A short random id naming the export's progress actor."""
    return uuid.uuid4().hex[:12]


def _check_uri_output(uri: str, force: bool) -> str:
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
    except Exception as exc:
        raise ExportError(f"output {uri}: {type(exc).__name__}: {_error_line(exc)}", 2) from exc
    if info.type == pafs.FileType.Directory:
        raise ExportError(f"output {uri} is a folder", 2)
    if info.type != pafs.FileType.NotFound and not force:
        raise ExportError(f"output {uri} exists; use --force to overwrite it", 2)
    if isinstance(fs, pafs.LocalFileSystem):
        parent = fs.get_file_info(path.rsplit("/", 1)[0] or "/")
        if parent.type != pafs.FileType.Directory:
            raise ExportError(f"output folder of {uri} does not exist", 2)
    return uri


def _check_output(options: ExportOptions, title: str) -> Path | str:
    if options.output and is_uri(options.output):
        return _check_uri_output(options.output, options.force)
    out = Path(options.output) if options.output else Path.cwd() / default_output_name(title, datetime.now())
    out = out.expanduser().absolute()
    if out.is_dir():
        raise ExportError(f"output {out} is a folder", 2)
    if out.exists() and not options.force:
        raise ExportError(f"output {out} exists; use --force to overwrite it", 2)
    if not out.parent.is_dir():
        raise ExportError(f"output folder {out.parent} does not exist", 2)
    if not os.access(out.parent, os.W_OK):
        raise ExportError(f"output folder {out.parent} is not writable", 2)
    return out


def _images_root(options: ExportOptions, target: DbTarget) -> str:
    root = options.images_root
    if root is None:
        if target.kind != "sqlite":
            raise ExportError("invalid option images_root: required with a PostgreSQL database", 2)
        root = str(Path(target.sqlite_path).parent)
    if is_remote_uri(root):
        return root
    local = Path(local_path(root)).expanduser().absolute()
    if not local.is_dir():
        raise ExportError(f"images root {local} does not exist or is not a folder", 2)
    return str(local)


def _decide_scale(options: ExportOptions, entries: list[Any]) -> tuple[float | None, str, tuple[str, ...]]:
    if options.scale_um_per_px is not None:
        return float(options.scale_um_per_px), "option", ()
    values = {e.pixel_size_um for e in entries}
    if len(values) == 1:
        (value,) = values
        if value is not None and MIN_SCALE_UM_PER_PX <= float(value) <= MAX_SCALE_UM_PER_PX:
            return float(value), "database", ()
    return None, "pixels", ("scale_pixels",)


def plan_export(options: ExportOptions) -> ExportPlan:
    """Run the light driver-side query and settle names, scale, export time and the output path."""
    target = parse_db_target(options.db)
    images_root = _images_root(options, target)
    project = resolve_project(target, options.project)
    listing = list_images(target, project.id, list(options.image_ids) if options.image_ids else None)
    entries = listing.entries
    output = _check_output(options, project.title)
    names = assign_member_names([e.name or "" for e in entries])
    rows: list[dict] = []
    driver_problems: dict[int, list[dict]] = {}
    for entry, member in zip(entries, names, strict=True):
        rows.append(
            {"index": entry.index, "image_id": entry.image_id, "file_name": member.file_name, "stem": member.stem}
        )
        if member.renamed:
            problem = Problem("member_renamed", "naming", f"{entry.name!r} is stored as {member.file_name!r}")
            driver_problems[entry.index] = [problem.to_dict()]
    scale, scale_source, notes = _decide_scale(options, entries)
    if listing.unknown_image_ids:
        notes = (*notes, "unknown_image_ids")
    export_time = listing.newest_updated_at or datetime(1980, 1, 1, tzinfo=timezone.utc)
    return ExportPlan(
        target=target,
        project=project,
        rows=rows,
        output=output,
        images_root=images_root,
        export_time=export_time,
        scale_um_per_px=scale,
        scale_source=scale_source,
        driver_problems=driver_problems,
        unknown_image_ids=tuple(listing.unknown_image_ids),
        notes=notes,
    )


# ------------------------------------------------------------------------------------------- Ray


def ensure_ray(address: str | None) -> None:
    """Attach to ``address`` / ``RAY_ADDRESS`` or start a local Ray on demand."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs: dict[str, Any] = {"namespace": "ray_export", "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        kwargs["address"] = address
    elif not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False
    ray.init(**kwargs)


@contextlib.contextmanager
def _export_data_context():
    """Ray Data settings for the datasets built inside: blocks in order (the writer's buffer stays
    bounded), no Ray Data progress bars (ours replace them), no per-operator reservation (it halved
    concurrency on small nodes). Each dataset keeps a copy of the context it was built with, so the
    caller's global context is restored afterwards."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.execution_options.preserve_order, ctx.op_resource_reservation_enabled)
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True
    ctx.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.execution_options.preserve_order, ctx.op_resource_reservation_enabled = saved


def _quiet_ray_data() -> None:
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # our own progress (CLI bar, status, handle) replaces Ray Data's; no notice that it is off
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


#: the stages run by ``map_batches`` (all but the read)
MAP_STAGES = tuple(stage for stage in STAGE_NAMES if stage != "read")


def stage_placement(files_on_driver_only: bool, single_node: bool, driver_node: str) -> dict[str, dict | None]:
    """Label selector of each map stage (``None``: no constraint given).

    - Images only on the driver's node, a one-node cluster without an autoscaler: every stage is pinned
      to the driver's node, so stages with equal hints still fuse into one task.
    - Images only on the driver's node, several nodes: ``copy`` is pinned; the later stages carry an
      explicit empty selector so Ray does not carry the pin over to them (it would when fusing).
    - Images reachable from every node (URI or shared folder): nothing is pinned.
    """
    pin = {"ray.io/node-id": driver_node}
    if not files_on_driver_only:
        return dict.fromkeys(MAP_STAGES)
    if single_node:
        return dict.fromkeys(MAP_STAGES, pin)
    return {stage: (pin if stage == "copy" else {}) for stage in MAP_STAGES}


def _remote_args(options: ExportOptions, stage: str, label_selector: dict | None) -> dict[str, Any]:
    args = options.stages[stage].ray_remote_args()
    if label_selector is not None:
        args["label_selector"] = label_selector
    return args


def _tracked(fn: Callable, stage: str, progress: Any, finish: bool = False) -> Callable:
    """Wrap a stage so that each batch reports its images (done, and failed in this stage) to the progress
    actor. ``finish``: the last stage also drops the columns no consumer needs (polygon text)."""
    from .stages import failed_in_stage, finish_stage

    def run(table, **kwargs):
        out = fn(table, **kwargs)
        failed = failed_in_stage(table, out) if progress is not None else 0
        if finish:
            out = finish_stage(out)
        if progress is not None:
            progress.add_done.remote(stage, out.num_rows, failed)
        return out

    run.__name__ = f"{stage}_stage"
    return run


def _node_resources(node_id: str) -> dict[str, float]:
    import ray

    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return dict(node.get("Resources", {}))
    return {}


def cluster_may_grow() -> bool:
    """Whether an autoscaler manages this cluster (it then publishes its node groups to the GCS)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:
        return False
    return bool(config is not None and len(config.node_group_configs) > 0)


def _cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def rows_per_read_task(n_images: int, cluster_cpus: float, max_rows: int, min_rows: int = 4) -> int:
    """Images per read task (= per block): at most ``max_rows`` (the read batch size), and small enough
    that there are about four blocks per CPU, so a small project still keeps every CPU busy; never
    below ``min_rows`` (each block has a fixed scheduling cost)."""
    per_block = math.ceil(n_images / max(1.0, 4.0 * cluster_cpus))
    return max(1, min(max_rows, max(min_rows, per_block)))


def _alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def check_pinned_stages_fit(
    options: ExportOptions, placement: dict[str, dict | None], driver_resources: dict[str, float]
) -> None:
    """A stage pinned to the driver's node that asks for more than that node has would wait forever."""
    for stage, selector in placement.items():
        if not selector:
            continue
        hints = options.stages[stage]
        wanted = {"CPU": float(hints.num_cpus), **hints.resource_dict()}
        if hints.memory:
            wanted["memory"] = float(hints.memory)
        for resource, amount in wanted.items():
            have = float(driver_resources.get(resource, 0.0))
            if amount > have:
                option = {"CPU": "num_cpus", "memory": "memory"}.get(resource, f"resources.{resource}")
                raise ExportError(
                    f"invalid option stages.{stage}.{option}: asks for {amount:g} {resource}, but the stage "
                    f"must run on the driver's node (local images root), which has {have:g}; lower it, or use a "
                    "URI images root or --shared-images-root",
                    2,
                )


def build_dataset(options: ExportOptions, plan: ExportPlan, driver_node: str, progress: Any):
    """The Ray Dataset of per-image results, in index order."""
    with _export_data_context():
        return _build_dataset(options, plan, driver_node, progress)


def _build_dataset(options: ExportOptions, plan: ExportPlan, driver_node: str, progress: Any):
    from . import stages
    from .datasource import read_project_images

    files_on_driver_only = not is_remote_uri(plan.images_root) and not options.shared_images_root
    single_static_node = _alive_nodes() == 1 and not cluster_may_grow()
    placement = stage_placement(files_on_driver_only, single_static_node, driver_node)
    check_pinned_stages_fit(options, placement, _node_resources(driver_node))
    read_files = options.include_originals or options.include_visualizations
    read_hints = options.stages["read"]
    rows_per_task = rows_per_read_task(len(plan.rows), _cluster_cpus(), read_hints.batch_size)
    # SQLite: the datasource itself pins its reads to the driver's node (it has the only copy of the file).
    ds = read_project_images(
        plan.target,
        plan.rows,
        need_polygons=True,
        need_path=True,
        rows_per_task=rows_per_task,
        ray_remote_args=read_hints.ray_remote_args(),
    )
    chain: list[tuple[str, Callable, dict[str, Any]]] = [
        ("copy", stages.copy_stage, {"images_root": plan.images_root, "read_files": read_files})
    ]
    if options.include_visualizations:
        chain.append(
            (
                "visualize",
                stages.visualize_stage,
                {"settings": options.visualization, "keep_originals": options.include_originals},
            )
        )
    chain.append(("annotate", stages.annotate_stage, {"formats": tuple(options.annotations)}))
    if options.metrics:
        chain.append(("metrics", stages.metrics_stage, {"scale_um_per_px": plan.scale_um_per_px}))
    for position, (name, fn, kwargs) in enumerate(chain):
        ds = ds.map_batches(
            _tracked(fn, name, progress, finish=position == len(chain) - 1),
            batch_format="pyarrow",
            # never coalesce read blocks: a batch larger than a block would merge blocks and cut parallelism
            batch_size=min(options.stages[name].batch_size, rows_per_task),
            fn_kwargs=kwargs,
            zero_copy_batch=True,
            **_remote_args(options, name, placement[name]),
        )
    return ds


class _Heartbeat(threading.Thread):
    """Sends the driver heartbeat and watches the progress actor for a cancel request."""

    def __init__(self, progress: Any, cancel: threading.Event, period: float = 1.0) -> None:
        super().__init__(name="ray-export-heartbeat", daemon=True)
        self.progress = progress
        self.cancel = cancel
        self.period = period
        self.stopped = threading.Event()

    def run(self) -> None:
        import ray

        while not self.stopped.wait(self.period):
            try:
                ray.get(self.progress.heartbeat.remote(), timeout=10)
                if ray.get(self.progress.cancel_requested.remote(), timeout=10):
                    self.cancel.set()
            except Exception:  # a missed beat is not fatal; the actor judges staleness
                log.debug("heartbeat failed", exc_info=True)


def assembly_plan(options: ExportOptions, plan: ExportPlan, spool_dir: Path) -> Any:
    """What the ZIP writer needs to know before the first entry (an :class:`actors.zip_writer.AssemblyPlan`)."""
    from actors.zip_writer import AssemblyPlan

    summary = ExportSummary(
        project_id=plan.project.id,
        project_title=plan.project.title,
        project_type=plan.project.type,
        export_time=format_export_time(plan.export_time),
        content_options=options.content_options(),
        counts={},
        scale_um_per_px=plan.scale_um_per_px,
        scale_source=plan.scale_source,
        members=_member_kinds(options),
        software_versions=software_versions(),
    )
    return AssemblyPlan(
        output=str(plan.output),
        export_time=plan.export_time,
        total_images=len(plan.rows),
        include_originals=options.include_originals,
        include_visualizations=options.include_visualizations,
        annotations=tuple(options.annotations),
        metrics=tuple(options.metrics),
        include_docs=options.include_docs,
        viz_extension=options.visualization.extension,
        scale_um_per_px=plan.scale_um_per_px,
        summary=summary,
        coco_info=_coco_info(plan, summary),
        driver_problems=plan.driver_problems,
        unknown_image_ids=plan.unknown_image_ids,
        notes=plan.notes,
        max_buffered_images=options.max_buffered_images,
        spool_dir=str(spool_dir),
    )


class _CancelWatcher(threading.Thread):
    """Acts on a cancel request at once, while the main thread may be waiting for the next block."""

    def __init__(self, cancel: threading.Event, on_cancel: Callable[[], None]) -> None:
        super().__init__(name="ray-export-cancel", daemon=True)
        self.cancel = cancel
        self.on_cancel = on_cancel
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            if self.cancel.wait(0.1):
                if not self.stopped.is_set():
                    self.on_cancel()
                return


class _ExportRun:
    """One export's driver-side state: the phase, the actors, and the cancellation that races them."""

    def __init__(self, export_id: str, cancel: threading.Event, interrupt_main: bool) -> None:
        self.export_id = export_id
        self.cancel = cancel
        self.interrupt_main = interrupt_main
        self.lock = threading.Lock()
        self.phase = "starting"  # starting -> running -> finalizing -> done, or -> cancelling
        self.active = True  # cleared when run_export returns: no interrupt of the main thread after that
        self.started = time.time()
        self.writer: Any = None
        self.progress: Any = None
        self.output: Path | str | None = None
        self.spool_dir: Path | None = None

    def enter(self, phase: str) -> None:
        """Move to ``phase`` unless a cancel got there first."""
        with self.lock:
            if self.phase == "cancelling" or self.cancel.is_set():
                raise ExportCancelled()
            self.phase = phase

    def finished(self) -> None:
        """The ZIP is committed: from now on a cancel no longer applies (unless it came first)."""
        with self.lock:
            if self.phase == "cancelling":
                raise ExportCancelled()
            self.phase = "done"
            self.writer = None

    def set_writer(self, writer: Any) -> None:
        with self.lock:
            self.writer = writer

    def on_cancel(self) -> None:
        """Remove every file of the export and record ``cancelled`` now; the main thread unwinds after."""
        with self.lock:
            if self.phase not in ("starting", "running", "finalizing"):
                return
            committing = self.phase == "finalizing"
            self.phase = "cancelling"
        self.discard(committing)
        _final_state(self.progress, "cancelled", "export cancelled")
        with self.lock:
            if self.interrupt_main and self.active:
                _thread.interrupt_main()

    def fail(self, state: str, message: str) -> None:
        with self.lock:
            committing = self.phase in ("finalizing", "cancelling")
            self.phase = "done"
        self.discard(committing)
        _final_state(self.progress, state, message)

    def discard(self, committing: bool) -> None:
        """Stop the writer and delete the partial output and spool folder from the driver (same node).

        ``committing``: the writer may have committed the ZIP in the meantime; then the output this run
        wrote is deleted too.
        """
        import ray

        with self.lock:
            writer, self.writer = self.writer, None
        if writer is not None:
            with contextlib.suppress(Exception):  # a quick clean abort when the writer is idle
                ray.get(writer.abort.remote(), timeout=1.0)
            with contextlib.suppress(Exception):
                ray.kill(writer)
            if committing:
                time.sleep(0.3)  # let a kill that raced a commit land before looking at the output
        remove_export_files(self.output, self.spool_dir, self.started if committing else None)


def remove_export_files(output: Path | str | None, spool_dir: Path | None, written_since: float | None) -> None:
    """Delete ``<output>.partial`` and the spool folder; with ``written_since``, also an output written
    after that time (by this export). Never raises."""
    if spool_dir is not None:
        shutil.rmtree(spool_dir, ignore_errors=True)
    if output is None:
        return
    if isinstance(output, Path):
        with contextlib.suppress(OSError):
            Path(str(output) + ".partial").unlink(missing_ok=True)
        if written_since is not None:
            with contextlib.suppress(OSError):
                if output.stat().st_mtime >= written_since - 1:
                    output.unlink()
        return
    if written_since is not None:
        import pyarrow.fs as pafs

        with contextlib.suppress(Exception):
            fs, path = pafs.FileSystem.from_uri(output)
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.File and (info.mtime is None or info.mtime.timestamp() >= written_since - 1):
                fs.delete_file(path)


def make_spool_dir(output: Path | str) -> Path:
    """The folder for spooled aggregated members: beside a local output, in the temp folder otherwise."""
    if isinstance(output, Path):
        return Path(tempfile.mkdtemp(prefix=f".{output.name}.spool-", dir=output.parent))
    return Path(tempfile.mkdtemp(prefix=".ray-export-spool-"))


def preflight(options: ExportOptions) -> None:
    """The checks that need neither Ray nor the database (usage errors come before any start-up)."""
    try:
        options.validate(under_job=running_under_job_submit())
        target = parse_db_target(options.db)
    except OptionError as exc:
        raise ExportError(str(exc), 2) from exc
    except SourceError as exc:
        raise ExportError(str(exc), exc.exit_code) from exc
    _images_root(options, target)
    if options.output:
        _check_output(options, "")


def run_export(
    options: ExportOptions,
    export_id: str | None = None,
    cancel: threading.Event | None = None,
    on_start: Callable[[str], None] | None = None,
    handle_signals: bool = False,
) -> ExportResult:
    """Run one export to completion on the current (or an on-demand) Ray cluster.

    Raises :class:`ExportError` (with ``exit_code``) on fatal problems and :class:`ExportCancelled`
    when ``cancel`` is set or the progress actor receives a cancel request. A cancel removes the
    export's files at once, from a watcher thread, in every phase up to the commit. With
    ``handle_signals`` (main thread only), SIGTERM and SIGINT set ``cancel`` and the main thread is
    interrupted once the files are gone; the handlers are installed after Ray starts, which installs
    handlers of its own.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from actors.progress import create_progress_actor
    from actors.zip_writer import ZipWriterActor

    started = time.time()
    export_id = export_id or new_export_id()
    cancel = cancel or threading.Event()
    if on_start:
        on_start(export_id)
    preflight(options)
    try:
        ensure_ray(options.address)
    except Exception as exc:
        raise ExportError(f"cannot start or reach Ray: {type(exc).__name__}: {_error_line(exc)}", 1) from exc
    in_main = threading.current_thread() is threading.main_thread()
    if handle_signals and in_main:
        install_signal_handlers(cancel)
    run = _ExportRun(export_id, cancel, interrupt_main=handle_signals and in_main)
    try:
        run.progress = progress = create_progress_actor(export_id)
        ray.get(progress.set_state.remote("querying"))
    except Exception as exc:
        raise ExportError(f"cannot start the progress actor: {type(exc).__name__}: {_error_line(exc)}", 1) from exc
    heartbeat = _Heartbeat(progress, cancel)
    heartbeat.start()
    watcher = _CancelWatcher(cancel, run.on_cancel)
    watcher.start()
    try:
        try:
            plan = plan_export(options)
        except SourceError as exc:
            raise ExportError(str(exc), exc.exit_code) from exc
        run.enter("starting")
        n = len(plan.rows)
        stage_totals = dict.fromkeys(MAP_STAGES, n)
        if not options.include_visualizations:
            stage_totals.pop("visualize")
        if not options.metrics:
            stage_totals.pop("metrics")
        ray.get(progress.set_totals.remote({**stage_totals, "write": n}))
        ray.get(progress.set_output.remote(str(plan.output)))
        _quiet_ray_data()
        driver_node = ray.get_runtime_context().get_node_id()
        run.output = plan.output
        run.spool_dir = make_spool_dir(plan.output)
        assembly = assembly_plan(options, plan, run.spool_dir)
        run.set_writer(
            ZipWriterActor.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(driver_node, soft=False)
            ).remote(assembly)
        )
        dataset = build_dataset(options, plan, driver_node, progress)
        run.enter("running")
        ray.get(progress.set_state.remote("running"))
        writer = run.writer
        _feed_writer(dataset, writer, progress, cancel)
        run.enter("finalizing")
        ray.get(progress.set_state.remote("finalizing"))
        counts = ray.get(writer.finish.remote())
        run.finished()
        ray.get(progress.set_bytes.remote(counts.get("bytes", 0)))
        ray.get(progress.set_state.remote("succeeded"))
        return ExportResult(export_id, str(plan.output), counts, time.time() - started)
    except (ExportCancelled, KeyboardInterrupt) as exc:
        run.fail("cancelled", "export cancelled")
        if isinstance(exc, ExportCancelled):
            raise
        raise ExportCancelled() from exc
    except ExportError as exc:
        run.fail("failed", str(exc))
        raise
    except OSError as exc:  # also a writer-actor error caused by one (Ray errors subclass their cause)
        message = f"I/O error: {_error_line(exc)}"
        run.fail("failed", message)
        raise ExportError(message, 1) from exc
    except Exception as exc:
        if cancel.is_set():
            run.fail("cancelled", "export cancelled")
            raise ExportCancelled() from exc
        message = f"{type(exc).__name__}: {_error_line(exc)}"
        run.fail("failed", message)
        raise ExportError(f"export failed: {message}", 1) from exc
    finally:
        with run.lock:
            run.active = False
        watcher.stopped.set()
        heartbeat.stopped.set()


def _error_line(exc: BaseException) -> str:
    """The line that names the error (the last one of a remote traceback), at most 500 characters."""
    text = str(exc).strip().splitlines()
    return text[-1][:500] if text else ""


def _final_state(progress: Any, state: str, message: str) -> None:
    import ray

    try:
        ray.get(progress.set_state.remote(state, message), timeout=10)
    except Exception:
        log.debug("could not record the final state", exc_info=True)


def _feed_writer(dataset: Any, writer: Any, progress: Any, cancel: threading.Event, max_inflight: int = 4) -> None:
    """Stream result blocks (by reference) into the writer actor, at most ``max_inflight`` at a time."""
    import ray

    inflight: list[Any] = []

    def settle(refs: list[Any]) -> None:
        for written, problems, nbytes in ray.get(refs):
            if written:
                progress.add_done.remote("write", written)
            if problems:
                progress.add_problems.remote(problems)
            progress.set_bytes.remote(nbytes)

    with streamed_bundles(dataset, cancel) as bundles:
        for bundle in bundles:
            if cancel.is_set():
                raise ExportCancelled()
            for block_ref in bundle.block_refs:
                inflight.append(writer.add_batch.remote(block_ref))
            while len(inflight) > max_inflight:
                done, inflight = ray.wait(inflight, num_returns=1)
                settle(done)
            if cancel.is_set():
                raise ExportCancelled()
        if cancel.is_set():  # a cancel ends the stream early
            raise ExportCancelled()
        if inflight:
            settle(inflight)


@contextlib.contextmanager
def streamed_bundles(dataset: Any, cancel: threading.Event | None = None) -> Iterator[Iterator[Any]]:
    """Run ``dataset`` and yield an iterator over its output bundles (block references) as they come.

    The dataset's streaming executor is shut down when the ``with`` block ends, however it ends
    (exhausted, an error, a cancel); left to the garbage collector, an executor abandoned mid-stream
    keeps its tasks running until something collects it, possibly after Ray or logging has shut down.
    Setting ``cancel`` shuts it down at once, which ends the iteration early even while it waits for
    a block. ``iter_internal_ref_bundles`` gives no handle on the executor, so it is made here the way
    ``Dataset._execute_to_iterator`` makes it, without waiting for the first block.
    """
    executor = dataset._create_executor()
    ended = threading.Event()

    def stop_on_cancel() -> None:
        while cancel is not None and not ended.is_set():
            if cancel.wait(0.1):
                _shut_down(executor)
                return

    watcher = threading.Thread(target=stop_on_cancel, name="ray-export-dataset-cancel", daemon=True)
    try:
        bundles = dataset._build_bundle_iterator(executor)
        watcher.start()
        yield bundles
    finally:
        ended.set()
        _shut_down(executor)


def _shut_down(executor: Any) -> None:
    """Stop a dataset's executor and its running tasks (idempotent)."""
    try:
        executor.shutdown(force=True)
    except Exception:  # the export's own outcome matters more than a failed clean-up
        log.debug("could not shut down the dataset executor", exc_info=True)


def _member_kinds(options: ExportOptions) -> dict[str, Any]:
    return {
        "originals": options.include_originals,
        "visualizations": options.include_visualizations,
        "visualization_format": options.visualization.format,
        "annotations": list(options.annotations),
        "metrics": list(options.metrics),
        "docs": options.include_docs,
    }


def _coco_info(plan: ExportPlan, summary: ExportSummary) -> dict:
    return {
        "description": f"{plan.project.title} (ray_export)",
        "version": __version__,
        "year": plan.export_time.astimezone(timezone.utc).year,
        "date_created": summary.export_time,
        "project_id": plan.project.id,
    }


# ------------------------------------------------------------------------------- signals / handle


def install_signal_handlers(cancel: threading.Event) -> None:
    """SIGTERM (``ray job stop``) and SIGINT (Ctrl-C) request cancellation instead of killing the driver."""

    def handler(signum, _frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
