"""Where stages may run: recognising autoscaling clusters, the node types an autoscaling config lets
them launch, refusing hints no node can hold, and the addresses status and cancel accept. Pure
functions and injected configs, no Ray."""

from __future__ import annotations

import math

import pytest

from ray_export import cluster
from ray_export.cluster import (
    NodeTypes,
    autoscaling_config_node_types,
    check_read_fits,
    check_stages_feasible,
    cluster_config_node_types,
    gcs_address_of,
    stage_demand,
)
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


def _autoscaling_config(cluster_max_workers: int | None, worker_max_workers: int = 5) -> dict:
    """A v1 autoscaling config: a 1-CPU head and an 8-CPU worker type."""
    config: dict = {
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 1}, "max_workers": 0},
            "worker": {"resources": {"CPU": 8}, "min_workers": 0, "max_workers": worker_max_workers},
        },
    }
    if cluster_max_workers is not None:
        config["max_workers"] = cluster_max_workers
    return config


def _launchable(monkeypatch, config: dict | None, present: list[dict[str, float]]) -> NodeTypes:
    """``launchable_node_types`` of a cluster whose nodes are ``present`` and whose v1 monitor was started
    with ``config`` (None: the config file cannot be read from here)."""
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": shape} for shape in present])
    monkeypatch.setattr(cluster, "_v2_cluster_config", lambda: None)
    monkeypatch.setattr(cluster, "_v1_autoscaler_status", lambda: _status({"head": 1}, {"f" * 56: "head"}))
    monkeypatch.setattr(cluster, "_v1_config_from_monitor", lambda status: config)
    return cluster.launchable_node_types()


def test_a_cluster_wide_max_workers_of_0_withholds_every_worker_type(monkeypatch):
    head = {"CPU": 1.0, "memory": 8e9}
    wide = _options(stages={"visualize": {"num_cpus": 4}})

    types = _launchable(monkeypatch, _autoscaling_config(cluster_max_workers=0, worker_max_workers=5), [head])
    assert types.shapes == [head]
    assert [shape["CPU"] for shape in types.withheld] == [8.0]
    assert "max_workers is 0" in types.limit
    with pytest.raises(ExportError) as info:
        check_stages_feasible(wide, ["read", "visualize"], *types)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert message.startswith("invalid option stages.visualize.num_cpus: asks for 4 CPU per task")
    assert "largest: 1" in message and "the cluster-wide max_workers is 0" in message
    check_stages_feasible(_options(), ["read", "copy", "visualize"], *types)  # 1-CPU tasks fit the head

    types = _launchable(monkeypatch, _autoscaling_config(cluster_max_workers=12, worker_max_workers=5), [head])
    assert types.withheld == () and types.limit == ""
    assert [shape["CPU"] for shape in types.shapes] == [1.0, 8.0]
    check_stages_feasible(wide, ["read", "visualize"], *types)


def test_node_types_an_autoscaling_config_may_launch():
    assert autoscaling_config_node_types(_autoscaling_config(3)).shapes[0]["CPU"] == 8.0
    assert autoscaling_config_node_types(_autoscaling_config(None)).shapes[0]["CPU"] == 8.0  # no cap given
    # a worker type of its own max_workers 0 is never launched, whatever the cluster-wide limit
    assert autoscaling_config_node_types(_autoscaling_config(3, worker_max_workers=0)) == NodeTypes([])
    # nothing to withhold: the message stays the plain one
    assert autoscaling_config_node_types(_autoscaling_config(0, worker_max_workers=0)) == NodeTypes([])
    # the head node is present anyway; its type counts only where it may be launched as a worker too
    config = _autoscaling_config(2)
    config["available_node_types"]["head"]["max_workers"] = 1
    assert sorted(shape["CPU"] for shape in autoscaling_config_node_types(config).shapes) == [1.0, 8.0]
    # a worker type whose resources are not listed is detected when it starts: unbounded until then
    config["available_node_types"]["worker"]["resources"] = {}
    assert math.isinf(autoscaling_config_node_types(config).shapes[1]["CPU"])


def test_node_types_unreadable_or_invalid_configs_check_nothing(monkeypatch):
    head = {"CPU": 1.0}
    assert _launchable(monkeypatch, None, [head]) == NodeTypes(None)
    assert _launchable(monkeypatch, {"max_workers": 0}, [head]) == NodeTypes(None)  # no node types
    check_stages_feasible(_options(stages={"visualize": {"num_cpus": 4}}), ["visualize"], None)


def test_a_v2_cluster_config_caps_node_groups_by_its_max_resources():
    from ray.core.generated import autoscaler_pb2

    config = autoscaler_pb2.ClusterConfig(
        node_group_configs=[
            autoscaler_pb2.NodeGroupConfig(name="head", resources={"CPU": 1}, max_count=1),
            autoscaler_pb2.NodeGroupConfig(name="small", resources={"CPU": 4}, max_count=5),
            autoscaler_pb2.NodeGroupConfig(name="large", resources={"CPU": 16}, max_count=-1),
            autoscaler_pb2.NodeGroupConfig(name="off", resources={"CPU": 32}, max_count=0),
        ],
        max_resources={"CPU": 8},
    )
    types = cluster_config_node_types(config)
    assert [shape["CPU"] for shape in types.shapes] == [1.0, 4.0]
    assert [shape["CPU"] for shape in types.withheld] == [16.0]
    assert types.limit == "the cluster's max_resources cap CPU=8"
    with pytest.raises(ExportError, match=r"stages\.visualize\.num_cpus: .*largest: 4\).*max_resources cap CPU=8"):
        check_stages_feasible(_options(stages={"visualize": {"num_cpus": 12}}), ["visualize"], *types)
    with pytest.raises(ExportError, match=r"largest: 4\); lower it$"):  # no group could hold it anyway
        check_stages_feasible(_options(stages={"visualize": {"num_cpus": 64}}), ["visualize"], *types)
    del config.max_resources["CPU"]
    assert [shape["CPU"] for shape in cluster_config_node_types(config).shapes] == [1.0, 4.0, 16.0]


def test_sqlite_reads_must_fit_the_drivers_node(tmp_path):
    db = tmp_path / "project.db"
    db.write_bytes(b"")

    def sqlite(**read) -> object:
        return build_options(None, {"db": str(db), "project": "p", "stages": {"read": read}})

    check_read_fits(sqlite(), {"CPU": 2.0, "memory": 8e9})
    with pytest.raises(ExportError) as info:
        check_read_fits(sqlite(num_cpus=3), {"CPU": 2.0})
    assert info.value.exit_code == 2
    assert str(info.value) == (
        "invalid option stages.read.num_cpus: asks for 3 CPU, but reads of a SQLite database run on the "
        "driver's node, which has 2; lower it"
    )
    # a head without CPUs: no read hint can fit (num_cpus must be above 0), so the message says what works
    with pytest.raises(ExportError) as info:
        check_read_fits(sqlite(num_cpus=0.1), {"memory": 8e9})
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "no CPU" in message and "lower it" not in message
    assert "ray start --head --num-cpus=1" in message and "PostgreSQL" in message
    with pytest.raises(ExportError, match=r"stages\.read\.resources\.scanner: asks for 1 scanner"):
        check_read_fits(sqlite(resources={"scanner": 1}), {"CPU": 2.0})
    # PostgreSQL reads run on any node: the driver's node need not hold them
    postgres = {
        "db": "postgresql://u@db/x",
        "project": "p",
        "images_root": "s3://b/u",
        "stages": {"read": {"num_cpus": 4}},
    }
    check_read_fits(build_options(None, postgres), {})
