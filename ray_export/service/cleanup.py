"""What a service that was killed left in its exports root, removed when the next one starts.

A killed export leaves at most its lock file (``<output>.lock``, free once its process is gone) and,
where the file system cannot make unnamed files, its named partial ``<output>.<id>.partial``. Both are
removed through :class:`ray_export.output_files.OutputFiles`, which takes the output's lock first (an
output a live export holds is left alone) and removes only exact names of regular files.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from ..output_files import EXPORT_ID_PATTERN, LOCK_SUFFIX, PARTIAL_SUFFIX, OutputFiles, OutputLocked, UnsafeOutputPath

_PARTIAL_NAME = re.compile(rf"(.+)\.{EXPORT_ID_PATTERN}{re.escape(PARTIAL_SUFFIX)}")
#: How deep below the exports root the sweep looks (outputs may sit in sub-folders).
MAX_SWEEP_DEPTH = 8


def outputs_with_leftovers(root: Path) -> list[Path]:
    """The outputs under ``root`` that have a lock file or a named partial beside them (no link followed)."""
    outputs: set[Path] = set()
    base_depth = len(root.parts)
    for folder, subfolders, files in os.walk(root, followlinks=False):
        if len(Path(folder).parts) - base_depth >= MAX_SWEEP_DEPTH:
            subfolders[:] = []
        for name in files:
            if name.endswith(LOCK_SUFFIX) and len(name) > len(LOCK_SUFFIX):
                outputs.add(Path(folder) / name[: -len(LOCK_SUFFIX)])
            match = _PARTIAL_NAME.fullmatch(name)
            if match:
                outputs.add(Path(folder) / match.group(1))
    return sorted(outputs)


def sweep_exports_root(root: Path, sweeper_id: str = "service-start") -> list[Path]:
    """Remove the lock files and partials that dead exports left under ``root``; returns what was removed."""
    removed: list[Path] = []
    for output in outputs_with_leftovers(root):
        files = OutputFiles(output, sweeper_id)
        lock_existed = files.lock_path.is_file() and not files.lock_path.is_symlink()
        try:
            removed += files.start()
        except (OutputLocked, UnsafeOutputPath, OSError):
            continue  # a live export's, or not an export's lock: left alone
        finally:
            files.release()
        if lock_existed:
            removed.append(files.lock_path)
    with contextlib.suppress(ValueError):
        removed.sort()
    return removed
