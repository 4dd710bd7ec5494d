"""``metrics/metrics.csv``: UTF-8, ``\\n`` line ends, units in the header, round-trip floats."""

from __future__ import annotations

import csv
import io
from typing import BinaryIO

from ..metrics import INTEGER_METRICS, METRIC_COLUMNS
from .metrics_files import header_names, metric_float, metric_int, metrics_file_format


class MetricsCsvWriter:
    """``metrics.csv``: UTF-8, ``\\n`` line ends, units in the header, round-trip floats, empty if undefined."""

    def __init__(self, fileobj: BinaryIO, scaled: bool) -> None:
        self._file = fileobj
        self._write_records([header_names(scaled)])

    def _write_records(self, records: list[list[str]]) -> None:
        text = io.StringIO(newline="")
        csv.writer(text, lineterminator="\n").writerows(records)
        self._file.write(text.getvalue().encode("utf-8"))

    def write_rows(self, rows: list[dict]) -> None:
        """Append rows."""
        records: list[list[str]] = []
        for row in rows:
            out: list[str] = [str(row["image_id"]), str(row["image_name"]), str(int(row["number"]))]
            for name in METRIC_COLUMNS:
                if name in INTEGER_METRICS:
                    v = metric_int(row.get(name))
                    out.append("" if v is None else str(v))
                else:
                    f = metric_float(row.get(name))
                    out.append("" if f is None else repr(f))
            records.append(out)
        if records:
            self._write_records(records)

    def close(self) -> None:
        """Flush the file object (left open)."""
        self._file.flush()

    def abort(self) -> None:
        """Give up without finishing the file (nothing to clean up)."""


FORMAT = metrics_file_format(
    "csv",
    lambda fh, ctx: MetricsCsvWriter(fh, ctx.scale_um_per_px is not None),
    "metrics table, one row per complete object, units in the header",
    lambda member: [f'csv_table = pd.read_csv("{member}")  # empty cells are undefined values'],
    readme_order=30.1,
    option_rank=0,
)
