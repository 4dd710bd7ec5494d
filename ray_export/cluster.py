"""The Ray cluster as an export sees it: starting or attaching Ray, probing nodes and CPUs, and where
each map stage may run."""

from __future__ import annotations

import logging
import math
import os
import socket
from pathlib import Path
from typing import Any

from .errors import ExportError
from .options import MAP_STAGES, ExportOptions, is_remote_uri

#: Seconds a Ray address gets to accept a TCP connection before it counts as unreachable.
PROBE_TIMEOUT_S = 3.0


class RayUnreachable(ConnectionError):
    """No Ray cluster answers at the given address (one line)."""


def probe_ray_address(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`RayUnreachable` unless the cluster at ``address`` (``host:port``, ``ray://host:port``,
    ``auto``) accepts a TCP connection within ``timeout_s``: ``ray.init`` would wait minutes for it."""
    if address == "local":
        return
    if address.startswith("ray://"):
        bootstrap = address[len("ray://") :]
    elif address != "auto":
        bootstrap = address
    else:
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            bootstrap = canonicalize_bootstrap_address_or_die(address)
        except Exception as exc:
            detail = str(exc).strip().splitlines()
            raise RayUnreachable(f"no Ray cluster found ({detail[0] if detail else type(exc).__name__})") from None
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except ValueError:
        raise RayUnreachable(f"{address!r} is not a Ray address (host:port)") from None
    except OSError as exc:
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {timeout_s:g} s"
        else:
            reason = (exc.strerror or type(exc).__name__).lower()
        raise RayUnreachable(f"no Ray cluster at {bootstrap} ({reason})") from None


def ensure_ray(address: str | None) -> None:
    """Attach to ``address`` / ``RAY_ADDRESS`` or start a local Ray on demand; an address where no cluster
    answers fails within seconds (:class:`RayUnreachable`)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # a dashboard URL (the form the Jobs CLI takes in RAY_ADDRESS) names the cluster whose GCS we attach to
    target = gcs_address_of(address or os.environ.get("RAY_ADDRESS"))
    if target:
        probe_ray_address(target)
    kwargs: dict[str, Any] = {"namespace": "ray_export", "log_to_driver": False, "logging_level": logging.WARNING}
    if target:
        kwargs["address"] = target
    else:
        kwargs["include_dashboard"] = False
    ray.init(**kwargs)


def stage_placement(files_on_driver_only: bool, single_node: bool, driver_node: str) -> dict[str, dict | None]:
    """Label selector of each map stage (``None``: no constraint given).

    - Images only on the driver's node, a one-node cluster without an autoscaler (v1 or v2, see
      :func:`cluster_may_grow`): every stage is pinned to the driver's node, so stages with equal hints
      still fuse into one task.
    - Images only on the driver's node, several nodes or an autoscaler that may add some: ``copy`` is
      pinned (the SQLite read pins itself); the later stages carry an explicit empty selector so Ray
      does not carry the pin over to them (it would when fusing), and run on any node, launched ones too.
    - Images reachable from every node (URI or shared folder): nothing is pinned.
    """
    pin = {"ray.io/node-id": driver_node}
    if not files_on_driver_only:
        return dict.fromkeys(MAP_STAGES)
    if single_node:
        return dict.fromkeys(MAP_STAGES, pin)
    return {stage: (pin if stage == "copy" else {}) for stage in MAP_STAGES}


def node_resources(node_id: str) -> dict[str, float]:
    import ray

    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return dict(node.get("Resources", {}))
    return {}


READONLY_NODE_TYPE_PREFIX = "node_"


def _v2_cluster_config() -> Any:
    """The node groups an autoscaler v2 (KubeRay, ``ray up`` with v2 on) publishes to the GCS, or None."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:
        return None
    return config if config is not None and len(config.node_group_configs) > 0 else None


def _v1_autoscaler_status() -> dict | None:
    """The status an autoscaler v1 monitor (``ray up``, ``fake_multinode``, a plain head) writes to the
    GCS key-value store every few seconds, or None."""
    import json

    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

        if not _internal_kv_initialized():
            return None
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        return json.loads(raw) if raw else None
    except Exception:
        return None


def _v1_has_node_types(status: dict | None) -> bool:
    """Whether a v1 status comes from a real autoscaler: a head without an autoscaling config runs the
    monitor with a read-only provider whose node types are ``node_<node id>``, one per live node."""
    report = (status or {}).get("autoscaler_report") or {}
    names = set(report.get("active_nodes") or {}) | set(report.get("pending_launches") or {})
    names |= set((report.get("node_type_mapping") or {}).values())
    return any(not name.startswith(READONLY_NODE_TYPE_PREFIX) for name in names)


def cluster_may_grow() -> bool:
    """Whether an autoscaler manages this cluster (v2: it publishes its node groups; v1: its monitor
    reports named node types)."""
    return _v2_cluster_config() is not None or _v1_has_node_types(_v1_autoscaler_status())


def _v1_node_types_from_monitor(status: dict | None) -> list[dict[str, float]] | None:
    """The node types of a v1 autoscaling config, read from the file the monitor process was started
    with; only readable on the head's host (a job driver, a notebook on the head). None otherwise."""
    import yaml

    pid = (status or {}).get("monitor_pid")
    if not isinstance(pid, int):
        return None
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for arg in args:
        text = arg.decode(errors="replace")
        if text.startswith("--autoscaling-config="):
            try:
                config = yaml.safe_load(Path(text.split("=", 1)[1]).expanduser().read_text(encoding="utf-8"))
                node_types = config["available_node_types"]
                return [
                    {str(k): float(v) for k, v in (spec.get("resources") or {}).items()}
                    for name, spec in node_types.items()
                    if name == config.get("head_node_type") or int(spec.get("max_workers", 0)) > 0
                ]
            except Exception:
                return None
    return None


def _with_unknowns(shape: dict[str, float]) -> dict[str, float]:
    """A node type from an autoscaling config: CPU, GPU and memory it does not list are detected when
    the node starts, so they are taken as unbounded."""
    return {"CPU": math.inf, "GPU": math.inf, "memory": math.inf, **shape}


def launchable_node_shapes() -> list[dict[str, float]] | None:
    """Resources of each node the cluster has or its autoscaler may launch; None when an autoscaler
    manages the cluster but its node types cannot be read from here."""
    import ray

    present = [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")]
    config = _v2_cluster_config()
    if config is not None:
        launchable = [
            {str(k): float(v) for k, v in group.resources.items()}
            for group in config.node_group_configs
            if group.max_count != 0
        ]
        return present + [_with_unknowns(shape) for shape in launchable]
    status = _v1_autoscaler_status()
    if not _v1_has_node_types(status):
        return present
    launchable = _v1_node_types_from_monitor(status)
    return None if launchable is None else present + [_with_unknowns(shape) for shape in launchable]


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def stage_demand(options: ExportOptions, stage: str) -> dict[str, float]:
    """Resources one task of ``stage`` asks for (CPU, memory, custom resources)."""
    hints = options.stages[stage]
    wanted = {"CPU": float(hints.num_cpus), **{k: float(v) for k, v in hints.resource_dict().items()}}
    if hints.memory:
        wanted["memory"] = float(hints.memory)
    return {resource: amount for resource, amount in wanted.items() if amount > 0}


def _option_name(resource: str) -> str:
    return {"CPU": "num_cpus", "memory": "memory"}.get(resource, f"resources.{resource}")


def check_pinned_stages_fit(
    options: ExportOptions, placement: dict[str, dict | None], driver_resources: dict[str, float]
) -> None:
    """A stage pinned to the driver's node that asks for more than that node has would wait forever."""
    for stage, selector in placement.items():
        if not selector:
            continue
        for resource, amount in stage_demand(options, stage).items():
            have = float(driver_resources.get(resource, 0.0))
            if amount > have:
                raise ExportError(
                    f"invalid option stages.{stage}.{_option_name(resource)}: asks for {amount:g} {resource}, but "
                    f"the stage must run on the driver's node (local images root), which has {have:g}; lower it, "
                    "or use a URI images root or --shared-images-root",
                    2,
                )


def _fits(demand: dict[str, float], shape: dict[str, float]) -> bool:
    return all(amount <= float(shape.get(resource, 0.0)) for resource, amount in demand.items())


def check_stages_feasible(options: ExportOptions, stages: list[str], shapes: list[dict[str, float]] | None) -> None:
    """A stage no node (present or launchable: ``shapes``) can hold would wait forever; refuse it before
    any work starts. ``shapes`` None (node types unknown) checks nothing."""
    if not shapes:
        return
    for stage in stages:
        demand = stage_demand(options, stage)
        if any(_fits(demand, shape) for shape in shapes):
            continue
        short = [r for r in demand if not any(demand[r] <= float(s.get(r, 0.0)) for s in shapes)]
        if short:
            resource = short[0]
            largest = max(float(s.get(resource, 0.0)) for s in shapes)
            raise ExportError(
                f"invalid option stages.{stage}.{_option_name(resource)}: asks for {demand[resource]:g} {resource} "
                f"per task, but no node of this cluster, present or launchable, has that much (largest: "
                f"{largest:g}); lower it",
                2,
            )
        wants = ", ".join(f"{r}={a:g}" for r, a in sorted(demand.items()))
        raise ExportError(
            f"invalid option stages.{stage}: a task asks for {wants}, but no node of this cluster, present or "
            "launchable, has all of it at once; lower it",
            2,
        )


def place_stages(options: ExportOptions, images_root: str, driver_node: str) -> dict[str, dict | None]:
    """Label selector of each map stage for this cluster and images root (see :func:`stage_placement`);
    raises :class:`ExportError` (exit 2) when a stage pinned to the driver's node cannot fit there, or
    when no node the cluster has or may launch can hold a stage."""
    files_on_driver_only = not is_remote_uri(images_root) and not options.shared_images_root
    # the copy stage reads a previous export given as a local file on the driver's node too
    files_on_driver_only = files_on_driver_only or (options.reuse is not None and not is_remote_uri(options.reuse))
    single_static_node = alive_nodes() == 1 and not cluster_may_grow()
    placement = stage_placement(files_on_driver_only, single_static_node, driver_node)
    check_pinned_stages_fit(options, placement, node_resources(driver_node))
    check_stages_feasible(options, ["read", *MAP_STAGES], launchable_node_shapes())
    return placement


DEFAULT_GCS_PORT = 6379


def is_dashboard_url(address: str | None) -> bool:
    """Whether ``address`` is a dashboard URL (``http://head:8265``, the form the Jobs CLI uses)."""
    return bool(address) and address.lower().startswith(("http://", "https://"))


def gcs_address_of(address: str | None) -> str | None:
    """The GCS address to attach to for ``address``; a dashboard URL is mapped to the cluster whose
    dashboard it is: a GCS running on this machine that publishes that dashboard port, else the
    dashboard's host with Ray's default GCS port. Any other address is returned as given."""
    from urllib.parse import urlsplit

    if not is_dashboard_url(address):
        return address
    url = urlsplit(address)
    port = url.port or (443 if url.scheme == "https" else 80)
    for gcs in _local_gcs_addresses():
        if _dashboard_port(gcs) == port:
            return gcs
    return f"{url.hostname}:{DEFAULT_GCS_PORT}"


def _local_gcs_addresses() -> list[str]:
    try:
        from ray._private.services import find_gcs_addresses

        return sorted(find_gcs_addresses())
    except Exception:
        return []


def _dashboard_port(gcs: str) -> int | None:
    """The dashboard port the cluster at ``gcs`` publishes, or None."""
    try:
        from ray._private import ray_constants
        from ray._raylet import GcsClient

        raw = GcsClient(address=gcs).internal_kv_get(
            ray_constants.DASHBOARD_ADDRESS.encode(), ray_constants.KV_NAMESPACE_DASHBOARD, timeout=5
        )
        return int(raw.decode().rsplit(":", 1)[1]) if raw else None
    except Exception:
        return None
