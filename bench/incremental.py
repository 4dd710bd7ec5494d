"""Benchmark of incremental export: a full export against ``--reuse`` of it, cold (the CLI, as a user runs
it) and warm (Ray already up in this process), against Ray's own start and stop and a plain copy.

Builds (or reuses) a demo project, then runs, side by side:

- **bare Ray**: a script doing ``ray.init()``, two trivial tasks and ``ray.shutdown()``, in its own
  process (``bench/benchmark.py``'s ``bare_ray_seconds``), the floor of any cold export;
- **plain copy** of the full export's ZIP (``shutil.copyfile``, then fsync): the speed of copying bytes;
- **cold**, each as one ``ray-export export`` process that starts its own local Ray: a full export, the
  same data with ``--reuse`` of it (nothing changed), and after editing ``--changed`` segmentations,
  ``--reuse`` and a full export of the edited data;
- **warm**, in this process with Ray started once (``ray_export.api.export``): a warm-up export of one
  image, then a full export, ``--reuse`` of it with nothing changed, and ``--reuse`` after the edits.

Every re-export is checked byte for byte against the full export of the same data. Printed: one table,
the ratios the targets ask for and whether each is met (``--json FILE`` also writes the figures):

- cold ``--reuse``, nothing changed: at most bare Ray + 1.5 x the plain copy;
- warm: ``--reuse`` with nothing changed at least 10x faster than the full export, and after the edits
  at least 5x faster.

Run ``python bench/incremental.py --help`` from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
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


#: The targets: cold ``--reuse`` with nothing changed at most bare Ray + this many plain copies; warm
#: speed-ups of ``--reuse`` over a full export with nothing changed and after the edits.
COLD_COPIES = 1.5
WARM_UNCHANGED_SPEEDUP = 10.0
WARM_EDITED_SPEEDUP = 5.0


def warm_export(values: dict[str, Any]) -> tuple[float, Any]:
    """One export through ``ray_export.api.export`` on the Ray of this process; (seconds, its result)."""
    from ray_export.api import export

    started = time.perf_counter()
    result = export(values)
    seconds = time.perf_counter() - started
    return seconds, result


def reuse_text(reuse: dict[str, Any] | None) -> str:
    """The reuse counts of a warm export as the CLI prints them."""
    from ray_export.cli import reuse_line

    return reuse_line(reuse) if reuse else ""


def run_warm(db: Path, edited_db: Path, project_id: str, root: str, out: Path, cpus: int, object_store_mb: int,
             one_image: str) -> dict[str, Any]:  # fmt: skip
    """The warm runs: Ray started once in this process, a warm-up export of one image, then a full export
    of ``db``, ``--reuse`` of it (nothing changed), and ``--reuse`` of it for ``edited_db``."""
    import benchmark

    temp_dir = tempfile.mkdtemp(prefix="rxi-", dir="/tmp")
    benchmark.start_ray(cpus, object_store_mb * 2**20, temp_dir)
    import ray

    base = {"project": project_id, "images_root": root, "force": True}
    try:
        warmup, _ = warm_export({**base, "db": str(db), "output": str(out / "warm-one.zip"), "image_ids": [one_image]})
        full, _ = warm_export({**base, "db": str(db), "output": str(out / "warm-full.zip")})
        print(f"warm full export: {full:.2f} s", flush=True)
        previous = str(out / "warm-full.zip")
        same_values = {**base, "db": str(db), "output": str(out / "warm-same.zip"), "reuse": previous}
        same, same_result = warm_export(same_values)
        print(f"warm --reuse, nothing changed: {same:.2f} s", flush=True)
        edited, edited_result = warm_export(
            {**base, "db": str(edited_db), "output": str(out / "warm-changed.zip"), "reuse": previous}
        )
        print(f"warm --reuse, edited: {edited:.2f} s", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    return {
        "cpus": cpus,
        "warmup_seconds": warmup,
        "full_seconds": full,
        "unchanged": {"seconds": same, "reuse": reuse_text(same_result.reuse)},
        "changed": {"seconds": edited, "reuse": reuse_text(edited_result.reuse)},
    }


def targets_of(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: what it asks, the figure measured and whether it is met."""
    bare, copy_s = report["bare_ray"]["plain"]["best_seconds"], report["copy_seconds"]
    cold_limit = bare + COLD_COPIES * copy_s
    cold = report["unchanged"]["seconds"]
    warm = report["warm"]
    unchanged_speedup = warm["full_seconds"] / warm["unchanged"]["seconds"]
    edited_speedup = warm["full_seconds"] / warm["changed"]["seconds"]
    return [
        {"target": f"cold --reuse, nothing changed <= bare Ray + {COLD_COPIES} x plain copy",
         "measured": f"{cold:.2f} s vs {cold_limit:.2f} s ({bare:.2f} + {COLD_COPIES} x {copy_s:.2f})",
         "met": cold <= cold_limit},
        {"target": f"warm --reuse, nothing changed >= {WARM_UNCHANGED_SPEEDUP:.0f}x faster than a full export",
         "measured": f"{unchanged_speedup:.2f}x ({warm['full_seconds']:.2f} s / {warm['unchanged']['seconds']:.2f} s)",
         "met": unchanged_speedup >= WARM_UNCHANGED_SPEEDUP},
        {"target": f"warm --reuse, {report['changed']['edited']} segmentations edited >= "
                   f"{WARM_EDITED_SPEEDUP:.0f}x faster than a full export",
         "measured": f"{edited_speedup:.2f}x ({warm['full_seconds']:.2f} s / {warm['changed']['seconds']:.2f} s)",
         "met": edited_speedup >= WARM_EDITED_SPEEDUP},
    ]  # fmt: skip


def format_report(report: dict[str, Any]) -> str:
    """The readable table."""
    full, same, changed, warm = report["full"], report["unchanged"], report["changed"], report["warm"]
    bare = report["bare_ray"]
    mib = report["zip_bytes"] / 2**20
    edited = f"{changed['edited']} segmentations edited"
    row = "{:<52} {:>8} {:>9}  {:<9}  {}"
    lines = [
        f"incremental export: {report['images']} images ({report['size']}), {report['cpus']} CPUs, ZIP {mib:,.0f} MiB",
        "cold: `ray-export export` in a new process (Ray's start and stop included); "
        f"warm: ray_export.api.export with Ray up in this process ({warm['cpus']} CPUs)",
        "",
        row.format("run", "seconds", "vs full", "identical", "reuse"),
        row.format("bare Ray (ray.init(), 2 tasks, ray.shutdown())", f"{bare['plain']['best_seconds']:.2f}",
                   "", "", ""),
        row.format("bare Ray without the dashboard (as the CLI starts it)",
                   f"{bare['no_dashboard']['best_seconds']:.2f}", "", "", ""),
        row.format("plain copy of the ZIP (copyfile + fsync)", f"{report['copy_seconds']:.2f}", "", "", ""),
        row.format("cold: export of 1 image", f"{report['ray_start_seconds']:.2f}", "", "", ""),
        row.format("cold: full export", f"{full['seconds']:.2f}", "1.00x", "-", ""),
        row.format("cold: --reuse, nothing changed", f"{same['seconds']:.2f}",
                   f"{full['seconds'] / same['seconds']:.2f}x", str(same["identical"]), same["reuse"]),
        row.format(f"cold: --reuse, {edited}", f"{changed['seconds']:.2f}",
                   f"{changed['full_seconds'] / changed['seconds']:.2f}x", str(changed["identical"]), changed["reuse"]),
        row.format("cold: full export of the edited data", f"{changed['full_seconds']:.2f}", "1.00x", "-", ""),
        row.format("warm: export of 1 image (warm-up)", f"{warm['warmup_seconds']:.2f}", "", "", ""),
        row.format("warm: full export", f"{warm['full_seconds']:.2f}", "1.00x", str(warm["full_identical"]), ""),
        row.format("warm: --reuse, nothing changed", f"{warm['unchanged']['seconds']:.2f}",
                   f"{warm['full_seconds'] / warm['unchanged']['seconds']:.2f}x", str(warm["unchanged"]["identical"]),
                   warm["unchanged"]["reuse"]),
        row.format(f"warm: --reuse, {edited}", f"{warm['changed']['seconds']:.2f}",
                   f"{warm['full_seconds'] / warm['changed']['seconds']:.2f}x", str(warm["changed"]["identical"]),
                   warm["changed"]["reuse"]),
        "",
        f"nothing changed, cold: {mib / same['seconds']:,.0f} MiB/s of ZIP through the export, "
        f"{mib / report['copy_seconds']:,.0f} MiB/s by a plain copy",
        "",
        "targets:",
    ]  # fmt: skip
    for target in report["targets"]:
        lines.append(f"  {'MET ' if target['met'] else 'MISSED'}  {target['target']}: {target['measured']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="demo images (default 1000)")
    parser.add_argument("--size", default="mixed", metavar="WxH",
                        help="image size, or mixed (the demo's camera sizes, the default)")
    parser.add_argument("--changed", type=int, default=10, help="segmentations edited (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="demo seed (default 0)")
    parser.add_argument("--workdir", type=Path, default=Path(".bench"), help="demo project and outputs (./.bench)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1,
                        help="CPUs of the warm runs' Ray (default: all, as the CLI's local Ray)")
    parser.add_argument("--object-store-mb", type=int, default=1024, help="object store of the warm runs' Ray (1024)")
    parser.add_argument("--bare-runs", type=int, default=2, help="runs of the bare Ray script, best kept (2)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)  # fmt: skip
    size = None if args.size == "mixed" else tuple(int(v) for v in args.size.lower().split("x"))
    size_tag = f"-{size[0]}x{size[1]}" if size else ""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchmark

    from ray_export.demo import build_demo_project

    workdir = args.workdir.expanduser().resolve()
    pristine = build_demo_project(workdir / f"demo-{args.images}-{args.seed}{size_tag}", args.images, args.seed,
                                  size)  # fmt: skip
    # edits go to a private copy of the database (the images are shared, read only); the warm runs read
    # an unedited copy
    out = workdir / "incremental"
    out.mkdir(parents=True, exist_ok=True)
    db, unedited_db = out / "project.db", out / "project-unedited.db"
    shutil.copyfile(pristine.db_path, db)
    shutil.copyfile(pristine.db_path, unedited_db)
    root = ["--images-root", str(pristine.images_root)]
    print(f"demo project: {pristine.db_path}", flush=True)

    bare = {
        "plain": benchmark.bare_ray_seconds(args.bare_runs, os.cpu_count() or 1),
        "no_dashboard": benchmark.bare_ray_seconds(args.bare_runs, os.cpu_count() or 1, dashboard=False),
    }
    print(f"bare Ray: {bare['plain']['best_seconds']:.2f} s ({bare['no_dashboard']['best_seconds']:.2f} s "
          "without the dashboard)", flush=True)  # fmt: skip
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

    warm = run_warm(unedited_db, db, pristine.project_id, str(pristine.images_root), out, args.cpus,
                    args.object_store_mb, one_image)  # fmt: skip
    full_bytes = (out / "full.zip").read_bytes()
    warm["full_identical"] = (out / "warm-full.zip").read_bytes() == full_bytes
    warm["unchanged"]["identical"] = (out / "warm-same.zip").read_bytes() == full_bytes
    warm["changed"]["identical"] = (out / "warm-changed.zip").read_bytes() == (out / "full-changed.zip").read_bytes()
    report = {
        "images": args.images,
        "size": args.size,
        "cpus": os.cpu_count(),
        "zip_bytes": (out / "full.zip").stat().st_size,
        "bare_ray": bare,
        "ray_start_seconds": ray_start,
        "copy_seconds": copy_s,
        "full": {"seconds": full_seconds},
        "unchanged": {"seconds": same_seconds, "identical": same_identical, "reuse": reuse_line_of(stderr)},
        "changed": {"seconds": changed_seconds, "full_seconds": full_changed_seconds, "edited": len(edited),
                    "identical": changed_identical, "reuse": reuse_line_of(changed_err)},
        "warm": warm,
    }  # fmt: skip
    report["targets"] = targets_of(report)
    print()
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    identical = [same_identical, changed_identical, warm["full_identical"], warm["unchanged"]["identical"],
                 warm["changed"]["identical"]]  # fmt: skip
    return 0 if all(identical) else 1


if __name__ == "__main__":
    sys.exit(main())
