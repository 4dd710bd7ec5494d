"""Building the export's Ray Dataset: the projected read of the datasource, then the map stages."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .cluster import cluster_cpus, place_stages, stage_demand
from .heap import release_free_heap
from .options import ExportOptions
from .planning import ExportPlan

log = logging.getLogger(__name__)

#: the progress handle of each dataset built here, so that running it also watches for stalls
_dataset_progress: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
STALL_POLL_S = 2.0


@contextlib.contextmanager
def export_data_context():
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


def quiet_ray_data() -> None:
    """Keep Ray Data's own progress and executor notices off the console (ours replace them)."""
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # our own progress (CLI bar, status, handle) replaces Ray Data's; no notice that it is off
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


#: Blocks per CPU of the cluster the rows are cut into (when the read batch size allows): the first
#: results reach the writer after one small block, and the last blocks leave no CPU idle for long.
#: 230 camera images on 2 CPUs (8 rows per block instead of 29): 11.3 s -> 8.4-8.8 s with Ray warm;
#: 1,000 images (32 rows per block either way) are not affected.
BLOCKS_PER_CPU = 16


def rows_per_read_task(n_images: int, cluster_cpus: float, max_rows: int, min_rows: int = 4) -> int:
    """Images per read task (= per block): at most ``max_rows`` (the read batch size), and small enough
    that there are about :data:`BLOCKS_PER_CPU` blocks per CPU, so a small project still keeps every
    CPU busy and the writer gets its first images early; never below ``min_rows`` (each block has a
    fixed scheduling cost)."""
    per_block = math.ceil(n_images / max(1.0, BLOCKS_PER_CPU * cluster_cpus))
    return max(1, min(max_rows, max(min_rows, per_block)))


def block_sizes(n_images: int, cluster_cpus: float, max_rows: int, min_rows: int = 4) -> list[int]:
    """Rows of each read block, in index order: blocks of :func:`rows_per_read_task` rows, except a
    first block of a quarter of that (the writer starts early) and, at the end, one block of a half and
    one of a quarter per CPU (every CPU finishes at about the same time, instead of one working through
    a last full block while the others wait); never below ``min_rows``, never above ``max_rows``."""
    if n_images <= 0:
        return []
    full = rows_per_read_task(n_images, cluster_cpus, max_rows, min_rows)
    cpus = max(1, round(cluster_cpus))
    quarter = min(full, max(min_rows, full // 4))
    half = min(full, max(min_rows, full // 2))
    head, tail = [quarter], [half] * cpus + [quarter] * cpus
    if sum(head) + sum(tail) >= n_images:  # a small export: blocks of a quarter
        count = math.ceil(n_images / quarter)
        return [n_images // count + (1 if k < n_images % count else 0) for k in range(count)]
    middle = n_images - sum(head) - sum(tail)
    count = math.ceil(middle / full)  # the middle rows in blocks of full size or one row less
    blocks = [middle // count + (1 if k < middle % count else 0) for k in range(count)]
    return head + blocks + tail


def preload_dataset_modules() -> None:
    """Import Ray Data and the datasource now (about 0.6 s of one CPU, pandas included); a failure is left
    for the import where the dataset is built to report."""
    with contextlib.suppress(Exception):
        from . import datasource  # noqa: F401


#: Most warm-up tasks started at once (one per free CPU of the cluster, up to this many).
MAX_WARM_UP_TASKS = 32


def import_stage_modules() -> None:
    """Import what a stage task runs (Ray Data's task side, Arrow, OpenCV, the stages and formats): done
    in idle workers while the export starts, so that the first block does not pay for it."""
    import ray.data._internal.execution.operators.map_transformer
    import ray.data._internal.planner.plan_udf_map_op  # noqa: F401

    from . import datasource, stages  # noqa: F401


def warm_up_cluster() -> None:
    """Start, before the export's own actors, what its first block would otherwise wait for: Ray Data's
    cluster-wide actors (created once per cluster, each a new process, and answered before Ray Data runs
    a task), then the stage modules' imports in the workers now idle (one task per free CPU, never more
    than are free: no task waits for a node an autoscaler would have to add). Nothing waits for them."""
    import ray

    with contextlib.suppress(Exception):
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
        from ray.data._internal.stats import get_or_create_stats_actor

        get_or_create_autoscaling_coordinator()
        get_or_create_stats_actor()
    with contextlib.suppress(Exception):
        free = int(ray.available_resources().get("CPU", 0))
        task = ray.remote(num_cpus=1, max_retries=0)(import_stage_modules)
        for _ in range(min(free, MAX_WARM_UP_TASKS)):
            task.remote()


def _remote_args(options: ExportOptions, stage: str, label_selector: dict | None) -> dict[str, Any]:
    args = options.stages[stage].ray_remote_args()
    if label_selector is not None:
        args["label_selector"] = label_selector
    return args


def limit_library_threads() -> None:
    """Let OpenCV use as many threads as the task has CPUs (Ray sets ``OMP_NUM_THREADS`` to that), not
    one per core of the node: tasks running side by side would otherwise oversubscribe the CPUs."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        import cv2

        if cv2.getNumThreads() != int(threads):
            cv2.setNumThreads(int(threads))


def _tracked(fn: Callable, stage: str, progress: Any, finish: bool = False) -> Callable:
    """Wrap a stage so that each batch reports its images by export index (done, and failed in this
    stage) to the progress actor; a retried batch reports the same indices, which count once.
    ``finish``: the last stage also drops the columns no consumer needs (polygon text)."""
    from .stages import failed_indices, finish_stage

    def run(table, **kwargs):
        limit_library_threads()
        out = fn(table, **kwargs)
        failed = failed_indices(table, out) if progress is not None else []
        if finish:
            out = finish_stage(out)
            release_free_heap()
        if progress is not None:
            progress.add_images.remote(stage, out.column("index").to_pylist(), failed)
        return out

    run.__name__ = f"{stage}_stage"
    return run


def build_dataset(options: ExportOptions, plan: ExportPlan, driver_node: str, progress: Any, reuse: Any = None):
    """The Ray Dataset of per-image results, in index order. The progress actor learns what each stage
    asks for and the stall time; running the dataset (:func:`streamed_bundles`) logs a stalled stage.
    ``reuse``: the trusted previous export (a :class:`ray_export.reuse.ReuseSource`)."""
    with export_data_context():
        dataset = _build_dataset(options, plan, driver_node, progress, reuse)
    if progress is not None:
        demands = {stage: stage_demand(options, stage) for stage in options.stages if stage != "read"}
        progress.set_stage_demands.remote(demands, float(options.stall_timeout_s))
        _dataset_progress[dataset] = progress
    return dataset


def _build_dataset(options: ExportOptions, plan: ExportPlan, driver_node: str, progress: Any, reuse: Any):
    from .datasource import read_project_images
    from .stages import stage_chain

    placement = place_stages(options, plan.images_root, driver_node)
    read_hints = options.stages["read"]
    blocks = block_sizes(len(plan.rows), cluster_cpus(), read_hints.batch_size)
    # SQLite: the datasource itself pins its reads to the driver's node (it has the only copy of the file).
    ds = read_project_images(
        plan.target,
        plan.rows,
        need_polygons=plan.need_polygons,
        need_path=plan.need_path,
        rows_per_task=blocks,
        ray_remote_args=read_hints.ray_remote_args(),
        retry_s=options.db_retry_s,
        extra=plan.read_columns,
    )
    chain = stage_chain(options, plan.images_root, plan.scale_um_per_px, reuse, plan.project_type, plan.type_context)
    for position, step in enumerate(chain):
        ds = ds.map_batches(
            _tracked(step.fn, step.name, progress, finish=position == len(chain) - 1),
            batch_format="pyarrow",
            # never coalesce read blocks: a batch larger than a block would merge blocks and cut parallelism
            batch_size=min(options.stages[step.name].batch_size, min(blocks)),
            fn_kwargs=step.kwargs,
            zero_copy_batch=True,
            **_remote_args(options, step.name, placement[step.name]),
        )
    return ds


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
    progress = _dataset_progress.get(dataset)
    stall_logger = threading.Thread(
        target=_log_stalls, args=(progress, ended), name="ray-export-stall-log", daemon=True
    )
    try:
        bundles = dataset._build_bundle_iterator(executor)
        watcher.start()
        if progress is not None:
            stall_logger.start()
        yield bundles
    finally:
        ended.set()
        _shut_down(executor)


def stall_message(stalled: dict) -> str:
    """``stage visualize stalled: no progress for 300 s, waiting for CPU=4`` from a snapshot's ``stalled``."""
    wants = ", ".join(f"{name}={amount:g}" for name, amount in sorted(stalled.get("resources", {}).items()))
    return (
        f"stage {stalled['stage']} stalled: no progress for {stalled['seconds']:.0f} s, waiting for "
        f"{wants or 'a free worker'} (no node with these resources free; check `ray status`)"
    )


def _log_stalls(progress: Any, ended: threading.Event) -> None:
    """Log a warning when the progress actor reports a stalled stage (once per stall)."""
    import ray

    reported: str | None = None
    while not ended.wait(STALL_POLL_S):
        try:
            stalled = ray.get(progress.snapshot.remote(), timeout=10).get("stalled")
        except Exception:
            continue
        key = stalled and stalled["stage"]
        if stalled and key != reported:
            log.warning(stall_message(stalled))
        reported = key


def _shut_down(executor: Any) -> None:
    """Stop a dataset's executor and its running tasks (idempotent)."""
    try:
        executor.shutdown(force=True)
    except Exception:  # the export's own outcome matters more than a failed clean-up
        log.debug("could not shut down the dataset executor", exc_info=True)
