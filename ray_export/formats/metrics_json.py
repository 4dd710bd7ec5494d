"""``metrics/metrics.json``: ``{"scale_um_per_px", "units", "rows": [...]}``, one row per line."""

from __future__ import annotations

import json
from typing import Any, BinaryIO

from ..metrics import INTEGER_METRICS, METRIC_COLUMNS, metric_units
from .metrics_files import metric_float, metric_int, metrics_file_format, scale_value


class MetricsJsonWriter:
    """``metrics.json``: ``{"scale_um_per_px", "units", "rows": [...]}``, one row per line, null when undefined."""

    def __init__(self, fileobj: BinaryIO, scaled: bool, scale_um_per_px: float | None) -> None:
        self._file = fileobj
        head = (
            '{"scale_um_per_px": '
            + json.dumps(scale_value(scale_um_per_px), allow_nan=False)
            + ', "units": '
            + json.dumps(metric_units(scaled), allow_nan=False)
            + ', "rows": ['
        )
        self._file.write(head.encode("utf-8"))
        self._count = 0

    def write_rows(self, rows: list[dict]) -> None:
        """Append rows."""
        parts: list[str] = []
        for row in rows:
            record: dict[str, Any] = {
                "image_id": str(row["image_id"]),
                "image_name": str(row["image_name"]),
                "number": int(row["number"]),
            }
            for name in METRIC_COLUMNS:
                if name in INTEGER_METRICS:
                    record[name] = metric_int(row.get(name))
                else:
                    record[name] = metric_float(row.get(name))
            sep = ",\n" if self._count else "\n"
            parts.append(sep + json.dumps(record, ensure_ascii=False, allow_nan=False))
            self._count += 1
        if parts:
            self._file.write("".join(parts).encode("utf-8"))

    def close(self) -> None:
        """Close the JSON document (the file object stays open)."""
        self._file.write(("\n]}\n" if self._count else "]}\n").encode("utf-8"))
        self._file.flush()

    def abort(self) -> None:
        """Give up without finishing the file (nothing to clean up)."""


FORMAT = metrics_file_format(
    "json",
    lambda fh, ctx: MetricsJsonWriter(fh, ctx.scale_um_per_px is not None, ctx.scale_um_per_px),
    "metrics rows with a `units` object",
    lambda member: ["import json", f'json_metrics = json.load(open("{member}", encoding="utf-8"))'],
    readme_order=30.4,
    option_rank=2,
)
