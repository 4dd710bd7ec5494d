"""JSON as the ZIP's documents write it: plain values, then fixed, UTF-8 text."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def json_safe(value: Any) -> Any:
    """Plain JSON values: numpy scalars -> Python, tuples -> lists, NaN/inf -> ``None``."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return int(value)
    return str(value)


def document_bytes(value: Any, sort_keys: bool) -> bytes:
    """``value`` as an indented JSON document (UTF-8, no NaN, trailing newline)."""
    text = json.dumps(json_safe(value), ensure_ascii=False, indent=2, sort_keys=sort_keys, allow_nan=False)
    return (text + "\n").encode("utf-8")
