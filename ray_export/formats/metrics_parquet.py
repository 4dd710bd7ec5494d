"""``metrics/metrics.parquet``: fixed schema, fixed row groups, units in the schema metadata."""

from __future__ import annotations

import contextlib
import json
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from ..metrics import INTEGER_METRICS, METRIC_COLUMNS, metric_units
from .metrics_files import ALL_COLUMNS, metric_float, metric_int, metrics_file_format, scale_value

#: Rows per Parquet row group (fixed, so the file does not depend on how rows arrive).
PARQUET_ROW_GROUP_ROWS = 32_768


def metrics_parquet_schema(scaled: bool, scale_um_per_px: float | None) -> pa.Schema:
    """Fixed Parquet schema: keys, nullable float64 metrics, int32 ``number``/``holes``; units in metadata."""
    fields = [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_name", pa.string(), nullable=False),
        pa.field("number", pa.int32(), nullable=False),
    ]
    for name in METRIC_COLUMNS:
        fields.append(pa.field(name, pa.int32() if name in INTEGER_METRICS else pa.float64(), nullable=True))
    metadata = {
        b"units": json.dumps(metric_units(scaled)).encode("utf-8"),
        b"scale_um_per_px": json.dumps(scale_value(scale_um_per_px)).encode("utf-8"),
    }
    return pa.schema(fields, metadata=metadata)


class MetricsParquetWriter:
    """``metrics.parquet``: fixed schema, row groups of ``row_group_rows`` rows (the last one shorter)."""

    def __init__(
        self,
        fileobj: BinaryIO,
        scaled: bool,
        scale_um_per_px: float | None,
        row_group_rows: int = PARQUET_ROW_GROUP_ROWS,
    ) -> None:
        self._schema = metrics_parquet_schema(scaled, scale_um_per_px)
        self._writer = pq.ParquetWriter(fileobj, self._schema, compression="zstd", write_statistics=True)
        self._row_group_rows = int(row_group_rows)
        self._columns: dict[str, list] = {name: [] for name in ALL_COLUMNS}
        self._buffered = 0

    def write_rows(self, rows: list[dict]) -> None:
        """Append rows; full row groups are written as soon as they are complete."""
        for row in rows:
            self._columns["image_id"].append(str(row["image_id"]))
            self._columns["image_name"].append(str(row["image_name"]))
            self._columns["number"].append(int(row["number"]))
            for name in METRIC_COLUMNS:
                if name in INTEGER_METRICS:
                    self._columns[name].append(metric_int(row.get(name)))
                else:
                    self._columns[name].append(metric_float(row.get(name)))
            self._buffered += 1
            if self._buffered >= self._row_group_rows:
                self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        arrays = [pa.array(self._columns[f.name], type=f.type) for f in self._schema]
        table = pa.Table.from_arrays(arrays, schema=self._schema)
        self._writer.write_table(table, row_group_size=self._buffered)
        self._columns = {name: [] for name in ALL_COLUMNS}
        self._buffered = 0

    def close(self) -> None:
        """Write the last row group and the footer (the file object stays open)."""
        self._flush()
        self._writer.close()

    def abort(self) -> None:
        """Give up without writing the buffered rows; the file is left incomplete."""
        self._columns = {name: [] for name in ALL_COLUMNS}
        self._buffered = 0
        with contextlib.suppress(Exception):
            self._writer.close()


FORMAT = metrics_file_format(
    "parquet",
    lambda fh, ctx: MetricsParquetWriter(fh, ctx.scale_um_per_px is not None, ctx.scale_um_per_px),
    "metrics table, units in the schema metadata",
    lambda member: [
        f'parquet_table = pd.read_parquet("{member}")',
        "import pyarrow.parquet as pq",
        f'schema_metadata = pq.read_schema("{member}").metadata  # units',
    ],
    readme_order=30.3,
    option_rank=3,
)
