"""The Ray cluster as an export sees it: starting or attaching Ray, probing nodes and CPUs, and where
each map stage may run."""

from __future__ import annotations

import logging
import os
import socket
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
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        probe_ray_address(target)
    kwargs: dict[str, Any] = {"namespace": "ray_export", "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        kwargs["address"] = address
    elif not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False
    ray.init(**kwargs)


def stage_placement(files_on_driver_only: bool, single_node: bool, driver_node: str) -> dict[str, dict | None]:
    """Label selector of each map stage (``None``: no constraint given).

    - Images only on the driver's node, a one-node cluster without an autoscaler: every stage is pinned
      to the driver's node, so stages with equal hints still fuse into one task.
    - Images only on the driver's node, several nodes: ``copy`` is pinned; the later stages carry an
      explicit empty selector so Ray does not carry the pin over to them (it would when fusing).
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


def cluster_may_grow() -> bool:
    """Whether an autoscaler manages this cluster (it then publishes its node groups to the GCS)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:
        return False
    return bool(config is not None and len(config.node_group_configs) > 0)


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def check_pinned_stages_fit(
    options: ExportOptions, placement: dict[str, dict | None], driver_resources: dict[str, float]
) -> None:
    """A stage pinned to the driver's node that asks for more than that node has would wait forever."""
    for stage, selector in placement.items():
        if not selector:
            continue
        hints = options.stages[stage]
        wanted = {"CPU": float(hints.num_cpus), **hints.resource_dict()}
        if hints.memory:
            wanted["memory"] = float(hints.memory)
        for resource, amount in wanted.items():
            have = float(driver_resources.get(resource, 0.0))
            if amount > have:
                option = {"CPU": "num_cpus", "memory": "memory"}.get(resource, f"resources.{resource}")
                raise ExportError(
                    f"invalid option stages.{stage}.{option}: asks for {amount:g} {resource}, but the stage "
                    f"must run on the driver's node (local images root), which has {have:g}; lower it, or use a "
                    "URI images root or --shared-images-root",
                    2,
                )



def place_stages(options: ExportOptions, images_root: str, driver_node: str) -> dict[str, dict | None]:
    """Label selector of each map stage for this cluster and images root (see :func:`stage_placement`);
    raises :class:`ExportError` when a stage pinned to the driver's node cannot fit there."""
    files_on_driver_only = not is_remote_uri(images_root) and not options.shared_images_root
    single_static_node = alive_nodes() == 1 and not cluster_may_grow()
    placement = stage_placement(files_on_driver_only, single_static_node, driver_node)
    check_pinned_stages_fit(options, placement, node_resources(driver_node))
    return placement
