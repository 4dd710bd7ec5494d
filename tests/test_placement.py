"""Where stages may run: recognising autoscaling clusters, refusing hints no node can hold, and the
addresses status and cancel accept. Pure functions, no Ray."""

from __future__ import annotations

import math

import pytest

from ray_export import cluster
from ray_export.cluster import check_stages_feasible, gcs_address_of, stage_demand
from ray_export.errors import ExportError
from ray_export.options import build_options


def _options(**overrides):
    return build_options(None, {"db": "x.db", "project": "p", **overrides})


def _status(active: dict[str, int], mapping: dict[str, str] | None = None) -> dict:
    return {"autoscaler_report": {"active_nodes": active, "pending_launches": {}, "node_type_mapping": mapping}}


def test_a_v1_autoscaler_is_told_from_the_read_only_monitor_of_a_plain_head():
    node = "f" * 56
    plain_head = _status({f"node_{node}": 1}, {node: f"node_{node}"})
    assert not cluster._v1_has_node_types(plain_head)
    assert not cluster._v1_has_node_types(None)
    assert not cluster._v1_has_node_types({"load_metrics_report": {}})
    autoscaling = _status({"ray.head.default": 1}, {node: "ray.head.default"})  # fake_multinode, ray up
    assert cluster._v1_has_node_types(autoscaling)


def test_stage_demand_lists_what_one_task_asks_for():
    options = _options(stages={"visualize": {"num_cpus": 2, "memory": "1GiB", "resources": {"scanner": 1}}})
    assert stage_demand(options, "visualize") == {"CPU": 2.0, "memory": 1024.0**3, "scanner": 1.0}
    assert stage_demand(options, "copy") == {"CPU": 1.0}


def test_a_hint_no_node_can_hold_is_a_usage_error():
    head = {"CPU": 1.0, "memory": 8e9}
    worker_type = {"CPU": 2.0, "GPU": math.inf, "memory": math.inf}  # a launchable type: memory unknown
    ok = _options(stages={"visualize": {"num_cpus": 2, "memory": "16GiB"}})
    check_stages_feasible(ok, ["read", "copy", "visualize"], [head, worker_type])

    too_many = _options(stages={"visualize": {"num_cpus": 4}})
    with pytest.raises(ExportError) as info:
        check_stages_feasible(too_many, ["read", "copy", "visualize"], [head, worker_type])
    assert info.value.exit_code == 2
    assert "stages.visualize.num_cpus" in str(info.value) and "largest: 2" in str(info.value)

    custom = _options(stages={"metrics": {"resources": {"scanner": 1}}})
    with pytest.raises(ExportError, match=r"stages\.metrics\.resources\.scanner"):
        check_stages_feasible(custom, ["metrics"], [head, worker_type])
    check_stages_feasible(custom, ["metrics"], [head, {**worker_type, "scanner": 1.0}])
    # one node must hold the whole task: CPUs on one node and the resource on another do not add up
    both = _options(stages={"metrics": {"num_cpus": 2, "resources": {"scanner": 1}}})
    with pytest.raises(ExportError, match=r"stages\.metrics: a task asks for CPU=2, scanner=1.*all of it at once"):
        check_stages_feasible(both, ["metrics"], [{"CPU": 1.0, "scanner": 1.0}, {"CPU": 2.0}])
    check_stages_feasible(too_many, ["visualize"], None)  # node types unknown: nothing is refused


def test_a_dashboard_url_is_mapped_to_a_gcs_address(monkeypatch):
    assert gcs_address_of(None) is None
    assert gcs_address_of("10.0.0.5:6379") == "10.0.0.5:6379"
    assert gcs_address_of("auto") == "auto"
    monkeypatch.setattr(cluster, "_local_gcs_addresses", lambda: ["127.0.0.1:50001", "127.0.0.1:50002"])
    monkeypatch.setattr(cluster, "_dashboard_port", {"127.0.0.1:50001": 8266, "127.0.0.1:50002": 8265}.get)
    assert gcs_address_of("http://127.0.0.1:8265") == "127.0.0.1:50002"
    assert gcs_address_of("http://head.internal:9999/") == "head.internal:6379"
    monkeypatch.setattr(cluster, "_local_gcs_addresses", lambda: [])
    assert gcs_address_of("https://head.internal:8265") == "head.internal:6379"
