"""The Ray cluster as an export sees it: starting or attaching Ray, probing nodes and CPUs, and where
each map stage may run."""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .errors import ExportError
from .locations import is_remote_uri
from .options import MAP_STAGES, ExportOptions

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


class NodeTypes(NamedTuple):
    """Resources of each node the cluster has or its autoscaler may launch (``shapes``; None when an
    autoscaler manages the cluster but its node types cannot be read from here), and of the node types
    a cluster-wide limit keeps the autoscaler from ever launching (``withheld``, that limit in ``limit``)."""

    shapes: list[dict[str, float]] | None
    withheld: tuple[dict[str, float], ...] = ()
    limit: str = ""


def autoscaling_config_node_types(config: dict) -> NodeTypes:
    """Node types an autoscaler v1 config (the ``ray up`` / ``--autoscaling-config`` YAML) lets the
    autoscaler launch: a type with its own ``max_workers`` above 0, unless the cluster-wide
    ``max_workers`` is 0 (it counts workers of all types together: no worker ever comes), which
    withholds them all. The head node itself is present, so the head type counts only as a worker type."""
    launchable = []
    for spec in config["available_node_types"].values():
        if int(spec.get("max_workers", 0)) > 0:
            launchable.append(_with_unknowns({str(k): float(v) for k, v in (spec.get("resources") or {}).items()}))
    cap = config.get("max_workers")  # the autoscaler needs it; prepare_config fills it in for `ray up`
    if cap is not None and int(cap) <= 0 and launchable:
        return NodeTypes([], tuple(launchable), f"the cluster-wide max_workers is {int(cap)}")
    return NodeTypes(launchable)


def cluster_config_node_types(config: Any) -> NodeTypes:
    """Node groups an autoscaler v2 publishes (an ``autoscaler_pb2.ClusterConfig``) that it may launch:
    ``max_count`` not 0 (-1: unbounded), and no resource of one node above the cluster-wide
    ``max_resources`` cap, which a group of larger nodes can never get under."""
    caps = {str(k): float(v) for k, v in config.max_resources.items()}
    launchable, withheld, over = [], [], []
    for group in config.node_group_configs:
        if group.max_count == 0:
            continue
        shape = {str(k): float(v) for k, v in group.resources.items()}
        exceeded = [f"{k}={caps[k]:g}" for k in sorted(shape) if k in caps and shape[k] > caps[k]]
        (withheld if exceeded else launchable).append(_with_unknowns(shape))
        over.extend(item for item in exceeded if item not in over)
    limit = f"the cluster's max_resources cap {', '.join(over)}" if withheld else ""
    return NodeTypes(launchable, tuple(withheld), limit)


def _v1_config_from_monitor(status: dict | None) -> dict | None:
    """The autoscaler v1 config the monitor process was started with (``--autoscaling-config``); only
    readable on the head's host (a job driver, a notebook on the head). None otherwise."""
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
            except Exception:
                return None
            return config if isinstance(config, dict) else None
    return None


def _with_unknowns(shape: dict[str, float]) -> dict[str, float]:
    """A node type from an autoscaling config: CPU, GPU and memory it does not list are detected when
    the node starts, so they are taken as unbounded."""
    return {"CPU": math.inf, "GPU": math.inf, "memory": math.inf, **shape}


def launchable_node_types() -> NodeTypes:
    """The nodes the cluster has plus the node types its autoscaler (v2: the node groups it publishes to
    the GCS; v1: the config its monitor reads) may launch, with those a cluster-wide limit withholds."""
    import ray

    present = [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")]
    cluster_config = _v2_cluster_config()
    if cluster_config is not None:
        types = cluster_config_node_types(cluster_config)
    else:
        status = _v1_autoscaler_status()
        if not _v1_has_node_types(status):
            return NodeTypes(present)
        config = _v1_config_from_monitor(status)
        try:
            types = autoscaling_config_node_types(config) if config is not None else None
        except Exception:  # a config the autoscaler could not run either
            types = None
        if types is None:
            return NodeTypes(None)
    return NodeTypes(present + (types.shapes or []), types.withheld, types.limit)


def launchable_node_shapes() -> list[dict[str, float]] | None:
    """Resources of each node the cluster has or its autoscaler may launch; None when an autoscaler
    manages the cluster but its node types cannot be read from here."""
    return launchable_node_types().shapes


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


def check_stages_feasible(
    options: ExportOptions,
    stages: list[str],
    shapes: list[dict[str, float]] | None,
    withheld: Sequence[dict[str, float]] = (),
    limit: str = "",
) -> None:
    """A stage no node (present or launchable: ``shapes``) can hold would wait forever; refuse it before
    any work starts. ``shapes`` None (node types unknown) checks nothing. ``withheld``: node types the
    autoscaler never launches because of a cluster-wide ``limit`` (named in the message when only such
    a type could hold the stage)."""
    if shapes is None:
        return
    for stage in stages:
        demand = stage_demand(options, stage)
        if any(_fits(demand, shape) for shape in shapes):
            continue
        if any(_fits(demand, shape) for shape in withheld):
            ending = f"; only worker types that are never launched have it ({limit}); lower it or raise that limit"
        else:
            ending = "; lower it"
        short = [r for r in demand if not any(demand[r] <= float(s.get(r, 0.0)) for s in shapes)]
        if short:
            resource = short[0]
            largest = max((float(s.get(resource, 0.0)) for s in shapes), default=0.0)
            raise ExportError(
                f"invalid option stages.{stage}.{_option_name(resource)}: asks for {demand[resource]:g} {resource} "
                f"per task, but no node of this cluster, present or launchable, has that much (largest: "
                f"{largest:g}){ending}",
                2,
            )
        wants = ", ".join(f"{r}={a:g}" for r, a in sorted(demand.items()))
        raise ExportError(
            f"invalid option stages.{stage}: a task asks for {wants}, but no node of this cluster, present or "
            f"launchable, has all of it at once{ending}",
            2,
        )


def check_read_fits(options: ExportOptions, driver_resources: dict[str, float] | None = None) -> None:
    """Reads of a SQLite database run on the driver's node (the file is there): read hints that node
    cannot hold are a usage error (the tasks would wait forever). ``driver_resources``: that node's
    resources, looked up from the running Ray when not given."""
    from .sources import parse_db_target

    if parse_db_target(options.db).kind != "sqlite":
        return
    if driver_resources is None:
        import ray

        driver_resources = node_resources(ray.get_runtime_context().get_node_id())
    for resource, amount in stage_demand(options, "read").items():
        have = float(driver_resources.get(resource, 0.0))
        if amount <= have:
            continue
        if resource == "CPU" and have <= 0:
            # stages.read.num_cpus must be above 0, so no read hint fits a node without CPUs
            raise ExportError(
                "reads of a SQLite database run on the driver's node, which has no CPU (a read task needs some, "
                "stages.read.num_cpus cannot be 0); give that node CPUs (for the head: ray start --head "
                "--num-cpus=1) or use a PostgreSQL database, whose reads run on any node",
                2,
            )
        raise ExportError(
            f"invalid option stages.read.{_option_name(resource)}: asks for {amount:g} {resource}, but reads of a "
            f"SQLite database run on the driver's node, which has {have:g}; lower it",
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
    types = launchable_node_types()
    check_stages_feasible(options, ["read", *MAP_STAGES], types.shapes, types.withheld, types.limit)
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
