"""Ray addresses as users give them (``--address``, ``RAY_ADDRESS``) and the Ray job a driver runs in."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

RAY_ADDRESS_FORMS = "auto, local, HOST:PORT, ray://HOST:PORT or a dashboard URL http://HOST[:PORT]"
_HOST = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\])$")


def _host_port_problem(hostport: str, port_required: bool = True) -> str | None:
    """What is wrong with ``HOST:PORT`` (``[IPv6]:PORT``), or None."""
    if hostport.startswith("["):
        host, bracket, after = hostport.partition("]")
        host += bracket
        colon, port = after[:1], after[1:]
        if after and colon != ":":
            return f"{hostport!r} is not HOST:PORT"
    else:
        host, colon, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    if not host:
        return "the host is missing"
    if not _HOST.match(host):
        return f"{host!r} is not a host name or IP address"
    if not colon:
        return "the port is missing" if port_required else None
    if not port:
        return "the port is missing"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"the port {port!r} is not a number in 1..65535"
    return None


def ray_address_problem(address: str) -> str | None:
    """What is wrong with a Ray address (``--address``, ``RAY_ADDRESS``), or None when it has one of the
    forms Ray attaches to: ``auto``, ``local``, ``HOST:PORT``, ``ray://HOST:PORT`` (Ray Client) or a
    dashboard URL ``http(s)://HOST[:PORT]`` (the Jobs CLI's form). Only the form is checked: whether a
    cluster answers there is found when Ray starts."""
    text = address if isinstance(address, str) else ""
    if text in ("auto", "local"):
        return None
    scheme, sep, rest = text.partition("://")
    if not sep:
        problem = _host_port_problem(text)
    elif scheme.lower() == "ray":
        problem = _host_port_problem(rest)
    elif scheme.lower() in ("http", "https"):
        problem = _host_port_problem(re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2], port_required=False)
    else:
        problem = f"{scheme}:// is not an address scheme Ray attaches to"
    if problem is None:
        return None
    return f"{address!r} is not a Ray address: {problem} (expected {RAY_ADDRESS_FORMS})"


def job_submission_id(environ: Mapping[str, str] | None = None) -> str | None:
    """The submission id of the Ray job whose entrypoint this process is (``ray job submit``), or None:
    Ray's job supervisor passes the job's metadata to the entrypoint in ``RAY_JOB_CONFIG_JSON_ENV_VAR``."""
    env = os.environ if environ is None else environ
    raw = env.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        submission_id = (json.loads(raw).get("metadata") or {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None
    return submission_id if isinstance(submission_id, str) and submission_id else None


def running_under_job_submit(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is a ``ray job submit`` entrypoint (Ray passes the job's metadata in its env)."""
    return job_submission_id(environ) is not None
