"""Benchmark: the Ray export pipeline against the same work in one process.

Builds (or reuses) a demo project, exports it once in a single process without Ray, then through
``ray_export.api.export`` on a local Ray for each hint plan, and reports images/s, speed-up, parallel
efficiency, peak memory (summed PSS of the driver and every Ray process), the writer actor's busy
fraction and whether the pipeline's ZIP is byte-identical to the one-process ZIP.

Run ``python bench/benchmark.py --help`` from the repository root.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ray_export.options import MAP_STAGES  # noqa: E402 - the map stages Ray fuses when their hints are equal

#: Hint plans: stage name -> option values (``stages`` of an options file); missing stages keep the defaults.
PLANS: dict[str, dict[str, dict[str, Any]]] = {
    # the current option defaults
    "default": {},
    # identical hints on the four map stages: one fused operator, one task per block
    "fused": {name: {"num_cpus": 1.0, "batch_size": 8} for name in MAP_STAGES},
    # fused, but half a CPU per task: twice as many tasks as CPUs (overlaps file I/O and the writer)
    "fused-half": {name: {"num_cpus": 0.5, "batch_size": 8} for name in MAP_STAGES},
    # distinct hints per stage (an earlier default): four operators with object-store hops between them
    "split": {
        "read": {"num_cpus": 0.5, "batch_size": 32},
        "copy": {"num_cpus": 0.25, "batch_size": 16},
        "visualize": {"num_cpus": 1.0, "batch_size": 8},
        "annotate": {"num_cpus": 0.5, "batch_size": 32},
        "metrics": {"num_cpus": 0.5, "batch_size": 32},
    },
    # distinct hints, the CPU budget on the visualizer and a small share for the light stages
    "viz-heavy": {
        "copy": {"num_cpus": 0.25, "batch_size": 8},
        "visualize": {"num_cpus": 1.0, "batch_size": 4},
        "annotate": {"num_cpus": 0.25, "batch_size": 8},
        "metrics": {"num_cpus": 0.25, "batch_size": 8},
    },
}


# --------------------------------------------------------------------------------------------- memory


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: the fields after the last ")" are fixed
    return text.rsplit(b")", 1)[-1].split()


def _parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields and len(fields) > 1 else None


def cpu_seconds_of(pid: int) -> float | None:
    """User + system CPU seconds a process has used (None when it is gone)."""
    fields = _stat_fields(pid)
    if not fields or len(fields) < 13:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def system_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from ``/proc/stat``."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    total = sum(values[:8])
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (total - idle) / _CLOCK_TICKS, total / _CLOCK_TICKS


def process_role(pid: int, root_pid: int) -> str:
    """What a process of the tree is: driver, raylet, gcs, writer actor, other actors, task workers, other."""
    if pid == root_pid:
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            command = fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return "other"
    first = command.split(" ", 1)[0] if command else ""
    if first.endswith("/raylet") or first == "raylet":
        return "raylet"
    if "gcs_server" in first:
        return "gcs"
    if command.startswith("ray::ZipWriterActor"):
        return "writer actor"
    if command.startswith(("ray::ProgressActor", "ray::_StatsActor", "ray::_AutoscalingCoordinator")):
        return "other actors"
    if command.startswith("ray::"):
        return "task workers"
    return "other"


def process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and all its live descendants (read from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent_pid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found = [root_pid]
    stack = [root_pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process (0 when it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    return 0


def summed_pss(root_pid: int) -> tuple[int, int]:
    """(summed PSS in bytes, number of processes) of ``root_pid`` and its descendants."""
    pids = process_tree(root_pid)
    return sum(pss_bytes(pid) for pid in pids), len(pids)


class PssSampler(threading.Thread):
    """Samples a process tree every ``period`` seconds: peak summed PSS, CPU seconds used, foreign load.

    CPU seconds are per process (last seen minus first seen; a process born during the run counts from 0),
    so a process that exits between samples loses at most ``period`` of its time. ``foreign_cpu_fraction``
    is the machine's busy time not spent by the tree, as a share of all cores: other work competing with
    the measurement.
    """

    def __init__(self, root_pid: int, period: float = 0.5) -> None:
        super().__init__(name="pss-sampler", daemon=True)
        self.root_pid = root_pid
        self.period = period
        self.peak = 0
        self.peak_processes = 0
        self.samples = 0
        self.sampling_seconds = 0.0
        self._first_cpu: dict[int, float] = {}
        self._roles: dict[int, str] = {}
        self._last_cpu: dict[int, float] = {}
        self._started_pids: set[int] = set(process_tree(root_pid))
        for pid in self._started_pids:
            value = cpu_seconds_of(pid)
            if value is not None:
                self._first_cpu[pid] = self._last_cpu[pid] = value
        self._system_start = system_cpu_seconds()
        self._system_end = self._system_start
        self._stop_event = threading.Event()

    def sample(self) -> None:
        started = time.thread_time()
        pids = process_tree(self.root_pid)
        total = 0
        for pid in pids:
            total += pss_bytes(pid)
            value = cpu_seconds_of(pid)
            if value is not None:
                self._first_cpu.setdefault(pid, 0.0 if pid not in self._started_pids else value)
                self._last_cpu[pid] = value
            # an actor keeps its role; a task worker's title changes with the task it runs
            if self._roles.get(pid) not in ("writer actor", "other actors"):
                self._roles[pid] = process_role(pid, self.root_pid)
        self.sampling_seconds += time.thread_time() - started
        self.samples += 1
        if total > self.peak:
            self.peak, self.peak_processes = total, len(pids)

    def run(self) -> None:
        self.sample()
        while not self._stop_event.wait(self.period):
            self.sample()

    def stop(self) -> int:
        """Stop, take a last sample and return the peak in bytes."""
        self._stop_event.set()
        self.join()
        self.sample()
        self._system_end = system_cpu_seconds()
        return self.peak

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds the tree used while sampled, less the sampler's own reading of ``/proc``."""
        used = sum(self._last_cpu[pid] - self._first_cpu.get(pid, 0.0) for pid in self._last_cpu)
        return max(0.0, used - self.sampling_seconds)

    @property
    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds used while sampled, by process role (see :func:`process_role`)."""
        out: dict[str, float] = {}
        for pid, last in self._last_cpu.items():
            role = self._roles.get(pid, "other")
            out[role] = out.get(role, 0.0) + last - self._first_cpu.get(pid, 0.0)
        if "driver" in out:
            out["driver"] = max(0.0, out["driver"] - self.sampling_seconds)
        return {role: round(value, 2) for role, value in sorted(out.items(), key=lambda kv: -kv[1])}

    @property
    def foreign_cpu_fraction(self) -> float:
        """Share of the machine's CPU capacity used by other processes during the sampling."""
        busy = self._system_end[0] - self._system_start[0]
        total = self._system_end[1] - self._system_start[1]
        ours = self.cpu_seconds + self.sampling_seconds
        return max(0.0, (busy - ours) / total) if total > 0 else 0.0


# -------------------------------------------------------------------------------------------- results


@dataclass
class OneProcessResult:
    seconds: float
    cpu_seconds: float
    foreign_cpu_fraction: float
    images_per_s: float
    peak_pss_bytes: int
    stage_seconds: dict[str, float]
    zip_sha256: str
    zip_bytes: int


@dataclass
class PlanResult:
    plan: str
    stages: dict[str, dict[str, Any]]
    warmup_seconds: float
    run_seconds: list[float]
    best_seconds: float
    median_seconds: float
    images_per_s: float
    speedup: float
    efficiency: float
    cpu_seconds: float
    cpu_ratio: float
    cpu_by_role: dict[str, float]
    foreign_cpu_fraction: float
    idle_pss_bytes: int
    peak_pss_bytes: int
    peak_processes: int
    writer_busy_fraction: float | None
    data_cpu_busy_fraction: float | None
    operators: dict[str, dict[str, float]]
    zip_identical: bool
    zip_differences: list[str] = field(default_factory=list)
    #: the best run's fixed cost (``ExportResult.timings``: seconds from the export's start per milestone)
    timings: dict[str, float] = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def zip_differences(expected: Path, actual: Path, limit: int = 10) -> list[str]:
    """Human-readable differences between two ZIPs: member list, header fields, member bytes."""
    found: list[str] = []
    with zipfile.ZipFile(expected) as ze, zipfile.ZipFile(actual) as za:
        names_e, names_a = ze.namelist(), za.namelist()
        if names_e != names_a:
            only_e = [n for n in names_e if n not in set(names_a)]
            only_a = [n for n in names_a if n not in set(names_e)]
            found.append(f"member lists differ: only one-process {only_e[:5]}, only pipeline {only_a[:5]}")
            if not only_e and not only_a:
                first = next(i for i, (x, y) in enumerate(zip(names_e, names_a, strict=False)) if x != y)
                found.append(f"member order differs from position {first}: {names_e[first]!r} vs {names_a[first]!r}")
        infos_a = {info.filename: info for info in za.infolist()}
        for info_e in ze.infolist():
            info_a = infos_a.get(info_e.filename)
            if info_a is None:
                continue
            for attr in ("date_time", "compress_type", "external_attr", "file_size"):
                if getattr(info_e, attr) != getattr(info_a, attr):
                    found.append(
                        f"{info_e.filename}: {attr} {getattr(info_e, attr)!r} vs {getattr(info_a, attr)!r}"
                    )
            if info_e.CRC != info_a.CRC:
                found.append(f"{info_e.filename}: content differs{_first_byte_difference(ze, za, info_e.filename)}")
            elif info_e.compress_size != info_a.compress_size:
                found.append(f"{info_e.filename}: same content, compressed size differs")
            if len(found) >= limit:
                break
    if not found:
        found.append("members equal; the archives differ in central-directory or padding bytes")
    return found[:limit]


def _first_byte_difference(ze: zipfile.ZipFile, za: zipfile.ZipFile, name: str) -> str:
    data_e, data_a = ze.read(name), za.read(name)
    limit = min(len(data_e), len(data_a))
    for i in range(limit):
        if data_e[i] != data_a[i]:
            lo = max(0, i - 40)
            return f" at byte {i}: {data_e[lo:i + 40]!r} vs {data_a[lo:i + 40]!r}"
    return f" (lengths {len(data_e)} vs {len(data_a)})"


# ---------------------------------------------------------------------------------------- one process


#: Options every export of this run gets (``--no-visualizations``: ``{"visualizations": False}``).
CONTENT_OPTIONS: dict[str, Any] = {}


def export_options(db_path: Path, project_id: str, output: Path, stages: Mapping[str, Any] | None = None) -> dict:
    """The options mapping of one benchmark export (demo project, all outputs but those
    :data:`CONTENT_OPTIONS` turns off, given stage hints)."""
    values: dict[str, Any] = {"db": str(db_path), "project": project_id, "output": str(output), "force": True}
    values.update(CONTENT_OPTIONS)
    if stages:
        values["stages"] = {name: dict(hints) for name, hints in stages.items()}
    return values


def _read_batches(plan: Any, batch_size: int) -> Iterator[Any]:
    """Source rows in export order as Arrow tables of ``batch_size`` rows: the pipeline's own datasource
    (the same projected query and range reading), read in this process."""
    from ray_export.datasource import ProjectImagesDatasource

    datasource = ProjectImagesDatasource(plan.target, plan.rows, plan.need_polygons, plan.need_path, batch_size)
    return datasource.read_in_process()


def run_one_process(options_values: dict, batch_size: int) -> tuple[float, float, dict[str, float]]:
    """The whole export in this process, without Ray: (wall seconds, CPU seconds, wall seconds per stage).

    CPU seconds above wall seconds mean a library (OpenCV) used more than one core.
    """
    from actors.zip_writer import ExportAssembler
    from ray_export.options import build_options
    from ray_export.output_files import spool_folder
    from ray_export.planning import assembly_plan, plan_export
    from ray_export.stages import finish_stage, stage_chain

    spent: dict[str, float] = {}

    def timed(name: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - started
        return out

    started = time.perf_counter()
    cpu_started = time.process_time()
    options = build_options(options_values)
    plan = timed("plan", plan_export, options)
    assembler = timed("write", ExportAssembler, assembly_plan(options, plan, spool_folder(plan.output)))
    chain = stage_chain(options, plan.images_root, plan.scale_um_per_px)
    batches = _read_batches(plan, batch_size)
    try:
        while True:
            table = timed("read", next, batches, None)
            if table is None:
                break
            for step in chain:
                table = timed(step.name, step.fn, table, **step.kwargs)
            table = finish_stage(table)
            timed("write", assembler.add_batch, table)
        timed("write", assembler.finish)
    except BaseException:
        assembler.abort()
        raise
    return time.perf_counter() - started, time.process_time() - cpu_started, spent


# ---------------------------------------------------------------------------------------- writer only


def precompute_results(options_values: dict, batch_size: int, folder: Path) -> int:
    """Run the stages once in this process and keep their result batches (exactly what the writer actor
    receives) as Arrow IPC files ``<folder>/<n>.arrow``; returns the number of batches. A folder already
    complete (``done`` marker) is reused."""
    import pyarrow as pa

    from ray_export.options import build_options
    from ray_export.planning import plan_export
    from ray_export.stages import finish_stage, stage_chain

    marker = folder / "done"
    if marker.exists():
        return len(list(folder.glob("*.arrow")))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    options = build_options(options_values)
    plan = plan_export(options)
    chain = stage_chain(options, plan.images_root, plan.scale_um_per_px)
    count = 0
    for table in _read_batches(plan, batch_size):
        for step in chain:
            table = step.fn(table, **step.kwargs)
        table = finish_stage(table)
        with pa.OSFile(str(folder / f"{count:06d}.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
            out.write_table(table)
        count += 1
    marker.write_text(f"{count}\n")
    return count


def run_writer_only(options_values: dict, results: Path, repeat: int, log: Callable[[str], None]) -> dict:
    """How fast one writer goes when the stages are free: a fresh ``ExportAssembler`` (what the writer actor
    runs) fed the stored result batches, memory-mapped, in this process; ``repeat`` runs, the best kept.

    Timed: opening the assembler, every ``add_batch`` and ``finish`` (the aggregated members and the
    commit). Not timed: planning and loading the batches (mapped from the page cache)."""
    import pyarrow as pa

    from actors.zip_writer import ExportAssembler
    from ray_export.options import build_options
    from ray_export.output_files import spool_folder
    from ray_export.planning import assembly_plan, plan_export

    options = build_options(options_values)
    plan = plan_export(options)
    tables = []
    for path in sorted(results.glob("*.arrow")):
        with pa.memory_map(str(path)) as source:
            tables.append(pa.ipc.open_file(source).read_all())
    runs: list[dict[str, float]] = []
    for run in range(repeat):
        started = time.perf_counter()
        cpu_started = time.process_time()
        assembler = ExportAssembler(assembly_plan(options, plan, spool_folder(plan.output)))
        try:
            opened = time.perf_counter()
            written = sum(assembler.add_batch(table) for table in tables)
            added = time.perf_counter()
            counts = assembler.finish()
        except BaseException:
            assembler.abort()
            raise
        ended = time.perf_counter()
        runs.append({
            "seconds": ended - started, "cpu_seconds": time.process_time() - cpu_started,
            "open_seconds": opened - started, "add_seconds": added - opened, "finish_seconds": ended - added,
            "images": written, "bytes": counts.get("bytes", 0),
        })  # fmt: skip
        log(f"writer only: run {run + 1}: {written} images in {ended - started:.2f} s "
            f"({written / (ended - started):.1f} images/s)")
    best = min(runs, key=lambda r: r["seconds"])
    return {
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in best.items()},
        "runs": [round(r["seconds"], 3) for r in runs],
        "batches": len(tables),
        "images_per_s": best["images"] / best["seconds"],
        "add_images_per_s": best["images"] / best["add_seconds"] if best["add_seconds"] > 0 else 0.0,
        "mib_per_s": best["bytes"] / 2**20 / best["seconds"],
    }


def format_writer_only(result: dict) -> list[str]:
    """The writer-only lines of the report."""
    return [
        f"one writer, stages free (ExportAssembler fed {result['batches']} stored result batches in one process): "
        f"{result['images']} images in {result['seconds']:.2f} s = {result['images_per_s']:.1f} images/s, "
        f"{result['mib_per_s']:.0f} MiB/s of ZIP, CPU {result['cpu_seconds']:.2f} s",
        f"  open {result['open_seconds']:.2f} s, add_batch {result['add_seconds']:.2f} s "
        f"({result['add_images_per_s']:.1f} images/s), finish (aggregated members, commit) "
        f"{result['finish_seconds']:.2f} s; best of {len(result['runs'])}",
        "",
    ]


# ------------------------------------------------------------------------------------------------ Ray


def start_ray(cpus: int, object_store_bytes: int, temp_dir: str) -> None:
    """A private local Ray: ``cpus`` CPUs, fixed object store, no dashboard, own temp dir."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop("RAY_ADDRESS", None)
    import ray

    ray.init(
        num_cpus=cpus,
        object_store_memory=object_store_bytes,
        include_dashboard=False,
        log_to_driver=False,
        namespace="ray_export",
        _temp_dir=temp_dir,
    )


def timeline_events(since_s: float, until_s: float) -> list[dict] | None:
    """Ray's task timeline events (complete events) that started within the window; None if unavailable."""
    import ray

    try:
        events = ray.timeline()
    except Exception:
        return None
    lo, hi = since_s * 1e6, until_s * 1e6
    return [e for e in events if e.get("ph") == "X" and lo <= float(e.get("ts", 0)) <= hi]


def summarize_timeline(
    events: list[dict] | None, wall_s: float, cpus: int
) -> tuple[float | None, float | None, dict[str, dict[str, float]]]:
    """(writer busy fraction, data-task CPU busy fraction, per task kind {tasks, busy_s}) from timeline events.

    A task kind is the event category without ``task::``: an operator name such as
    ``ReadProjectImages->MapBatches(copy_stage)`` (fused operators are joined by ``->``) or ``Actor.method``.
    """
    if events is None:
        return None, None, {}
    operators: dict[str, dict[str, float]] = {}
    for event in events:
        category = str(event.get("cat", ""))
        if not category.startswith("task::"):
            continue
        entry = operators.setdefault(category[len("task::"):], {"tasks": 0, "busy_s": 0.0})
        entry["tasks"] += 1
        entry["busy_s"] += float(event.get("dur", 0.0)) / 1e6
    writer = sum(v["busy_s"] for k, v in operators.items() if k.startswith("ZipWriterActor."))
    data = sum(v["busy_s"] for k, v in operators.items() if "MapBatches(" in k or k.startswith("Read"))
    if wall_s <= 0:
        return None, None, operators
    return writer / wall_s, data / (wall_s * cpus), operators


def run_plan(
    name: str,
    stages: dict[str, dict[str, Any]],
    demo: Any,
    outdir: Path,
    repeat: int,
    cpus: int,
    baseline: OneProcessResult,
    n_images: int,
    expected_zip: Path,
    log: Callable[[str], None],
) -> PlanResult:
    """Warm-up export, then ``repeat`` measured exports of one hint plan."""
    from ray_export.api import export

    output = outdir / f"pipeline-{name}.zip"
    options_values = export_options(demo.db_path, demo.project_id, output, stages)
    started = time.perf_counter()
    export(options_values)
    warmup = time.perf_counter() - started
    log(f"  {name}: warm-up {warmup:.2f} s")
    runs: list[dict[str, Any]] = []
    identical = True
    differences: list[str] = []
    for run in range(repeat):
        time.sleep(1.0)  # let the last export's writer exit before the idle sample
        idle = summed_pss(os.getpid())[0]
        sampler = PssSampler(os.getpid())
        sampler.start()
        wall_start = time.time()
        started = time.perf_counter()
        result = export(options_values)
        elapsed = time.perf_counter() - started
        wall_end = time.time()
        sampler.stop()
        writer, cpu_busy, operators = summarize_timeline(timeline_events(wall_start, wall_end), elapsed, cpus)
        runs.append({"seconds": elapsed, "idle": idle, "peak": sampler.peak, "processes": sampler.peak_processes,
                     "writer": writer, "cpu_busy": cpu_busy, "operators": operators,
                     "cpu_seconds": sampler.cpu_seconds, "foreign": sampler.foreign_cpu_fraction,
                     "cpu_by_role": sampler.cpu_by_role, "timings": dict(result.timings)})
        same = sha256_file(output) == baseline.zip_sha256
        if not same and identical:
            differences = zip_differences(expected_zip, output)
            kept = outdir / f"pipeline-{name}-mismatch.zip"
            os.replace(output, kept)
            differences.insert(0, f"kept as {kept}")
        output.unlink(missing_ok=True)
        identical = identical and same
        log(f"  {name}: run {run + 1}: {elapsed:.2f} s, CPU {sampler.cpu_seconds:.1f} s, "
            f"peak PSS {sampler.peak / 2**20:.0f} MiB, other load {sampler.foreign_cpu_fraction:.0%}, "
            f"ZIP {'OK' if same else 'MISMATCH'}")
    best_run = min(runs, key=lambda r: r["seconds"])
    best = best_run["seconds"]
    return PlanResult(
        plan=name,
        stages=stages,
        warmup_seconds=warmup,
        run_seconds=[r["seconds"] for r in runs],
        best_seconds=best,
        median_seconds=statistics.median(r["seconds"] for r in runs),
        images_per_s=n_images / best,
        speedup=baseline.seconds / best,
        efficiency=baseline.seconds / (best * cpus),
        cpu_seconds=best_run["cpu_seconds"],
        cpu_ratio=best_run["cpu_seconds"] / baseline.cpu_seconds if baseline.cpu_seconds > 0 else 0.0,
        foreign_cpu_fraction=best_run["foreign"],
        cpu_by_role=best_run["cpu_by_role"],
        idle_pss_bytes=max(r["idle"] for r in runs),
        peak_pss_bytes=max(r["peak"] for r in runs),
        peak_processes=max(r["processes"] for r in runs),
        writer_busy_fraction=best_run["writer"],
        data_cpu_busy_fraction=best_run["cpu_busy"],
        operators=best_run["operators"],
        zip_identical=identical,
        zip_differences=differences,
        timings=best_run["timings"],
    )


# ------------------------------------------------------------------------------------- export service


def start_service(demo: Any, exports_root: Path, address: str, log_file: Path) -> tuple[subprocess.Popen, str]:
    """``ray-export serve`` in a subprocess attached to ``address`` (the benchmark's Ray), exporting the demo
    into ``exports_root``; returns the process and its URL (the first line it prints)."""
    exports_root.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "ray_export", "serve", "--address", address, "--exports-root", str(exports_root),
               "--db", str(demo.db_path), "--port", "0"]  # fmt: skip
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    url = (proc.stdout.readline() if proc.stdout else "").strip()
    if not url.startswith("http"):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"ray-export serve did not start: {log_file.read_text(errors='replace')[-500:]}")
    return proc, url


def stop_service(proc: subprocess.Popen) -> None:
    """SIGTERM (the service cancels what runs and exits), then SIGKILL after 60 s."""
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def timed_service_export(client: Any, values: dict) -> tuple[float, dict]:
    """Wall seconds from submitting an export to the service until its status says it ended, and that status."""
    started = time.perf_counter()
    export_id = client.submit(values)["id"]
    status = client.status(export_id)
    while status["state"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.05)
        status = client.status(export_id)
    elapsed = time.perf_counter() - started
    if status["state"] != "succeeded":
        raise RuntimeError(f"export through the service {status['state']}: {status.get('error')}")
    return elapsed, status


def run_service_benchmark(url: str | None, demo: Any, outdir: Path, baseline: OneProcessResult,
                          warm_pipeline_s: float | None, cpus: int, log: Callable[[str], None]) -> dict:  # fmt: skip
    """The demo exported twice through an export service (``url``, or one started on the benchmark's Ray),
    then re-exported with ``--reuse`` of the second ZIP with nothing changed: wall times as a client sees
    them (submit -> ended), against the warm pipeline and the one-process time."""
    import ray

    from ray_export.service.client import client_for

    proc = None
    if url is None:
        proc, url = start_service(demo, outdir / "service", ray.get_runtime_context().gcs_address,
                                  outdir / "service.log")  # fmt: skip
        log(f"export service: {url} (log: {outdir / 'service.log'})")
    try:
        client = client_for(url)
        full = {"db": str(demo.db_path), "project": demo.project_id, "output": "bench-service.zip", "force": True}
        first_s, _ = timed_service_export(client, full)
        log(f"  service: first export {first_s:.2f} s")
        second_s, status = timed_service_export(client, full)
        log(f"  service: second export {second_s:.2f} s")
        output = Path(status["output"])
        identical = output.exists() and sha256_file(output) == baseline.zip_sha256
        reuse_values = {**full, "output": "bench-service-reuse.zip", "reuse": "bench-service.zip"}
        reuse_s, reuse_status = timed_service_export(client, reuse_values)
        log(f"  service: --reuse re-export {reuse_s:.2f} s")
        reuse_output = Path(reuse_status["output"])
        reuse_identical = reuse_output.exists() and sha256_file(reuse_output) == baseline.zip_sha256
        for finished in (status, reuse_status):  # the ZIPs are not kept
            client.cancel(finished["export_id"])
    finally:
        if proc is not None:
            stop_service(proc)
    return {
        "url": url,
        "first_seconds": first_s,
        "second_seconds": second_s,
        "warm_pipeline_seconds": warm_pipeline_s,
        "one_process_seconds": baseline.seconds,
        "target_seconds": baseline.seconds / (cpus * 0.9) + 0.5,
        "reuse_seconds": reuse_s,
        "reuse_ratio": second_s / reuse_s if reuse_s > 0 else None,
        "reuse": (reuse_status.get("result") or {}).get("reuse"),
        "zip_identical": identical,
        "reuse_zip_identical": reuse_identical,
    }


def format_service(service: dict) -> list[str]:
    """The service's lines of the report."""
    warm = service["warm_pipeline_seconds"]
    target = service["target_seconds"]
    ratio = service["reuse_ratio"]
    return [
        f"export service ({service['url']}), wall time from submit to ended, as a client sees it:",
        f"  second export {service['second_seconds']:.2f} s (first {service['first_seconds']:.2f} s); "
        f"warm pipeline {warm:.2f} s; one process {service['one_process_seconds']:.2f} s"
        if warm is not None else
        f"  second export {service['second_seconds']:.2f} s (first {service['first_seconds']:.2f} s); "
        f"one process {service['one_process_seconds']:.2f} s",
        f"  target one-process / (CPUs x 0.9) + 0.5 s = {target:.2f} s: "
        f"{'met' if service['second_seconds'] <= target else 'NOT met'}",
        f"  --reuse with nothing changed: {service['reuse_seconds']:.2f} s, "
        f"{ratio:.1f}x faster than the full export through the service (goal >= 10x)" if ratio else "",
        f"  ZIPs identical to the one-process ZIP: full {'yes' if service['zip_identical'] else 'NO'}, "
        f"reuse {'yes' if service['reuse_zip_identical'] else 'NO'}",
    ]  # fmt: skip


def writer_busy(events: list[dict] | None, wall_s: float) -> list[float]:
    """Each ZIP writer actor's busy fraction (its tasks' time over the wall time), from timeline events:
    one worker (``tid``) per writer, in decreasing order."""
    if events is None or wall_s <= 0:
        return []
    busy: dict[str, float] = {}
    for event in events:
        category = str(event.get("cat", ""))
        if category.startswith(("task::ZipWriterActor.", "task::SegmentWriterActor.")):
            worker = str(event.get("tid", ""))
            busy[worker] = busy.get(worker, 0.0) + float(event.get("dur", 0.0)) / 1e6
    return sorted((seconds / wall_s for seconds in busy.values()), reverse=True)


def run_writer_counts(counts: list[int], demo: Any, outdir: Path, repeat: int, baseline: OneProcessResult,
                      n_images: int, log: Callable[[str], None]) -> list[dict[str, Any]]:  # fmt: skip
    """The default plan once per writer count (``--writers``): a warm-up, then ``repeat`` measured exports;
    images/s of the best and each writer's busy fraction in it, and whether every ZIP was the reference."""
    from ray_export.api import export

    results = []
    for count in counts:
        output = outdir / f"writers-{count}.zip"
        options_values = {**export_options(demo.db_path, demo.project_id, output, PLANS["default"]), "writers": count}
        export(options_values)
        runs = []
        for _ in range(repeat):
            time.sleep(1.0)  # let the last export's writers exit
            wall_start = time.time()
            started = time.perf_counter()
            export(options_values)
            elapsed = time.perf_counter() - started
            busy = writer_busy(timeline_events(wall_start, time.time()), elapsed)
            same = sha256_file(output) == baseline.zip_sha256
            runs.append({"seconds": elapsed, "writer_busy": busy, "zip_identical": same})
            output.unlink(missing_ok=True)
        best = min(runs, key=lambda r: r["seconds"])
        results.append({
            "writers": count, "best_seconds": best["seconds"], "images_per_s": n_images / best["seconds"],
            "run_seconds": [r["seconds"] for r in runs], "writer_busy": best["writer_busy"],
            "zip_identical": all(r["zip_identical"] for r in runs),
        })  # fmt: skip
        log(f"  writers {count}: best {best['seconds']:.2f} s ({n_images / best['seconds']:.1f} images/s), writers "
            f"busy {', '.join(f'{b:.2f}' for b in best['writer_busy'])}")
    return results


def format_writer_counts(results: list[dict[str, Any]]) -> list[str]:
    """The ``--writers`` table: images/s per writer count and each writer's busy fraction."""
    lines = ["writers (default plan): images/s per writer count, each writer's busy fraction (timeline)"]
    for row in results:
        busy = ", ".join(f"{b:.2f}" for b in row["writer_busy"]) or "n/a"
        same = "OK" if row["zip_identical"] else "MISMATCH"
        lines.append(f"  {row['writers']:>2} writer(s): {row['best_seconds']:7.2f} s  "
                     f"{row['images_per_s']:7.1f} images/s  busy {busy}  ZIP {same}")
    return lines


# --------------------------------------------------------------------------------------------- report


def _mib(value: int) -> str:
    return f"{value / 2**20:,.0f}"


def run_cold(demo: Any, outdir: Path, runs: int, baseline: OneProcessResult, expected_zip: Path,
             log: Callable[[str], None]) -> dict:  # fmt: skip
    """Time ``runs`` exports through the CLI in a fresh process each (which starts its own local Ray)."""
    output = outdir / "cold.zip"
    command = [sys.executable, "-m", "ray_export", "export", "--db", str(demo.db_path), "--project",
               demo.project_id, "--out", str(output), "--force", "--quiet"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    seconds: list[float] = []
    timings: list[dict[str, float]] = []
    identical = True
    for run in range(runs):
        log_file = outdir / f"cold-{run}.log"
        log_file.unlink(missing_ok=True)
        env["RAY_EXPORT_LOG"] = str(log_file)
        launched = time.time()
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        seconds.append(time.perf_counter() - started)
        ended = launched + seconds[-1]
        if done.returncode != 0:
            raise RuntimeError(f"cold export failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        identical = identical and sha256_file(output) == sha256_file(expected_zip)
        timings.append(cold_timings(log_file, launched, ended))
        log(f"cold CLI run: {seconds[-1]:.2f} s")
    best = min(seconds)
    return {
        "seconds": [round(s, 3) for s in seconds],
        "timings": timings[seconds.index(best)],
        "best_seconds": best,
        "median_seconds": statistics.median(seconds),
        "speedup": baseline.seconds / best,
        "cpus": os.cpu_count(),
        "zip_identical": identical,
    }


#: The floor no Ray job goes below: a fresh interpreter that imports Ray, starts a local Ray, runs two
#: trivial tasks and shuts it down (SPEC 8). It prints its own phases as JSON on its last line.
BARE_RAY_SCRIPT = """
import json, sys, time
launched = float(sys.argv[1]); cpus = int(sys.argv[2]); dashboard = sys.argv[3] == "1"
t0 = time.time()
import ray
t1 = time.time()
kwargs = {} if dashboard else {"include_dashboard": False}
ray.init(num_cpus=cpus, **kwargs)
t2 = time.time()
@ray.remote
def trivial(x):
    return x
assert ray.get([trivial.remote(1), trivial.remote(2)]) == [1, 2]
t3 = time.time()
ray.shutdown()
t4 = time.time()
print(json.dumps({"interpreter": t0 - launched, "import_ray": t1 - t0, "init": t2 - t1, "tasks": t3 - t2,
                  "shutdown": t4 - t3}))
"""


def bare_ray_seconds(runs: int, cpus: int, dashboard: bool = True) -> dict[str, Any]:
    """Wall time of :data:`BARE_RAY_SCRIPT` run ``runs`` times, each in a fresh process (best and median, and
    the phases of the best run). ``dashboard``: plain ``ray.init()`` as SPEC states it; False: without the
    dashboard, as the CLI starts a local Ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    seconds: list[float] = []
    phases: list[dict[str, float]] = []
    for _ in range(max(1, runs)):
        launched = time.time()
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", BARE_RAY_SCRIPT, repr(launched), str(cpus), "1" if dashboard else "0"],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        seconds.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"bare Ray script failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        phases.append({k: round(v, 3) for k, v in json.loads(lines[-1]).items()} if lines else {})
    best = min(seconds)
    return {
        "seconds": [round(s, 3) for s in seconds],
        "best_seconds": best,
        "median_seconds": statistics.median(seconds),
        "phases": phases[seconds.index(best)],
        "dashboard": dashboard,
    }


def cold_target(bare_ray_s: float, one_process_s: float, cpus: int) -> float:
    """SPEC 8's cold target: bare Ray + one-process time / (CPUs x 0.9) + 1 s."""
    return bare_ray_s + one_process_s / (cpus * 0.9) + 1.0


_FIXED_COST_LOG = re.compile(r"fixed cost \(s from its start at ([0-9.]+)\): (\{.*\})")


def cold_timings(log_file: Path, launched: float, ended: float) -> dict[str, float]:
    """The fixed cost of one CLI export, read from its log (``RAY_EXPORT_LOG``): the export's milestones, and
    ``process_start`` (interpreter and imports, launch -> the export's start) and ``after_commit`` (ZIP
    committed -> the process ended: the summary and Ray's shutdown). Empty when the log has no such line."""
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    found = _FIXED_COST_LOG.search(text)
    if not found:
        return {}
    export_start = float(found.group(1))
    out: dict[str, float] = {"process_start": round(max(0.0, export_start - launched), 4)}
    out.update(ast.literal_eval(found.group(2)))
    if "committed" in out:
        out["after_commit"] = round(max(0.0, ended - export_start - out["committed"]), 4)
    return out


#: Rows of the fixed-cost table: (timings key, label).
FIXED_COST_ROWS = (
    ("process_start", "process start (interpreter, imports)"),
    ("ray_ready", "start -> Ray ready"),
    ("progress_ready", "start -> progress actor ready"),
    ("plan_ready", "start -> plan ready (light query)"),
    ("writer_ready", "start -> writer actor ready"),
    ("actors_ready", "start -> actors ready"),
    ("first_batch_written", "start -> first batch written"),
    ("last_image_written", "start -> last image written"),
    ("committed", "start -> ZIP committed"),
    ("finishing", "finishing (last image -> committed)"),
    ("after_commit", "after commit (summary, Ray shutdown)"),
)


def format_fixed_cost(report: dict) -> list[str]:
    """The fixed-cost table: one row per milestone, one column for the best cold run and one per plan's
    best warm run (empty when no run recorded its timings)."""
    columns: list[tuple[str, dict[str, float]]] = []
    cold = report.get("cold")
    if cold and cold.get("timings"):
        columns.append(("cold CLI", cold["timings"]))
    columns += [(f"warm {p['plan']}", p["timings"]) for p in report["plans"] if p.get("timings")]
    if not columns:
        return []
    width = max(12, *(len(name) for name, _ in columns))
    lines = [
        "fixed cost (s from the export's start; warm = Ray already running, the export's own actors new):",
        f"{'phase':<40}" + "".join(f" {name:>{width}}" for name, _ in columns),
    ]
    for key, label in FIXED_COST_ROWS:
        if not any(key in timings for _, timings in columns):
            continue
        cells = "".join(
            f" {timings[key]:>{width}.2f}" if key in timings else f" {'-':>{width}}" for _, timings in columns
        )
        lines.append(f"{label:<40}{cells}")
    return [*lines, ""]


def format_bare_ray(report: dict) -> list[str]:
    """The bare-Ray floor and the cold target measured against it (SPEC 8)."""
    bare, cold = report.get("bare_ray"), report.get("cold")
    if not bare or not cold:
        return []
    lines = []
    for key, label in (("plain", "ray.init()"), ("no_dashboard", "ray.init(include_dashboard=False), as the CLI")):
        b = bare[key]
        phases = ", ".join(f"{k} {v:.2f}" for k, v in b["phases"].items())
        lines.append(f"bare Ray ({label}, 2 trivial tasks, shutdown): best {b['best_seconds']:.2f} s, "
                     f"median {b['median_seconds']:.2f} s ({phases})")
    floor = bare["plain"]["best_seconds"]
    target = cold_target(floor, report["one_process"]["seconds"], report["cpus"])
    best = cold["best_seconds"]
    verdict = "met" if best <= target else f"missed by {best - target:.2f} s"
    lines.append(
        f"cold target: bare Ray {floor:.2f} + one process {report['one_process']['seconds']:.2f} / "
        f"({report['cpus']} x 0.9) + 1.0 = {target:.2f} s; cold CLI best {best:.2f} s: {verdict}; "
        f"cold - bare Ray = {best - floor:.2f} s"
    )
    return lines


def format_report(report: dict) -> str:
    """The readable table."""
    one = report["one_process"]
    lines = [
        f"ray_export benchmark: {report['images']} images, {report['cpus']} CPUs, "
        f"object store {_mib(report['object_store_bytes'])} MiB (fixed), {report['repeat']} measured run(s) per plan",
        "",
        f"one process: {one['seconds']:.2f} s, CPU {one['cpu_seconds']:.2f} s, {one['images_per_s']:.2f} images/s, "
        f"peak PSS {_mib(one['peak_pss_bytes'])} MiB, other load {one['foreign_cpu_fraction']:.0%}, "
        f"ZIP {one['zip_bytes'] / 2**20:.1f} MiB",
        "  stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in one["stage_seconds"].items()),
        "",
    ]
    cold = report.get("cold")
    if cold:
        lines += [
            f"cold CLI (`ray-export export`, Ray start included, {cold['cpus']} CPUs of this machine): "
            f"best {cold['best_seconds']:.2f} s, median {cold['median_seconds']:.2f} s over {len(cold['seconds'])} "
            f"run(s), {cold['speedup']:.2f}x the one-process run, ZIP {'OK' if cold['zip_identical'] else 'MISMATCH'}",
        ]
        lines += format_bare_ray(report)
        lines.append("")
    lines += [
        f"{'plan':<10} {'best s':>7} {'median s':>8} {'img/s':>6} {'speed-up':>8} {'efficiency':>10} "
        f"{'CPU s':>6} {'CPU x':>5} {'idle PSS':>9} {'peak PSS':>9} {'procs':>5} {'writer':>6} {'busy':>5} "
        f"{'other':>5}  ZIP",
    ]
    for p in report["plans"]:
        writer = "n/a" if p["writer_busy_fraction"] is None else f"{p['writer_busy_fraction']:.2f}"
        cpu_busy = "n/a" if p["data_cpu_busy_fraction"] is None else f"{p['data_cpu_busy_fraction']:.2f}"
        lines.append(
            f"{p['plan']:<10} {p['best_seconds']:>7.2f} {p['median_seconds']:>8.2f} {p['images_per_s']:>6.2f} "
            f"{p['speedup']:>7.2f}x {p['efficiency']:>10.2f} {p['cpu_seconds']:>6.1f} {p['cpu_ratio']:>5.2f} "
            f"{_mib(p['idle_pss_bytes']):>5} MiB {_mib(p['peak_pss_bytes']):>5} MiB {p['peak_processes']:>5} "
            f"{writer:>6} {cpu_busy:>5} {p['foreign_cpu_fraction']:>5.0%}  "
            f"{'OK' if p['zip_identical'] else 'MISMATCH'}"
        )
    lines.append("")
    for p in report["plans"]:
        lines.append(
            f"parallel efficiency of '{p['plan']}' at {report['images']} images on {report['cpus']} CPUs "
            f"(warm Ray): {p['efficiency']:.2f}"
        )
    lines.append("")
    lines += format_fixed_cost(report)
    writer_only = report.get("writer_only")
    if writer_only:
        lines += format_writer_only(writer_only)
    lines.append("PSS: summed over the driver and every Ray process; idle = before a run, peak = during it.")
    lines.append("efficiency = one-process time / (pipeline time x CPUs); writer = ZipWriterActor busy / wall time;")
    lines.append("busy = time in read/map tasks / (wall time x CPUs); CPU s = CPU time of the driver and all Ray")
    lines.append("processes, CPU x = that / one-process CPU time; other = machine CPU used by other processes.")
    lines.append("Columns after median s are figures of the best run.")
    loaded = [one["foreign_cpu_fraction"]] + [p["foreign_cpu_fraction"] for p in report["plans"]]
    if max(loaded) > 0.1:
        lines.append(f"WARNING: other processes used up to {max(loaded):.0%} of the machine during the runs; "
                     "wall-clock figures are unreliable, compare CPU s instead.")
    for p in report["plans"]:
        roles = ", ".join(f"{role} {value:.1f}" for role, value in p["cpu_by_role"].items())
        lines.append(f"CPU seconds of the best '{p['plan']}' run by process: {roles}")
        if p["operators"]:
            lines.append(f"tasks of the best '{p['plan']}' run (count, busy s):")
            for op_name, entry in sorted(p["operators"].items(), key=lambda kv: -kv[1]["busy_s"]):
                lines.append(f"  {int(entry['tasks']):>4} {entry['busy_s']:>7.2f}  {op_name}")
        for difference in p["zip_differences"]:
            lines.append(f"  MISMATCH {p['plan']}: {difference}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120, help="demo images (default 120)")
    parser.add_argument("--workdir", type=Path, default=Path(".bench"), help="demo project and outputs (./.bench)")
    parser.add_argument("--seed", type=int, default=0, help="demo seed (default 0)")
    parser.add_argument("--size", default=None, metavar="WxH",
                        help="give every demo image this size, e.g. 1280x960 (default: a mix of camera sizes)")
    parser.add_argument("--cold", type=int, default=0, metavar="N",
                        help="also time N cold runs of the CLI as a user runs it (a new Ray started each time)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    parser.add_argument(
        "--plans", default="default,fused", help=f"comma-separated hint plans of {', '.join(PLANS)} (default,fused)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="measured runs per plan after a warm-up (default 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per batch in the one-process run (32)")
    parser.add_argument("--object-store-mb", type=int, default=1024, help="fixed object store size (1024 MiB)")
    parser.add_argument(
        "--writer-only", action="store_true",
        help="measure only how many images/s one writer absorbs when the stages are free (no Ray): the stage "
             "results are computed once, stored under the workdir, and fed to the writer --repeat times",
    )  # fmt: skip
    parser.add_argument(
        "--service", nargs="?", const="start", default=None, metavar="URL",
        help="also export through an export service twice and once with --reuse: the service at URL (its --db must "
             "include the demo's), or without URL one started on the benchmark's Ray",
    )  # fmt: skip
    parser.add_argument(
        "--writers", default=None, metavar="LIST",
        help="also run the default plan once per writer count (e.g. 1,2): images/s and each writer's busy fraction",
    )
    parser.add_argument(
        "--no-visualizations", action="store_true",
        help="leave the visualizations out of every export of the run (cheap stages, to load the writers)",
    )
    parser.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="PATH",
        help="also write the results as JSON to PATH; without PATH, print only JSON to stdout",
    )
    args = parser.parse_args(argv)
    plans = [p.strip() for p in args.plans.split(",") if p.strip()]
    unknown = [p for p in plans if p not in PLANS]
    if unknown or not plans:
        parser.error(f"unknown plan(s) {unknown}; known: {', '.join(PLANS)}")
    if args.images < 1 or args.cpus < 1 or args.repeat < 1 or args.batch_size < 1:
        parser.error("--images, --cpus, --repeat and --batch-size must be positive")
    args.plans = plans
    if args.size is not None:
        try:
            width, height = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            parser.error(f"--size must be WIDTHxHEIGHT, not {args.size!r}")
        args.size = (width, height)
    if args.cold < 0:
        parser.error("--cold must be 0 or more")
    if args.writer_only and args.cold:
        parser.error("--writer-only measures the writer alone; leave out --cold")
    if args.writers is not None:
        try:
            args.writers = [int(v) for v in args.writers.split(",") if v.strip()]
        except ValueError:
            parser.error(f"--writers must be a comma list of writer counts, not {args.writers!r}")
        if not args.writers or min(args.writers) < 1:
            parser.error("--writers must list writer counts of 1 or more")
    if args.no_visualizations and args.cold:
        parser.error("--no-visualizations applies to the exports in this process; leave out --cold")
    return args


def writer_only_main(args: argparse.Namespace, demo: Any, workdir: Path, outdir: Path, json_only: bool,
                     log: Callable[[str], None]) -> int:  # fmt: skip
    """``--writer-only``: store the stage results once, then time one writer fed them."""
    results = workdir / f"results-{demo.db_path.parent.name}-b{args.batch_size}"
    output = outdir / "writer-only.zip"
    options_values = export_options(demo.db_path, demo.project_id, output)
    started = time.perf_counter()
    batches = precompute_results(options_values, args.batch_size, results)
    log(f"stage results: {batches} batches in {results} ({time.perf_counter() - started:.1f} s)")
    result = run_writer_only(options_values, results, args.repeat, log)
    output.unlink(missing_ok=True)
    report = {"images": result["images"], "writer_only": result}
    if json_only:
        print(json.dumps(report, indent=2))
    else:
        print()
        print("\n".join(format_writer_only(result)).rstrip())
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_only = args.json == "-"

    def log(message: str) -> None:
        print(message, file=sys.stderr if json_only else sys.stdout, flush=True)

    from ray_export.demo import build_demo_project

    if args.no_visualizations:
        CONTENT_OPTIONS["visualizations"] = False
    workdir = args.workdir.expanduser().resolve()
    started = time.perf_counter()
    size_tag = f"-{args.size[0]}x{args.size[1]}" if args.size else ""
    demo = build_demo_project(
        workdir / f"demo-{args.images}-{args.seed}{size_tag}", n_images=args.images, seed=args.seed, size=args.size
    )
    log(f"demo project: {demo.db_path} ({time.perf_counter() - started:.1f} s)")
    outdir = workdir / "out"
    outdir.mkdir(parents=True, exist_ok=True)
    if args.writer_only:
        return writer_only_main(args, demo, workdir, outdir, json_only, log)

    expected_zip = outdir / "one-process.zip"
    sampler = PssSampler(os.getpid())
    sampler.start()
    seconds, _cpu, stage_seconds = run_one_process(
        export_options(demo.db_path, demo.project_id, expected_zip), args.batch_size
    )
    sampler.stop()
    with zipfile.ZipFile(expected_zip) as zf:
        n_images = sum(1 for name in zf.namelist() if name.startswith("labels/"))
    n_images = n_images or args.images
    baseline = OneProcessResult(
        seconds=seconds,
        cpu_seconds=sampler.cpu_seconds,
        foreign_cpu_fraction=sampler.foreign_cpu_fraction,
        images_per_s=n_images / seconds,
        peak_pss_bytes=sampler.peak,
        stage_seconds={k: round(v, 4) for k, v in stage_seconds.items()},
        zip_sha256=sha256_file(expected_zip),
        zip_bytes=expected_zip.stat().st_size,
    )
    log(f"one process: {seconds:.2f} s, CPU {baseline.cpu_seconds:.1f} s ({baseline.images_per_s:.2f} images/s), "
        f"other load {baseline.foreign_cpu_fraction:.0%}")

    bare = None
    if args.cold:
        bare = {
            "plain": bare_ray_seconds(args.cold, args.cpus),
            "no_dashboard": bare_ray_seconds(args.cold, args.cpus, dashboard=False),
        }
        log(f"bare Ray: best {bare['plain']['best_seconds']:.2f} s (ray.init()), "
            f"{bare['no_dashboard']['best_seconds']:.2f} s (no dashboard)")
    cold = run_cold(demo, outdir, args.cold, baseline, expected_zip, log) if args.cold else None

    object_store_bytes = args.object_store_mb * 2**20
    temp_dir = tempfile.mkdtemp(prefix="rxb-", dir="/tmp")
    start_ray(args.cpus, object_store_bytes, temp_dir)
    import ray

    results: list[PlanResult] = []
    try:
        for name in args.plans:
            results.append(
                run_plan(name, PLANS[name], demo, outdir, args.repeat, args.cpus, baseline, n_images,
                         expected_zip, log)
            )
        writer_counts = None
        if args.writers:
            writer_counts = run_writer_counts(args.writers, demo, outdir, args.repeat, baseline, n_images, log)
        service = None
        if args.service is not None:
            warm = results[0].best_seconds if results else None
            url = None if args.service == "start" else args.service
            service = run_service_benchmark(url, demo, outdir, baseline, warm, args.cpus, log)
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    report = {
        "images": n_images,
        "cpus": args.cpus,
        "repeat": args.repeat,
        "object_store_bytes": object_store_bytes,
        "ray_version": ray.__version__,
        "one_process": asdict(baseline),
        "cold": cold,
        "bare_ray": bare,
        "plans": [asdict(r) for r in results],
        "writers": writer_counts,
        "service": service,
    }
    if json_only:
        print(json.dumps(report, indent=2))
    else:
        print()
        print(format_report(report))
        if writer_counts:
            print("\n".join(["", *format_writer_counts(writer_counts)]))
        if service is not None:
            print("\n".join(line for line in format_service(service) if line))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if writer_counts and not all(row["zip_identical"] for row in writer_counts):
        return 1
    cold_ok = cold is None or cold["zip_identical"]
    service_ok = service is None or (service["zip_identical"] and service["reuse_zip_identical"])
    return 0 if cold_ok and service_ok and all(r.zip_identical for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
