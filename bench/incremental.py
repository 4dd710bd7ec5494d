"""Benchmark of incremental export: a full export against ``--reuse`` of it, through the CLI as a user runs it.

Builds (or reuses) a demo project, then times, each as one ``ray-export export`` process that starts its
own local Ray (so Ray's start is included):

1. a full export (``full.zip``);
2. the same data again with ``--reuse full.zip`` (nothing changed), beside a plain copy of the same ZIP
   (``shutil.copyfile``, read and written once) — the speed of copying bytes;
3. after editing ``--changed`` segmentations, ``--reuse full.zip``, and a full export of the edited data;

and checks that every re-export is byte-identical to the full export of the same data. Prints one table
(``--json FILE`` also writes the figures). Run ``python bench/incremental.py --help`` from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def cli_export(db: Path, project_id: str, output: Path, *extra: str) -> tuple[float, str]:
    """Run one export through the CLI in a fresh process; (seconds, its stderr)."""
    command = [sys.executable, "-m", "ray_export", "export", "--db", str(db), "--project", project_id,
               "--out", str(output), "--force", "--quiet", *extra]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"export failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return seconds, done.stderr


def reuse_line_of(stderr: str) -> str:
    """The ``reuse: ...`` line the CLI prints at the end."""
    return next((line for line in stderr.splitlines() if line.startswith("reuse:")), "")


def edit_segmentations(db: Path, count: int) -> list[str]:
    """Move the first object of ``count`` segmentations (spread over the project) by one pixel; their ids."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute('SELECT "imageId", polygons FROM segmentations ORDER BY "imageId"').fetchall()
        step = max(1, len(rows) // max(1, count))
        edited = []
        for image_id, text in rows[::step][:count]:
            elements = json.loads(text)
            if not elements:
                continue
            elements[0]["points"] = [{**p, "x": p["x"] + 1.0} for p in elements[0]["points"]]
            con.execute('UPDATE segmentations SET polygons = ?, "updatedAt" = "updatedAt" + 1 WHERE "imageId" = ?',
                        (json.dumps(elements), image_id))  # fmt: skip
            edited.append(image_id)
        con.commit()
        return edited
    finally:
        con.close()


def copy_seconds(source: Path, target: Path) -> float:
    """Seconds to copy ``source`` to ``target`` (read and written once, then flushed)."""
    started = time.perf_counter()
    shutil.copyfile(source, target)
    with open(target, "rb+") as fh:
        os.fsync(fh.fileno())
    return time.perf_counter() - started


def format_report(report: dict[str, Any]) -> str:
    """The readable table."""
    full, same, changed = report["full"], report["unchanged"], report["changed"]
    mib = report["zip_bytes"] / 2**20
    lines = [
        f"incremental export: {report['images']} images ({report['size']}), {report['cpus']} CPUs, "
        f"ZIP {mib:,.0f} MiB; every run is `ray-export export` in a new process (Ray start included)",
        "",
        f"{'run':<40} {'seconds':>8} {'vs full':>8}  identical  reuse",
        f"{'full export':<40} {full['seconds']:8.2f} {1.0:8.2f}x  -",
        f"{'--reuse, nothing changed':<40} {same['seconds']:8.2f} {full['seconds'] / same['seconds']:8.2f}x  "
        f"{same['identical']!s:<9}  {same['reuse']}",
        f"{'plain copy of the ZIP (shutil.copyfile)':<40} {report['copy_seconds']:8.2f}",
        f"{'--reuse, ' + str(changed['edited']) + ' segmentations edited':<40} {changed['seconds']:8.2f} "
        f"{changed['full_seconds'] / changed['seconds']:8.2f}x  {changed['identical']!s:<9}  {changed['reuse']}",
        f"{'full export of the edited data':<40} {changed['full_seconds']:8.2f}",
        "",
        f"nothing changed: {mib / same['seconds']:,.0f} MiB/s of ZIP through the export, "
        f"{mib / report['copy_seconds']:,.0f} MiB/s by a plain copy; "
        f"{report['ray_start_seconds']:.2f} s of each run is starting Ray and the export's actors "
        "(an export of 1 image)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="demo images (default 1000)")
    parser.add_argument("--size", default="mixed", metavar="WxH",
                        help="image size, or mixed (the demo's camera sizes, the default)")
    parser.add_argument("--changed", type=int, default=10, help="segmentations edited (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="demo seed (default 0)")
    parser.add_argument("--workdir", type=Path, default=Path(".bench"), help="demo project and outputs (./.bench)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    size = None if args.size == "mixed" else tuple(int(v) for v in args.size.lower().split("x"))
    size_tag = f"-{size[0]}x{size[1]}" if size else ""

    from ray_export.demo import build_demo_project

    workdir = args.workdir.expanduser().resolve()
    pristine = build_demo_project(workdir / f"demo-{args.images}-{args.seed}{size_tag}", args.images, args.seed,
                                  size)  # fmt: skip
    # edits go to a private copy of the database (the images are shared, read only)
    out = workdir / "incremental"
    out.mkdir(parents=True, exist_ok=True)
    db = out / "project.db"
    shutil.copyfile(pristine.db_path, db)
    root = ["--images-root", str(pristine.images_root)]
    print(f"demo project: {pristine.db_path}", flush=True)

    one_image = sqlite3.connect(db).execute(
        'SELECT id FROM images WHERE NOT COALESCE("isVideoContainer", 0) LIMIT 1').fetchone()[0]  # fmt: skip
    ray_start, _ = cli_export(db, pristine.project_id, out / "one.zip", *root, "--image-ids", one_image)
    full_seconds, _ = cli_export(db, pristine.project_id, out / "full.zip", *root)
    print(f"full export: {full_seconds:.2f} s", flush=True)
    previous = ["--reuse", str(out / "full.zip")]
    same_seconds, stderr = cli_export(db, pristine.project_id, out / "same.zip", *root, *previous)
    same_identical = (out / "same.zip").read_bytes() == (out / "full.zip").read_bytes()
    print(f"--reuse, nothing changed: {same_seconds:.2f} s", flush=True)
    copy_s = copy_seconds(out / "full.zip", out / "copy.zip")
    edited = edit_segmentations(db, args.changed)
    changed_seconds, changed_err = cli_export(db, pristine.project_id, out / "changed.zip", *root, *previous)
    print(f"--reuse, {len(edited)} edited: {changed_seconds:.2f} s", flush=True)
    full_changed_seconds, _ = cli_export(db, pristine.project_id, out / "full-changed.zip", *root)
    changed_identical = (out / "changed.zip").read_bytes() == (out / "full-changed.zip").read_bytes()
    report = {
        "images": args.images,
        "size": args.size,
        "cpus": os.cpu_count(),
        "zip_bytes": (out / "full.zip").stat().st_size,
        "ray_start_seconds": ray_start,
        "copy_seconds": copy_s,
        "full": {"seconds": full_seconds},
        "unchanged": {"seconds": same_seconds, "identical": same_identical, "reuse": reuse_line_of(stderr)},
        "changed": {"seconds": changed_seconds, "full_seconds": full_changed_seconds, "edited": len(edited),
                    "identical": changed_identical, "reuse": reuse_line_of(changed_err)},
    }
    print()
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if same_identical and changed_identical else 1


if __name__ == "__main__":
    sys.exit(main())
