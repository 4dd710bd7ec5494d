"""Value rules and summary statistics shared by every table the ZIP carries."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def metric_float(value: Any) -> float | None:
    """A metric value as a finite Python float, or ``None``."""
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def summary_statistics(values: Any) -> list[float | None]:
    """``[count, mean, std (ddof 1), min, median, max]`` of the values; ``None`` where undefined or overflowing."""
    data = np.asarray(values, dtype=np.float64)
    n = len(data)
    if n == 0:
        return [0.0, None, None, None, None, None]
    # Values near the float64 limit are divided by a power of two first, so sums and squares cannot overflow.
    magnitude = float(np.max(np.abs(data)))
    exponent = math.frexp(magnitude)[1] if magnitude > 1e150 else 0
    scaled = np.ldexp(data, -exponent)
    with np.errstate(over="ignore", invalid="ignore"):
        std = float(np.ldexp(np.std(scaled, ddof=1), exponent)) if n >= 2 else None
        mean = float(np.ldexp(np.mean(scaled), exponent))
        median = float(np.ldexp(np.median(scaled), exponent))
    stats = [float(n), mean, std, float(np.min(data)), median, float(np.max(data))]
    return [v if v is None or math.isfinite(v) else None for v in stats]
