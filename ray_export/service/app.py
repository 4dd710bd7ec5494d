"""The export service's HTTP API (FastAPI). It only talks to the :class:`~.runner.ExportService`; no
export runs inside a request, so a client that goes away cancels nothing.

Every request needs ``Authorization: Bearer <token>`` when the service has a token (401 otherwise,
compared in constant time). The schema is served at ``/openapi.json``; ``docs/service.md`` describes
the API.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import Body, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from .. import __version__
from .config import RequestError, token_matches
from .runner import ExportGone, ExportNotReady, UnknownServiceExport

#: How often an event stream looks at the export (seconds), and sends a comment when nothing changed.
EVENTS_POLL_S = 0.5
EVENTS_KEEPALIVE_S = 15.0
#: Snapshot fields that change on every look without news (left out when deciding to send an event).
_VOLATILE_FIELDS = ("heartbeat_age_s", "updated_at", "eta_s", "throughput_images_per_s")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

_EXPORT_EXAMPLE = {
    "project": "Spheroids 2024",
    "output": "spheroids-2024.zip",
    "annotations": ["coco", "yolo"],
    "metrics": ["csv", "xlsx"],
    "visualization": {"stroke_width": 3},
}


class BearerToken:
    """ASGI middleware: every HTTP request and websocket needs the service's bearer token."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.token is not None and scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or ())
            authorization = headers.get(b"authorization", b"").decode("latin-1")
            if not token_matches(authorization, self.token):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                response = JSONResponse(
                    {"detail": "a bearer token is required (Authorization: Bearer <token>)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _refused(exc: RequestError) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "option": exc.option}, status_code=exc.status)


def _not_found(export_id: str) -> JSONResponse:
    return JSONResponse({"detail": f"no export {export_id} on this service"}, status_code=404)


def _event(name: str, data: dict[str, Any], number: int) -> bytes:
    return f"event: {name}\nid: {number}\ndata: {json.dumps(data, default=str)}\n\n".encode()


def create_app(service: Any) -> FastAPI:
    """The API of ``service`` (an :class:`~.runner.ExportService`)."""
    app = FastAPI(
        title="ray-export service",
        version=__version__,
        description="Exports of segmentation projects into one ZIP, run on a Ray cluster. See docs/service.md.",
    )

    @app.get("/healthz", summary="The service is up: its queue and running exports")
    def healthz() -> dict[str, Any]:
        return service.health()

    @app.post(
        "/exports",
        status_code=202,
        summary="Submit an export",
        description="The body is the options object of the CLI and options files (keys as in an options "
        "file). The database, the images root and the output are confined to what the service allows; a "
        "refused or invalid option is 422 naming it, and nothing is started.",
        responses={422: {"description": "an invalid or refused option (named in `option`)"}},
    )
    def submit(options: dict[str, Any] = Body(..., examples=[_EXPORT_EXAMPLE])) -> Any:  # noqa: B008
        try:
            record = service.submit(options)
        except RequestError as exc:
            return _refused(exc)
        status = service.status(record.export_id)
        return JSONResponse(
            {"id": record.export_id, **status}, status_code=202, headers={"Location": f"/exports/{record.export_id}"}
        )

    @app.get("/exports", summary="Every export of this service, oldest first")
    def list_exports() -> dict[str, Any]:
        return {"exports": service.statuses()}

    @app.get(
        "/exports/{export_id}",
        summary="One export's status: the progress snapshot of `ray-export status --json`, with "
        "queue_position, result, error and download",
        responses={404: {"description": "no such export"}},
    )
    def get_export(export_id: str) -> Any:
        try:
            return service.status(export_id)
        except UnknownServiceExport:
            return _not_found(export_id)

    @app.delete(
        "/exports/{export_id}",
        summary="Cancel an export (state cancelled, no output left); of a succeeded export, remove its ZIP",
        responses={404: {"description": "no such export"}},
    )
    def cancel_export(export_id: str) -> Any:
        try:
            return service.cancel(export_id)
        except UnknownServiceExport:
            return _not_found(export_id)

    @app.get(
        "/exports/{export_id}/download",
        summary="The ZIP of a succeeded export (Content-Length; Range requests)",
        response_class=FileResponse,
        responses={
            200: {"content": {"application/zip": {}}},
            206: {"description": "the requested range"},
            404: {"description": "no such export"},
            409: {"description": "the export has no ZIP (not finished, failed or cancelled)"},
            410: {"description": "the ZIP is gone (removed or replaced)"},
        },
    )
    def download(export_id: str) -> Any:
        try:
            path = service.download_path(export_id)
        except UnknownServiceExport:
            return _not_found(export_id)
        except ExportNotReady as exc:
            return JSONResponse({"detail": str(exc)}, status_code=409)
        except ExportGone as exc:
            return JSONResponse({"detail": str(exc)}, status_code=410)
        return FileResponse(path, media_type="application/zip", filename=path.name)

    @app.get(
        "/exports/{export_id}/events",
        summary="Live progress as server-sent events: `progress` events, then one `end` event",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}, 404: {"description": "no such export"}},
    )
    async def events(export_id: str) -> Any:
        try:
            first = await run_in_threadpool(service.status, export_id)
        except UnknownServiceExport:
            return _not_found(export_id)

        async def stream() -> Any:
            snapshot, number, last_key, quiet_s = first, 0, None, 0.0
            while True:
                key = json.dumps({k: v for k, v in snapshot.items() if k not in _VOLATILE_FIELDS}, default=str)
                if snapshot.get("state") in TERMINAL:
                    number += 1
                    yield _event("end", snapshot, number)
                    return
                if key != last_key:
                    number += 1
                    last_key, quiet_s = key, 0.0
                    yield _event("progress", snapshot, number)
                elif quiet_s >= EVENTS_KEEPALIVE_S:
                    quiet_s = 0.0
                    yield b": keep-alive\n\n"
                await asyncio.sleep(EVENTS_POLL_S)
                quiet_s += EVENTS_POLL_S
                snapshot = await run_in_threadpool(service.status, export_id)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    _add_bearer_scheme(app, service.config.token is not None)
    app.add_middleware(BearerToken, token=service.config.token)
    return app


def _add_bearer_scheme(app: FastAPI, required: bool) -> None:
    """Declare the bearer token in the OpenAPI schema (required on every operation when the service has one)."""
    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain_openapi()
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
            }
            if required:
                schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
