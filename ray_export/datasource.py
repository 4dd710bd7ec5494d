"""A parallel, ordered Ray Data source over the projected image query.

The driver knows the selected images in export order (the light listing). Each read task fetches one
contiguous index range by id with :func:`~ray_export.sources.fetch_image_rows` and returns one Arrow
table sorted by index, so the downstream writer can restore the global order with a bounded buffer.
Read tasks carry only the :class:`~ray_export.sources.DbTarget` (no live connection); SQLite is opened
read-only and its reads run on the driver's node only.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import ray
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from .options import DEFAULT_DB_RETRY_S
from .problems import PROBLEMS_TYPE
from .sources import (
    INT_COLUMNS,
    POSTGRES,
    SQLITE,
    TYPE_READ_EXPRESSIONS,
    DbTarget,
    SourceError,
    connect,
    fetch_image_rows,
    map_db_error,
)

DEFAULT_ROWS_PER_TASK = 32
#: Backoff between reconnection attempts of a read task: doubling from the first delay up to the last.
RETRY_FIRST_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 8.0

#: Columns every block has, in this order (pass-through fields follow ``image_id``).
FETCHED_FIELDS: list[tuple[str, pa.DataType]] = [
    ("original_path", pa.string()),
    ("db_width", pa.int64()),
    ("db_height", pa.int64()),
    ("seg_width", pa.int64()),
    ("seg_height", pa.int64()),
    ("polygons", pa.string()),
    # the read's own problems (text_invalid_utf8); the stages append theirs
    ("problems", PROBLEMS_TYPE),
]
#: Columns a project type may add to the read (``sources.TYPE_READ_EXPRESSIONS``), after the fetched ones.
TYPE_FIELDS: dict[str, pa.DataType] = {
    name: pa.int64() if name in INT_COLUMNS else pa.string() for name in TYPE_READ_EXPRESSIONS
}
_RESERVED = frozenset({"index", "image_id"} | {name for name, _ in FETCHED_FIELDS} | set(TYPE_FIELDS))

#: read_datasource's named remote arguments (ray 2.60); anything else stays in ``ray_remote_args``.
_NAMED_REMOTE_ARGS = frozenset(
    {"num_cpus", "num_gpus", "memory", "label_selector", "fallback_strategy", "max_calls", "resources",
     "accelerator_type", "runtime_env"}
)


def _passthrough_type(values: list[Any]) -> pa.DataType:
    present = [v for v in values if v is not None]
    if not present:
        return pa.string()
    try:
        inferred = pa.array(present).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return pa.string()
    return pa.string() if pa.types.is_null(inferred) else inferred


def _passthrough_array(values: list[Any], type_: pa.DataType) -> pa.Array:
    if pa.types.is_string(type_):
        return pa.array([None if v is None else v if isinstance(v, str) else str(v) for v in values], type_)
    return pa.array(values, type=type_)


def block_schema(rows: Sequence[dict[str, Any]], extra: Sequence[str] = ()) -> pa.Schema:
    """The fixed schema of every block: index, image_id, pass-through fields, fetched columns, then the
    project type's ``extra`` columns."""
    extra_names: list[str] = []
    for row in rows:
        for key in row:
            if key not in _RESERVED and key not in extra_names:
                extra_names.append(key)
    fields = [pa.field("index", pa.int64(), nullable=False), pa.field("image_id", pa.string(), nullable=False)]
    for name in extra_names:
        fields.append(pa.field(name, _passthrough_type([r.get(name) for r in rows])))
    fields += [pa.field(name, type_) for name, type_ in FETCHED_FIELDS]
    fields += [pa.field(name, TYPE_FIELDS[name]) for name in extra]
    return pa.schema(fields)


def _is_outage(target: DbTarget, exc: SourceError) -> bool:
    """Whether a read failed because the PostgreSQL server could not be reached or dropped the
    connection (worth reconnecting), rather than for a reason a retry cannot change."""
    if target.kind != POSTGRES or exc.exit_code != 1:
        return False
    import psycopg

    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, psycopg.OperationalError)


class _RangeReader:
    """Picklable read function of one read task: fetch the rows of one contiguous index range."""

    def __init__(self, target: DbTarget, rows: list[dict[str, Any]], schema: pa.Schema,
                 need_polygons: bool, need_path: bool, retry_s: float = DEFAULT_DB_RETRY_S,
                 extra: Sequence[str] = ()) -> None:
        self.extra = tuple(extra)
        self.retry_s = float(retry_s)
        self.target = target
        self.rows = rows
        self.schema = schema
        self.need_polygons = need_polygons
        self.need_path = need_path

    def _fetch(self, ids: list[str]) -> list[dict[str, Any]]:
        try:
            conn = connect(self.target)
            try:
                return fetch_image_rows(conn, self.target.kind, ids, self.need_polygons, self.need_path, self.extra)
            finally:
                conn.close()
        except SourceError:
            raise
        except Exception as exc:
            raise map_db_error(self.target, exc, "reading images from") from exc

    def _fetch_with_retry(self, ids: list[str]) -> list[dict[str, Any]]:
        """Fetch the rows, reconnecting with backoff while the database is unreachable (a server restart,
        a network outage), for at most ``retry_s`` seconds."""
        deadline = time.monotonic() + self.retry_s
        delay = RETRY_FIRST_DELAY_S
        attempts = 0
        while True:
            attempts += 1
            try:
                return self._fetch(ids)
            except SourceError as exc:
                if not _is_outage(self.target, exc):
                    raise SourceError(exc.message, exc.exit_code) from None
                if time.monotonic() + delay > deadline:
                    raise SourceError(
                        f"database {self.target.display()} unreachable while reading images ({attempts} "
                        f"attempts in {self.retry_s:g} s, db_retry_s): {exc.message}",
                        exc.exit_code,
                    ) from None
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY_S)

    def __call__(self) -> Iterable[pa.Table]:
        ids = [str(r["image_id"]) for r in self.rows]
        fetched = self._fetch_with_retry(ids)
        by_id = {row["image_id"]: row for row in fetched}
        columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        fetched_names = {"original_path"} if self.need_path else set()
        fetched_names |= {"db_width", "db_height", "seg_width", "seg_height", "problems"}
        if self.need_polygons:
            fetched_names.add("polygons")
        fetched_names.update(self.extra)
        for row in self.rows:
            db_row = by_id.get(str(row["image_id"]))
            for name in self.schema.names:
                if name in fetched_names:
                    value: Any = None if db_row is None else db_row.get(name)
                else:
                    value = row.get(name)
                columns[name].append(value)
        arrays = []
        for field in self.schema:
            values = columns[field.name]
            if field.name in ("index", "image_id") or field.name in dict(FETCHED_FIELDS) or field.name in TYPE_FIELDS:
                arrays.append(pa.array(values, type=field.type))
            else:
                arrays.append(_passthrough_array(values, field.type))
        return [pa.Table.from_arrays(arrays, schema=self.schema)]


class ProjectImagesDatasource(Datasource):
    """Read the selected images' projected columns: one read task per contiguous index range.

    ``rows`` are the driver-side entries in any order, each with at least ``index`` (1-based export
    index) and ``image_id``; all their other fields pass through unchanged. Each block is sorted by
    index and covers a contiguous index range; blocks are numbered in index order.
    """

    def __init__(self, target: DbTarget, rows: Sequence[dict[str, Any]], need_polygons: bool, need_path: bool,
                 rows_per_task: int | Sequence[int] = DEFAULT_ROWS_PER_TASK,
                 retry_s: float = DEFAULT_DB_RETRY_S, extra: Sequence[str] = ()) -> None:
        super().__init__()
        self.extra = tuple(extra)
        self.retry_s = float(retry_s)
        sizes = [rows_per_task] if isinstance(rows_per_task, int) else list(rows_per_task)
        if not sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
            raise ValueError(f"rows_per_task must be a positive integer or a list of them, not {rows_per_task!r}")
        for row in rows:
            if "index" not in row or "image_id" not in row:
                raise ValueError("every row needs 'index' and 'image_id'")
        self.target = target
        self.rows = sorted((dict(r) for r in rows), key=lambda r: int(r["index"]))
        indexes = [int(r["index"]) for r in self.rows]
        if len(set(indexes)) != len(indexes):
            raise ValueError("row indexes must be unique")
        self.need_polygons = bool(need_polygons)
        self.need_path = bool(need_path)
        if isinstance(rows_per_task, int):
            sizes = [rows_per_task] * math.ceil(len(self.rows) / rows_per_task)
        elif sum(sizes) != len(self.rows):
            raise ValueError(f"block sizes add up to {sum(sizes)} rows, not the {len(self.rows)} selected")
        #: rows of each block (each read task), in index order
        self.block_sizes = sizes
        self.rows_per_task = max(sizes)
        self.schema = block_schema(self.rows, self.extra)

    @property
    def supports_distributed_reads(self) -> bool:
        """SQLite files are read on the driver's node only; PostgreSQL reads may run anywhere."""
        return self.target.kind != SQLITE

    def get_name(self) -> str:
        """Name shown in Ray Data's progress and stats."""
        return "ProjectImages"

    def num_read_tasks(self) -> int:
        """One per block (see :attr:`block_sizes`), whatever parallelism is requested."""
        return len(self.block_sizes) if self.rows else 0

    def _row_bytes(self) -> int:
        per_row = 120 + 24 * len(self.schema)
        if self.need_path:
            per_row += 80
        if self.need_polygons:
            per_row += 16_000
        return per_row

    def estimate_inmemory_data_size(self) -> int | None:
        """A rough size: fixed bytes per row plus ~16 kB of polygon JSON when polygons are read."""
        return len(self.rows) * self._row_bytes()

    def range_readers(self) -> list[_RangeReader]:
        """The read function of each contiguous range of rows (:attr:`block_sizes`), in index order."""
        starts = [0, *itertools.accumulate(self.block_sizes)][:-1]
        return [
            _RangeReader(self.target, self.rows[start:start + size], self.schema,
                         self.need_polygons, self.need_path, self.retry_s, self.extra)
            for start, size in zip(starts, self.block_sizes, strict=True)
        ]

    def read_in_process(self) -> Iterator[pa.Table]:
        """The blocks the read tasks produce, read one after the other in this process (no Ray)."""
        for reader in self.range_readers():
            yield from reader()

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        """One task per ``rows_per_task`` consecutive rows (``parallelism`` is not used: ranges stay small)."""
        tasks: list[ReadTask] = []
        for reader in self.range_readers():
            n = len(reader.rows)
            metadata = BlockMetadata(num_rows=n, size_bytes=n * self._row_bytes(), exec_stats=None, input_files=None)
            tasks.append(ReadTask(reader, metadata, schema=self.schema, per_task_row_limit=per_task_row_limit))
        return tasks


def read_project_images(
    target: DbTarget,
    rows: Sequence[dict[str, Any]],
    need_polygons: bool,
    need_path: bool,
    rows_per_task: int | Sequence[int] = DEFAULT_ROWS_PER_TASK,
    ray_remote_args: dict[str, Any] | None = None,
    retry_s: float = DEFAULT_DB_RETRY_S,
    extra: Sequence[str] = (),
) -> ray.data.Dataset:
    """A Dataset of the selected images' rows, one block per contiguous index range.

    ``ray_remote_args`` (``num_cpus``, ``memory``, ``label_selector``, ``resources``, ...) go to the
    read tasks. A SQLite target is pinned to the driver's node automatically (through the datasource's
    ``supports_distributed_reads``, which adds a ``ray.io/node-id`` label selector). Each read task
    keeps reconnecting to an unreachable PostgreSQL server for ``retry_s`` seconds before it fails.
    """
    if target.kind not in (SQLITE, POSTGRES):
        raise ValueError(f"unknown database kind {target.kind!r}")
    datasource = ProjectImagesDatasource(target, rows, need_polygons, need_path, rows_per_task, retry_s, extra)
    if not datasource.rows:
        raise ValueError("no rows to read")
    named = {k: v for k, v in (ray_remote_args or {}).items() if k in _NAMED_REMOTE_ARGS}
    rest = {k: v for k, v in (ray_remote_args or {}).items() if k not in _NAMED_REMOTE_ARGS}
    return ray.data.read_datasource(
        datasource,
        override_num_blocks=datasource.num_read_tasks(),
        ray_remote_args=rest or None,
        **named,
    )

