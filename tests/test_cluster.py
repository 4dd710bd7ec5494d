"""Cluster-level deliverables: ``cluster.yaml``, the demo notebook, and exports on real Ray clusters.

Default suite: ``cluster.yaml`` validates offline and the notebook is a valid nbformat-4 document whose
code cells compile. ``slow``: the notebook's code cells run in order in a fresh Python process.
``cluster``: each test starts its own cluster in subprocesses (``ray start --head --block`` or
``ray.cluster_utils.Cluster``) with its own temp dir under /tmp, explicit free ports and
``RAY_AUTH_MODE=disabled``; the test session's Ray is never touched and ``ray stop`` is never run.
Every process a test starts inherits a marker variable naming the test's temp dir; at the end the test
stops exactly those processes by PID (SIGTERM, then SIGKILL) and checks that none is left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
NOTEBOOK = REPO / "notebooks" / "export_demo.ipynb"
SCRIPTS = Path(__file__).resolve().parent / "cluster_scripts"
VENV_BIN = Path(sys.executable).parent
MARKER_VAR = "RAY_EXPORT_TEST_CLUSTER"
STARTUP_TIMEOUT_S = 120
EXPORT_TIMEOUT_S = 240


# ------------------------------------------------------------------------------------------------ cluster.yaml


def _load_cluster_yaml() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text(encoding="utf-8"))


def test_cluster_yaml_validates_offline():
    """``prepare_config`` only merges the provider's bundled defaults.yaml; no cloud API is called."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load_cluster_yaml()
    config = prepare_config(raw)
    validate_config(config)

    assert "max_workers" in raw  # otherwise the AWS defaults cap the cluster at 2 workers
    assert config["max_workers"] == raw["max_workers"] >= 2
    node_types = config["available_node_types"]
    assert config["head_node_type"] in node_types
    workers = {name: spec for name, spec in node_types.items() if name != config["head_node_type"]}
    assert workers, "at least one worker node type"
    for name, spec in node_types.items():
        assert spec["resources"].get("CPU", 0) >= 1, name
        for resource, amount in spec["resources"].items():
            assert type(amount) is int, f"{name}.resources.{resource} must be an integer"
    for name, spec in workers.items():
        assert 0 <= spec["min_workers"] <= spec["max_workers"], name
    assert sum(spec["min_workers"] for spec in workers.values()) <= config["max_workers"]
    assert any("ray_export" in command and "pip install" in command for command in config["setup_commands"])
    assert any("ray[data,default]==2.60" in command for command in config["setup_commands"])
    for name, spec in node_types.items():  # no fallback to Ray's default AMI (too old for Ray 2.60)
        assert spec["node_config"]["ImageId"].startswith(("ami-", "resolve:ssm:")), name
    for name, spec in workers.items():  # workers read s3:// images roots with their own instance profile
        assert spec["node_config"]["IamInstanceProfile"], name
    venv = "/home/ubuntu/venv/bin/"
    assert any(f"{venv}python -m venv" in c or "python3 -m venv" in c for c in config["setup_commands"])
    assert all(c.startswith(venv) or "venv" not in c for c in config["setup_commands"] if "pip install" in c)
    for command in (*config["head_start_ray_commands"], *config["worker_start_ray_commands"]):
        assert command.startswith(venv) or f"PATH={venv[:-1]}" in command, command
    assert any("boto3" in c for c in config["head_setup_commands"])


def test_cluster_yaml_documents_job_usage():
    text = CLUSTER_YAML.read_text(encoding="utf-8")
    comments = "\n".join(line.lstrip()[1:] for line in text.splitlines() if line.lstrip().startswith("#"))
    commands = re.sub(r"\s*\\\s*\n\s*", " ", comments)  # join shell continuation lines
    assert "ray up cluster.yaml" in commands
    assert re.search(r"ray job submit --address \S+ --working-dir \. -- python -m ray_export export ", commands)
    assert re.search(r"--out /\S+\.zip", comments), "an absolute output path"
    assert re.search(r"--images-root s3://\S+", comments), "an object-store images root"
    assert ".pgpass" in comments and "PGPASSWORD" in comments and "boto3" in comments
    assert "iam:PassRole" in comments
    assert re.search(r"--out s3://\S+\.zip", comments), "an object-store output"
    assert "password" in comments.lower() and "runtime_env" in comments
    assert not re.search(r"postgres(?:ql)?://[^@\s/]*:[^@\s/]*@", text), "no password in any DSN"


SSM_AMI_PREFIX = "resolve:ssm:"
#: root volume each node type needs: the venv, Ray's logs and spilled objects (and on the head the ZIPs)
MIN_ROOT_GIB = {"head": 100, "worker": 32}


def test_cluster_yaml_gives_every_node_a_gp3_root_volume():
    config = _load_cluster_yaml()
    for name, spec in config["available_node_types"].items():
        mappings = spec["node_config"].get("BlockDeviceMappings") or []
        root = [m for m in mappings if m.get("DeviceName") == "/dev/sda1"]  # Ubuntu AMIs' root device
        assert len(root) == 1, f"{name}: no root volume"
        ebs = root[0]["Ebs"]
        assert ebs["VolumeType"] == "gp3", name
        wanted = MIN_ROOT_GIB["head" if name == config["head_node_type"] else "worker"]
        assert type(ebs["VolumeSize"]) is int and ebs["VolumeSize"] >= wanted, name
        assert ebs.get("DeleteOnTermination", True) is True, name


def _put_role_policy(text: str) -> list[str]:
    """The arguments of the one ``aws iam put-role-policy`` command in ``text`` (shell continuations joined)."""
    import shlex

    joined = re.sub(r"\\\n\s*", " ", text)
    commands = re.findall(r"aws iam put-role-policy .*?'[^']*'", joined, flags=re.S)
    assert len(commands) == 1, commands
    return shlex.split(commands[0])


def _policy_of(args: list[str]) -> dict:
    return json.loads(args[args.index("--policy-document") + 1])


def test_the_readme_grants_the_heads_role_what_launching_workers_needs():
    """Workers use the head's instance profile and a ``resolve:ssm:`` AMI: the head's role must be allowed
    iam:PassRole on its own role and ssm:GetParameters on the AMI parameter, which ``ray up`` does not grant."""
    config = _load_cluster_yaml()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(aws iam put-role-policy .*?)```", readme, flags=re.S)
    assert block, "a copy-pasteable put-role-policy command in README.md"
    args = _put_role_policy(block.group(1))
    assert args[:3] == ["aws", "iam", "put-role-policy"]
    role = args[args.index("--role-name") + 1]
    assert role == "ray-autoscaler-v1"  # the role `ray up` creates for the head
    policy = _policy_of(args)
    assert policy["Version"] == "2012-10-17"
    grants = {statement["Action"]: statement for statement in policy["Statement"]}
    assert all(statement["Effect"] == "Allow" for statement in grants.values())

    pass_role = grants["iam:PassRole"]["Resource"]
    workers = {n: s for n, s in config["available_node_types"].items() if n != config["head_node_type"]}
    for name, spec in workers.items():
        profile = spec["node_config"]["IamInstanceProfile"]["Name"]
        assert re.fullmatch(pass_role.replace("*", "[^:]*"), f"arn:aws:iam::123456789012:role/{profile}"), name

    ssm = grants["ssm:GetParameters"]["Resource"]
    assert ssm.startswith("arn:aws:ssm:*::parameter/aws/service/")  # public parameters: no account id
    for name, spec in config["available_node_types"].items():
        image = spec["node_config"]["ImageId"]
        if image.startswith(SSM_AMI_PREFIX):
            parameter = image[len(SSM_AMI_PREFIX) :]
            arn = f"arn:aws:ssm:{config['provider']['region']}::parameter{parameter}"
            assert re.fullmatch(re.escape(ssm).replace(r"\*", ".*"), arn), name

    # cluster.yaml's comments carry the same command
    text = CLUSTER_YAML.read_text(encoding="utf-8")
    comments = "\n".join(line.lstrip()[1:] for line in text.splitlines() if line.lstrip().startswith("#"))
    assert _policy_of(_put_role_policy(comments)) == policy


# ------------------------------------------------------------------------------------------------- notebook


def _notebook() -> dict:
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def _cell_source(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def _code_cells(notebook: dict) -> list[str]:
    return [_cell_source(cell) for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_notebook_is_valid_nbformat4_without_outputs():
    notebook = _notebook()
    assert notebook["nbformat"] == 4
    assert isinstance(notebook["nbformat_minor"], int) and notebook["nbformat_minor"] >= 0
    assert isinstance(notebook["metadata"], dict)
    assert notebook["metadata"]["kernelspec"]["language"] == "python"
    ids = []
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code", "raw")
        assert isinstance(cell["metadata"], dict)
        source = cell["source"]
        assert isinstance(source, str) or all(isinstance(line, str) for line in source)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, "no stored outputs"
        else:
            assert "outputs" not in cell and "execution_count" not in cell
        if notebook["nbformat_minor"] >= 5:
            assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", cell["id"])
            ids.append(cell["id"])
    assert len(ids) == len(set(ids)), "cell ids are unique"


def test_notebook_code_cells_compile_and_cover_the_walkthrough():
    cells = _code_cells(_notebook())
    assert len(cells) >= 5
    for index, source in enumerate(cells):
        compile(source, f"{NOTEBOOK.name}[code cell {index}]", "exec")
    code = "\n".join(cells)
    for needle in (
        "build_demo_project(",
        "ray_export.api.start(",
        ".show_progress()",
        ".progress()",
        "zipfile.ZipFile(",
        "from pycocotools.coco import COCO",
        "pq.read_table(",
        "metrics/metrics.parquet",
    ):
        assert needle in code, needle


# ----------------------------------------------------------------------------------------- process sandbox


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free right now (held together while choosing)."""
    sockets = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _pids_with_env(entry: bytes) -> list[int]:
    """PIDs of live processes whose environment contains ``entry`` (``NAME=value``); zombies have none."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if entry in environ.split(b"\0"):
            found.append(int(name))
    return found


class Sandbox:
    """A short temp dir under /tmp and an environment for the processes of one test.

    Every process started with :meth:`popen` or :meth:`run` (and everything they start: raylets, workers,
    job drivers) inherits ``RAY_EXPORT_TEST_CLUSTER=<temp dir>``; :meth:`stop` signals exactly those PIDs.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rxc", dir="/tmp"))
        (self.root / "ray").mkdir()
        self.marker = f"{MARKER_VAR}={self.root}".encode()
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RAY_", "PYTEST_")) and key not in ("PYTHONPATH",)
        }
        self.env.update(
            {
                MARKER_VAR: str(self.root),
                "RAY_TMPDIR": str(self.root),
                "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_memory_monitor_refresh_ms": "0",
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "PYTHONPATH": str(REPO),
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.popened: list[subprocess.Popen] = []

    def popen(self, args: list[str], log_name: str, **kwargs) -> subprocess.Popen:
        """Start a background process in its own session, its output going to ``<root>/<log_name>``."""
        log = open(self.root / log_name, "wb")  # noqa: SIM115 - the child owns it; closed in stop()
        proc = subprocess.Popen(
            args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
        proc.log_file = log  # type: ignore[attr-defined]
        self.popened.append(proc)
        return proc

    def run(self, args: list[str], timeout: float = EXPORT_TIMEOUT_S, **kwargs) -> subprocess.CompletedProcess:
        """Run a command to completion (text output captured)."""
        return subprocess.run(
            args, env=kwargs.pop("env", self.env), capture_output=True, text=True, timeout=timeout, **kwargs
        )

    def log(self, log_name: str) -> str:
        path = self.root / log_name
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self) -> list[int]:
        return _pids_with_env(self.marker)

    def stop(self) -> list[int]:
        """SIGTERM every marked process, SIGKILL what is left after a grace period; returns survivors."""
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
            for pid in self.pids():
                with suppress(ProcessLookupError):
                    os.kill(pid, sig)
            for proc in self.popened:  # reap our direct children so they do not linger as zombies
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.1)
            deadline = time.monotonic() + grace
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not self.pids():
                break
        for proc in self.popened:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            proc.log_file.close()  # type: ignore[attr-defined]
        return self.pids()


@contextmanager
def sandbox() -> Iterator[Sandbox]:
    """A :class:`Sandbox` whose processes are all stopped (and checked gone) on exit."""
    box = Sandbox()
    try:
        yield box
    finally:
        survivors = box.stop()
        shutil.rmtree(box.root, ignore_errors=True)
        assert not survivors, f"processes of this test still running: {survivors}"


@dataclass
class Head:
    """A ``ray start --head --block`` node: GCS and dashboard ports."""

    gcs_port: int
    dashboard_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"


def _http_json(url: str, method: str = "GET", timeout: float = 10.0):
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode())


def start_head(
    box: Sandbox,
    num_cpus: int = 2,
    dashboard: bool = True,
    extra_args: tuple[str, ...] = (),
    env: dict | None = None,
    gcs_port: int | None = None,
) -> Head:
    """Start a head node and wait until it is up (with the dashboard: until jobs can be submitted).

    Every port is explicit, including the dashboard's and the autoscaler's metrics ports (set through
    their environment variables), so that heads started at the same time on this machine never clash.
    """
    gcs, dashboard_port, client, agent_http, agent_grpc, metrics, runtime_env, dash_metrics, autoscaler_metrics = (
        _free_ports(9)
    )
    gcs = gcs_port or gcs
    box.env.update({"DASHBOARD_METRIC_PORT": str(dash_metrics), "AUTOSCALER_METRIC_PORT": str(autoscaler_metrics)})
    box.env.update(env or {})
    args = [
        str(VENV_BIN / "ray"), "start", "--head", "--block",
        f"--port={gcs}",
        f"--num-cpus={num_cpus}",
        f"--temp-dir={box.root}",
        f"--include-dashboard={str(dashboard).lower()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--object-store-memory={300 * 1024 * 1024}",
        "--disable-usage-stats",
        *extra_args,
    ]  # fmt: skip
    proc = box.popen(args, "head.log")
    head = Head(gcs, dashboard_port)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start --head exited with {proc.returncode}:\n{box.log('head.log')[-4000:]}")
        if "Ray runtime started" in box.log("head.log"):
            if not dashboard:
                return head
            try:
                _http_json(f"{head.dashboard}/api/jobs/", timeout=5)
                return head
            except (OSError, ValueError):
                pass
        time.sleep(0.5)
    pytest.fail(f"the head node did not come up in {STARTUP_TIMEOUT_S} s:\n{box.log('head.log')[-4000:]}")


def job_info(head: Head, submission_id: str) -> dict:
    """The Jobs REST API's record of one job (``status``, ``message``, ...)."""
    return _http_json(f"{head.dashboard}/api/jobs/{submission_id}")


def job_logs(head: Head, submission_id: str) -> str:
    return _http_json(f"{head.dashboard}/api/jobs/{submission_id}/logs").get("logs", "")


def wait_for_job(head: Head, submission_id: str, timeout: float = EXPORT_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job_info(head, submission_id)
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return info
        time.sleep(0.5)
    pytest.fail(f"job {submission_id} did not end in {timeout} s:\n{job_logs(head, submission_id)[-4000:]}")


def export_status(box: Sandbox, head: Head, export_id: str) -> dict | None:
    """``python -m ray_export status ID --json`` from another process; None while the export is unknown."""
    done = box.run(
        [sys.executable, "-m", "ray_export", "status", export_id, "--json", "--address", head.address], timeout=60
    )
    if done.returncode == 2 and "no export" in done.stderr:
        return None
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def local_export(box: Sandbox, db: Path, project: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """A plain export on a local Ray started on demand by the CLI (in the sandbox's temp dir)."""
    return box.run(
        [sys.executable, "-m", "ray_export", "export", "--db", str(db), "--project", project,
         "--out", str(out), "--quiet", *extra],
        cwd=str(box.root),
    )  # fmt: skip


def _assert_same_zip(actual: Path, expected: Path) -> None:
    with zipfile.ZipFile(actual) as a, zipfile.ZipFile(expected) as b:
        assert a.namelist() == b.namelist()
        for name in a.namelist():
            assert a.read(name) == b.read(name), f"member {name} differs"
    assert actual.read_bytes() == expected.read_bytes()


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster_demo(tmp_path_factory):
    from ray_export.demo import build_demo_project

    return build_demo_project(tmp_path_factory.mktemp("cluster-demo"), n_images=12, seed=0)


@pytest.fixture(scope="module")
def reference_zip(cluster_demo, tmp_path_factory) -> Path:
    """The demo exported with default options on a single-node local Ray (its own subprocess)."""
    out = tmp_path_factory.mktemp("reference") / "reference.zip"
    with sandbox() as box:
        done = local_export(box, cluster_demo.db_path, cluster_demo.project_id, out)
    assert done.returncode == 0, done.stderr[-4000:]
    assert out.is_file()
    return out


# ----------------------------------------------------------------------------------------------- jobs


@pytest.mark.cluster
def test_job_submit_export_matches_local_export(cluster_demo, reference_zip, tmp_path):
    out = tmp_path / "job-export.zip"
    with sandbox() as box:
        head = start_head(box)
        submitted = box.run(
            [
                str(VENV_BIN / "ray"), "job", "submit", "--address", head.dashboard, "--submission-id", "rx-job-1",
                "--", "python", "-m", "ray_export", "export",
                "--db", str(cluster_demo.db_path), "--project", cluster_demo.project_id, "--out", str(out),
            ],
            cwd=str(box.root),
        )  # fmt: skip
        info = wait_for_job(head, "rx-job-1")
        logs = job_logs(head, "rx-job-1")
        assert info["status"] == "SUCCEEDED", f"{submitted.stdout[-2000:]}\n{logs[-4000:]}"
        assert submitted.returncode == 0
        export_id = re.search(r"export id: ([0-9a-f]+)", logs).group(1)
        assert re.search(r"^done: 12 images, ", logs, re.MULTILINE), logs[-3000:]
        snapshot = export_status(box, head, export_id)
    assert snapshot["state"] == "succeeded"
    assert snapshot["output"] == str(out)
    assert snapshot["done"]["write"] == snapshot["totals"]["write"] == 12
    _assert_same_zip(out, reference_zip)


STAGE_TASK_STATES_SCRIPT = """
import json, sys
from ray.util.state import list_tasks

tasks = list_tasks(address=sys.argv[1], filters=[("type", "=", "NORMAL_TASK")], limit=10000,
                   raise_on_missing_output=False)
print(json.dumps({t.task_id: t.state for t in tasks if "_stage" in t.name}))
"""


def _stage_task_states(box: Sandbox, head: Head) -> dict[str, str]:
    """State of every stage task the cluster has seen, by task id (Ray's state API)."""
    done = box.run([sys.executable, "-c", STAGE_TASK_STATES_SCRIPT, head.dashboard], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _submit_export(box: Sandbox, head: Head, submission_id: str, demo, out: Path) -> str:
    """Submit an export of ``demo`` as a job; returns its export id once it runs (and has images left)."""
    submitted = box.run(
        [
            str(VENV_BIN / "ray"), "job", "submit", "--address", head.dashboard, "--submission-id", submission_id,
            "--no-wait", "--", "python", "-m", "ray_export", "export",
            "--db", str(demo.db_path), "--project", demo.project_id, "--out", str(out),
            "--batch-size", "copy=2", "--batch-size", "visualize=2", "--batch-size", "annotate=2",
            "--batch-size", "metrics=2", "--batch-size", "read=2",
        ],
        timeout=60,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    export_id = None
    deadline = time.monotonic() + EXPORT_TIMEOUT_S
    while export_id is None and time.monotonic() < deadline:
        found = re.search(r"export id: ([0-9a-f]+)", job_logs(head, submission_id))
        export_id = found.group(1) if found else None
        assert job_info(head, submission_id)["status"] in ("PENDING", "RUNNING")
        time.sleep(0.3)
    assert export_id, "the job never printed its export id"
    snapshot = None
    while time.monotonic() < deadline:
        snapshot = export_status(box, head, export_id)
        if snapshot is not None and snapshot["done"].get("copy", 0) > 0:
            break
    assert snapshot is not None and snapshot["state"] == "running", snapshot
    assert snapshot["done"]["write"] < snapshot["totals"]["write"]
    return export_id


def _assert_nothing_advances(box: Sandbox, head: Head, export_id: str) -> dict:
    """Once the job ended: no stage task is running, and over a few seconds no stage counter moves
    and no new stage task appears. Returns the final snapshot."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tasks = _stage_task_states(box, head)
        if not any(state in ("RUNNING", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER") for state in tasks.values()):
            break
        time.sleep(1)
    first = export_status(box, head, export_id)
    time.sleep(3)
    later_tasks = _stage_task_states(box, head)
    later = export_status(box, head, export_id)
    assert later["done"] == first["done"], (first["done"], later["done"])
    assert set(later_tasks) == set(tasks), "a stage task started after the cancel"
    assert not [t for t, state in later_tasks.items() if state == "RUNNING"]
    stages = [k for k in later["totals"] if k != "write"]
    assert min(later["done"][k] for k in stages) < later["totals"][stages[0]], "cancelled before the end"
    return later


@pytest.mark.cluster
def test_job_stop_and_cli_cancel_stop_the_export(tmp_path):
    """``ray job stop`` and ``ray-export cancel`` (given the GCS address) on running exports: the export is
    ``cancelled``, no file is left, no stage task runs or starts and no stage counter moves afterwards.
    Both end the job STOPPED: the export records its job's submission id, and ``ray-export cancel`` stops
    that job through the Jobs API (as ``ray job stop`` does) before it asks the export to cancel.

    The head keeps Ray's default grace between SIGTERM and SIGKILL (3 s): the export removes its partial
    output and records ``cancelled`` well inside it.
    """
    from ray_export.demo import build_demo_project

    # large enough that the export is still running when the test stops it (a small one is done first)
    demo = build_demo_project(tmp_path / "demo400", n_images=400, seed=0)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with sandbox() as box:
        head = start_head(box)

        export_id = _submit_export(box, head, "rx-stop-1", demo, out_dir / "stopped.zip")
        stopped = box.run([str(VENV_BIN / "ray"), "job", "stop", "--address", head.dashboard, "rx-stop-1"], timeout=120)
        assert stopped.returncode == 0, stopped.stderr[-3000:]
        assert wait_for_job(head, "rx-stop-1")["status"] == "STOPPED"
        final = _assert_nothing_advances(box, head, export_id)
        assert final["state"] == "cancelled", (final, job_logs(head, "rx-stop-1")[-3000:])

        export_id = _submit_export(box, head, "rx-cancel-1", demo, out_dir / "cancelled.zip")
        assert export_status(box, head, export_id)["job_submission_id"] == "rx-cancel-1"
        cancelled = box.run([sys.executable, "-m", "ray_export", "cancel", export_id, "--address", head.address],
                            timeout=60)  # fmt: skip
        assert cancelled.returncode == 0, cancelled.stderr[-3000:]
        assert cancelled.stdout.strip() == f"cancel requested for {export_id} (its Ray job rx-cancel-1 is stopped)"
        assert "warning" not in cancelled.stderr, cancelled.stderr
        info = wait_for_job(head, "rx-cancel-1")
        assert info["status"] == "STOPPED", (info, job_logs(head, "rx-cancel-1")[-3000:])
        final = _assert_nothing_advances(box, head, export_id)
        assert final["state"] == "cancelled", (final, job_logs(head, "rx-cancel-1")[-3000:])
        assert sorted(p.name for p in out_dir.iterdir()) == [], "no output, partial or spool file"
        shown = box.run([sys.executable, "-m", "ray_export", "status", export_id, "--address", head.dashboard],
                        timeout=60)  # fmt: skip
        # RAY_ADDRESS in the Jobs CLI's form (the dashboard URL) attaches an export to that cluster too
        small = build_demo_project(tmp_path / "demo4", n_images=4, seed=0)
        attached_out = tmp_path / "attached.zip"
        attached = box.run(
            [sys.executable, "-m", "ray_export", "export", "--db", str(small.db_path), "--project", small.project_id,
             "--out", str(attached_out), "--quiet"],
            env={**box.env, "RAY_ADDRESS": head.dashboard},
        )  # fmt: skip
        exports_on_head = box.run([sys.executable, "-m", "ray_export", "status", "--address", head.dashboard],
                                  timeout=60)  # fmt: skip
    assert attached.returncode == 0, attached.stderr[-3000:]
    assert attached.stdout.strip().splitlines()[0] == str(attached_out)
    assert zipfile.ZipFile(attached_out).testzip() is None
    assert exports_on_head.returncode == 0 and exports_on_head.stdout.count("succeeded") >= 1, exports_on_head.stdout
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert re.search(rf"^\[{export_id}\] cancelled ", shown.stdout, re.MULTILINE), shown.stdout
    assert re.search(r"^  started: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, ended: \d{4}-", shown.stdout, re.MULTILINE)
    assert sorted(p.name for p in out_dir.iterdir()) == [], "no output, partial or spool file"


# ------------------------------------------------------------------------------------------ multi-node


@pytest.mark.cluster
def test_multinode_export_is_byte_identical(cluster_demo, reference_zip, tmp_path):
    out = tmp_path / "multinode.zip"
    with sandbox() as box:
        done = box.run(
            [
                sys.executable, str(SCRIPTS / "multinode_export.py"),
                "--db", str(cluster_demo.db_path), "--project", cluster_demo.project_id, "--out", str(out),
                "--temp-dir", str(box.root), "--ports", ",".join(map(str, _free_ports(4))), "--batch-size", "2",
            ],
            cwd=str(box.root),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["alive_nodes"] == 3
    assert report["counts"]["images"] == 12
    assert len(report["stage_nodes"]) >= 2, report  # stage tasks ran on more than one node
    _assert_same_zip(out, reference_zip)


# ----------------------------------------------------------------------------------------- autoscaling


def fake_autoscaling_config(gcs_port: int, worker_cpus: int = 1) -> dict:
    """A complete ``fake_multinode`` autoscaling config: a 1-CPU head and up to two workers of
    ``worker_cpus`` CPUs, none at the start.

    The monitor reads this file as is (no defaults are merged in: the provider's example.yaml is not in
    the pip wheel), so every field is given.
    """
    return {
        "cluster_name": "ray-export-fake",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 1,
        "docker": {},
        "auth": {"ssh_user": "ubuntu"},
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{gcs_port}",
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "ray.worker.cpu": {
                "resources": {"CPU": worker_cpus, "object_store_memory": 150 * 1024 * 1024},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


STAGE_TASKS_SCRIPT = """
import json, sys
import ray
from ray.util.state import list_tasks

ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
head = next(n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])
tasks = list_tasks(address=sys.argv[2], filters=[("type", "=", "NORMAL_TASK")], limit=10000,
                   raise_on_missing_output=False)
print(json.dumps({"head": head, "tasks": [[t.name, t.node_id] for t in tasks if t.node_id]}))
"""


def _stage_task_nodes(box: Sandbox, head: Head) -> tuple[str, dict[str, set[str]]]:
    """The head's node id, and for each stage the nodes its tasks ran on (Ray's state API)."""
    done = box.run([sys.executable, "-c", STAGE_TASKS_SCRIPT, head.address, head.dashboard], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    listing = json.loads(done.stdout.strip().splitlines()[-1])
    nodes: dict[str, set[str]] = {}
    for name, node_id in listing["tasks"]:
        for stage in re.findall(r"(\w+)_stage", name):
            nodes.setdefault(stage, set()).add(node_id)
    return listing["head"], nodes


ALIVE_NODES_SCRIPT = """
import sys
import ray

ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(sum(1 for node in ray.nodes() if node["Alive"]))
"""


def _wait_for_alive_nodes(box: Sandbox, head: Head, wanted: int, timeout_s: float) -> int:
    """Poll the cluster until it has ``wanted`` alive nodes (or the time is up); the last count seen."""
    deadline = time.monotonic() + timeout_s
    alive = -1
    while time.monotonic() < deadline:
        done = box.run([sys.executable, "-c", ALIVE_NODES_SCRIPT, head.address], timeout=60)
        if done.returncode == 0:
            alive = int(done.stdout.strip().splitlines()[-1])
            if alive == wanted:
                break
        time.sleep(5)
    return alive


@pytest.mark.cluster
def test_autoscaled_workers_run_the_stages_and_an_infeasible_hint_is_refused(cluster_demo, reference_zip, tmp_path):
    """A ``fake_multinode`` head with 1 CPU and 2-CPU workers (none at the start).

    - ``--num-cpus visualize=4`` fits no node type: exit 2 before any work, naming the option.
    - Later stages asking for 2 CPUs fit only a launched worker: with a local images root (copy pinned
      to the head) and with a shared one, each starting from zero workers, the export grows the cluster,
      the visualize tasks run on a launched worker, and the ZIP is the reference's.
    """
    export = [sys.executable, "-m", "ray_export", "export", "--db", str(cluster_demo.db_path),
              "--project", cluster_demo.project_id, "--quiet"]  # fmt: skip
    two_cpu_stages = ["--num-cpus", "visualize=2", "--num-cpus", "annotate=2", "--num-cpus", "metrics=2"]
    with sandbox() as box:
        gcs_port = _free_ports(1)[0]
        config_path = box.root / "fake-autoscaling.yaml"
        config_path.write_text(yaml.safe_dump(fake_autoscaling_config(gcs_port, worker_cpus=2)), encoding="utf-8")
        box.env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
        head = start_head(box, num_cpus=1, extra_args=(f"--autoscaling-config={config_path}",), gcs_port=gcs_port)

        infeasible = box.run(
            [*export, "--out", str(tmp_path / "infeasible.zip"), "--address", head.address,
             "--num-cpus", "visualize=4"],
            cwd=str(box.root), timeout=90,
        )  # fmt: skip
        assert infeasible.returncode == 2, infeasible.stderr[-3000:]
        assert "--num-cpus visualize=4" in infeasible.stderr and "largest: 2" in infeasible.stderr  # the flag
        assert not (tmp_path / "infeasible.zip").exists()

        outputs = {"local": tmp_path / "local-root.zip", "shared": tmp_path / "shared-root.zip"}
        local = box.run([*export, "--out", str(outputs["local"]), "--address", head.address, *two_cpu_stages],
                        cwd=str(box.root))  # fmt: skip
        assert local.returncode == 0, local.stderr[-4000:]
        head_node, local_nodes = _stage_task_nodes(box, head)
        # the shared-root export starts from zero workers too: wait until the idle ones are scaled down
        alive_before_shared = _wait_for_alive_nodes(box, head, 1, timeout_s=240)
        shared = box.run(
            [*export, "--out", str(outputs["shared"]), "--address", head.address, *two_cpu_stages,
             "--shared-images-root"],
            cwd=str(box.root),
        )  # fmt: skip
        assert shared.returncode == 0, shared.stderr[-4000:]
        _, all_nodes = _stage_task_nodes(box, head)
        monitor_log = "\n".join(p.read_text(errors="replace") for p in box.root.glob("session_*/logs/monitor.log"))
    assert "fake_multinode" in monitor_log, "the autoscaler ran with the fake provider"
    assert alive_before_shared == 1, "the launched workers were scaled down before the shared-root export"
    # local images root: copy stays on the head (the only node with the files), the rest ran on workers
    assert local_nodes["copy"] == {head_node}, local_nodes
    assert local_nodes["visualize"] and head_node not in local_nodes["visualize"], local_nodes
    # shared images root: visualize ran on workers launched for this export (new node ids, not the head)
    shared_visualize_nodes = all_nodes["visualize"] - local_nodes["visualize"]
    assert shared_visualize_nodes and head_node not in shared_visualize_nodes, all_nodes
    for out in outputs.values():
        _assert_same_zip(out, reference_zip)


NOTEBOOK_SESSION_SCRIPT = """
import json, logging, sys, time
import ray
import ray_export.api as rx

names = ("ray", "ray.data", "ray.data._internal.execution.streaming_executor", "ray.data._internal.progress")
before = {name: logging.getLogger(name).level for name in names}
handle = rx.start(db=sys.argv[1], project=sys.argv[2], output=sys.argv[3])
result = handle.wait(timeout=300)
after = {name: logging.getLogger(name).level for name in names}
ray.init(ignore_reinit_error=True)  # the user's own call: a no-op, as after their own ray.init()

@ray.remote
def greet():
    print("hello from a user task", flush=True)
    return 1

ray.get(greet.remote())
time.sleep(2)  # worker output reaches the driver asynchronously
ctx = ray.get_runtime_context()
print(json.dumps({"before": before, "after": after, "images": result.counts["images"], "namespace": ctx.namespace}))
"""


@pytest.mark.cluster
def test_ray_started_by_an_export_behaves_like_the_users_own(cluster_demo, tmp_path):
    """``rx.start`` before any ``ray.init``: Ray is started as a plain ``ray.init()`` would (the user's
    task output reaches their console, their ``ray.init(ignore_reinit_error=True)`` is a no-op, the
    namespace is anonymous) and every logger level is as before the export."""
    out = tmp_path / "notebook.zip"
    with sandbox() as box:
        done = box.run(
            [sys.executable, "-c", NOTEBOOK_SESSION_SCRIPT, str(cluster_demo.db_path), cluster_demo.project_id,
             str(out)],
            cwd=str(box.root),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "hello from a user task" in done.stdout
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["images"] == 12
    assert report["after"] == report["before"]
    assert report["namespace"] != "ray_export"
    assert out.is_file()


# ---------------------------------------------------------------------------------------- notebook, run


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path):
    script = "\n\n".join(_code_cells(_notebook()))
    (tmp_path / "export_demo.py").write_text(script, encoding="utf-8")
    with sandbox() as box:
        done = box.run([sys.executable, "export_demo.py"], cwd=str(tmp_path))
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-4000:]}"
    output = tmp_path / "ray-export-demo" / "demo-export.zip"
    assert output.is_file()
    with zipfile.ZipFile(output) as archive:
        assert archive.testzip() is None
        report = json.loads(archive.read("documentation/export_report.json"))
    assert report["counts"]["images"] == 12
    assert "succeeded" in done.stdout
    assert re.search(r"^12 images, \d+ annotations$", done.stdout, re.MULTILINE)
