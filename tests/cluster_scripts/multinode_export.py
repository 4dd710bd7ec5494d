"""Export on a three-node Ray cluster on this machine (``ray.cluster_utils.Cluster``); prints one JSON line.

Usage: ``python multinode_export.py --db DB --project ID --out ZIP --temp-dir DIR --ports P1,P2,P3,P4
[--batch-size N]``. The cluster has a 1-CPU head and two 1-CPU worker nodes, its own temp dir and
explicit ports. While the export runs, a sampler records which node's raylet owns each worker process
that is running a Ray Data stage, so the caller can see that the work was spread over several nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from pathlib import Path

STAGE_MARKERS = (b"MapBatches", b"Read")


def _stage_worker_parents() -> set[int]:
    """Parent PIDs (raylets) of processes whose title says they run a Ray Data stage right now."""
    parents: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes()
            if not title.startswith(b"ray::") or not any(marker in title for marker in STAGE_MARKERS):
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command may contain spaces and parentheses: the fields after the last ')' are fixed
        fields = stat.rsplit(")", 1)[1].split()
        parents.add(int(fields[1]))
    return parents


class StageSampler(threading.Thread):
    """Collects ``_stage_worker_parents()`` every ``period`` seconds until stopped."""

    def __init__(self, period: float = 0.1) -> None:
        super().__init__(daemon=True, name="stage-sampler")
        self.period = period
        self.parents: set[int] = set()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            self.parents |= _stage_worker_parents()


def _raylet_pid(node) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--temp-dir", required=True)
    parser.add_argument("--ports", required=True, help="GCS, client server, dashboard agent, metrics export")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size of every map stage")
    args = parser.parse_args()

    from ray.cluster_utils import Cluster

    import ray_export.api

    # Cluster writes the address file into the default temp dir (RAY_TMPDIR/ray): it must exist
    Path(os.environ.get("RAY_TMPDIR", "/tmp"), "ray").mkdir(parents=True, exist_ok=True)
    gcs_port, client_port, agent_port, metrics_port = (int(p) for p in args.ports.split(","))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "temp_dir": args.temp_dir,
            "include_dashboard": False,
            "gcs_server_port": gcs_port,
            "ray_client_server_port": client_port,
            "dashboard_agent_listen_port": agent_port,
            "metrics_export_port": metrics_port,
            "object_store_memory": 150 * 1024 * 1024,
        },
    )
    sampler = StageSampler()
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=150 * 1024 * 1024)
        cluster.wait_for_nodes()
        raylets = {
            _raylet_pid(cluster.head_node): "head",
            **{_raylet_pid(node): f"worker-{i}" for i, node in enumerate(cluster.worker_nodes)},
        }
        options: dict = {"db": args.db, "project": args.project, "output": args.out, "address": cluster.address}
        if args.batch_size:
            options["stages"] = {
                stage: {"batch_size": args.batch_size} for stage in ("copy", "visualize", "annotate", "metrics")
            }
        sampler.start()
        result = ray_export.api.export(**options)
        sampler.stopped.set()
        sampler.join()

        import ray

        alive_nodes = sum(1 for node in ray.nodes() if node["Alive"])
        print(
            json.dumps(
                {
                    "output": result.output,
                    "counts": result.counts,
                    "alive_nodes": alive_nodes,
                    "stage_nodes": sorted({raylets[pid] for pid in sampler.parents if pid in raylets}),
                }
            ),
            flush=True,
        )
    finally:
        sampler.stopped.set()
        import ray

        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
