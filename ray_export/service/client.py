"""Talking to a running export service over HTTP (standard library only): what ``ray-export export
--service URL``, ``ray-export status/cancel --service URL`` and ``export(..., service=URL)`` use.

The service's answers become what a local export gives: an :class:`~ray_export.run.ExportResult` on
success, :class:`~ray_export.errors.ExportError` (with the exit code the export ended with) or
:class:`~ray_export.errors.ExportCancelled` otherwise.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ExportCancelled, ExportError
from ..options import (
    OPTION_FIELDS,
    VISUALIZATION_FIELDS,
    ExportOptions,
    StageResources,
    VisualizationSettings,
)
from ..run import ExportResult
from .config import read_token

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
POLL_S = 0.5


class ServiceRefused(ExportError):
    """The service refused a request: ``status`` is the HTTP status, ``option`` the option it names."""

    def __init__(self, message: str, status: int, option: str | None = None) -> None:
        super().__init__(message, 2 if status in (401, 403, 404, 409, 422) else 1)
        self.status = status
        self.option = option


def check_service_url(url: str) -> str:
    """``url`` without a trailing slash; a usage error unless it is an ``http(s)://host[:port]`` URL."""
    parsed = urllib.parse.urlparse(url.strip() if isinstance(url, str) else "")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ExportError(f"invalid option service: {url!r} is not an http:// or https:// URL of an export service", 2)
    return url.strip().rstrip("/")


class ServiceClient:
    """The HTTP API of one export service."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.url = check_service_url(url)
        self.token = token
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer of one request; :class:`ServiceRefused` for an error status, ExportError when
        the service cannot be reached."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read().decode("utf-8") or "null")
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read().decode("utf-8"))
            except ValueError:
                answer = {}
            detail = answer.get("detail") if isinstance(answer, dict) else None
            if exc.code == 401:
                detail = f"the export service at {self.url} refused the request: wrong or missing bearer token " \
                    "(--token-file or RAY_EXPORT_TOKEN)"  # fmt: skip
            raise ServiceRefused(str(detail or f"HTTP {exc.code}"), exc.code, answer.get("option")) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ExportError(f"cannot reach the export service at {self.url}: {reason}", 1) from None

    def submit(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Submit an export (its options keyed as in an options file); the service's status of it."""
        return self.request("POST", "/exports", dict(options))

    def status(self, export_id: str) -> dict[str, Any]:
        return self.request("GET", f"/exports/{urllib.parse.quote(export_id, safe='')}")

    def statuses(self) -> list[dict[str, Any]]:
        return self.request("GET", "/exports").get("exports", [])

    def cancel(self, export_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/exports/{urllib.parse.quote(export_id, safe='')}")


def client_for(url: str, token_file: str | None = None) -> ServiceClient:
    """A client with the token of ``token_file`` or ``RAY_EXPORT_TOKEN`` (if any)."""
    from .config import ServiceConfigError

    try:
        token = read_token(token_file)
    except ServiceConfigError as exc:
        raise ExportError(str(exc), 2) from None
    return ServiceClient(url, token)


def result_of(status: Mapping[str, Any]) -> ExportResult:
    """The :class:`ExportResult` of an ended export's status, or its error raised."""
    state = status.get("state")
    if state == "succeeded" and isinstance(status.get("result"), dict):
        values = status["result"]
        return ExportResult(
            export_id=values["export_id"],
            output=values["output"],
            counts=dict(values.get("counts") or {}),
            seconds=float(values.get("seconds") or 0.0),
            timings=dict(values.get("timings") or {}),
            reuse=values.get("reuse"),
        )
    if state == "cancelled":
        raise ExportCancelled()
    raise ExportError(str(status.get("error") or status.get("message") or f"export {state}"),
                      int(status.get("exit_code") or 1))  # fmt: skip


def wait_for(
    client: ServiceClient,
    export_id: str,
    cancel: threading.Event | None = None,
    on_status: Callable[[dict[str, Any]], None] | None = None,
    poll_s: float = POLL_S,
) -> ExportResult:
    """Follow an export until it ends; a set ``cancel`` cancels it on the service (then
    :class:`ExportCancelled`)."""
    cancel = cancel or threading.Event()
    cancel_sent = False
    while True:
        if cancel.is_set() and not cancel_sent:
            status = client.cancel(export_id)
            cancel_sent = True
        else:
            status = client.status(export_id)
        if on_status is not None:
            on_status(status)
        if status.get("state") in TERMINAL_STATES:
            return result_of(status)
        cancel.wait(poll_s) if not cancel_sent else time.sleep(poll_s)


def options_values(options: ExportOptions | Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> dict:
    """The options to send, keyed as in an options file: a mapping (with ``overrides`` merged), or an
    :class:`ExportOptions` turned back into one."""
    from ..options import merge_option_values

    if isinstance(options, ExportOptions):
        if overrides:
            raise TypeError("pass either an ExportOptions object or keyword options, not both")
        return _plain_options(options)
    return merge_option_values(dict(options or {}), dict(overrides))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, VisualizationSettings):
        return {field.key: getattr(value, field.attribute) for field in VISUALIZATION_FIELDS}
    if isinstance(value, dict):
        return {
            key: (item.to_dict() if isinstance(item, StageResources) else _plain(item)) for key, item in value.items()
        }
    return value


def _plain_options(options: ExportOptions) -> dict[str, Any]:
    values = {field.key: _plain(getattr(options, field.attribute)) for field in OPTION_FIELDS}
    return {key: value for key, value in values.items() if value is not None and key != "address"}
