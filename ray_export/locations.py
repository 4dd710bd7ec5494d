"""Where data lives: database DSNs, URIs and local paths, and how a location may be shown."""

from __future__ import annotations

import re

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite://"


def is_postgres_dsn(db: str) -> bool:
    """Whether ``db`` is a PostgreSQL DSN (``postgresql://`` or ``postgres://``)."""
    return isinstance(db, str) and db.strip().lower().startswith(POSTGRES_SCHEMES)


def is_uri(path: str) -> bool:
    """Whether ``path`` is a URI such as ``s3://bucket/key`` (not a local path)."""
    return isinstance(path, str) and "://" in path


def is_remote_uri(path: str) -> bool:
    """A URI other than ``file://`` (which is only a local path written as a URI)."""
    return is_uri(path) and not path.startswith("file://")


def local_path(path: str) -> str:
    """A local path, given plainly or as a ``file://`` URI, as a plain path."""
    return path[len("file://") :] if path.startswith("file://") else path


_URI_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@")
_URI_SECRET_PARAMS = re.compile(
    r"([?&](?:access_key|secret_key|session_token|password|token|sig|signature)=)[^&#]*", re.IGNORECASE
)


def uri_for_display(path: str) -> str:
    """``path`` as it may be shown in messages, status and the result: a URI loses its user info
    (``KEY:SECRET@``) and the values of credential query parameters; plain paths are unchanged."""
    if not is_uri(path):
        return path
    return _URI_SECRET_PARAMS.sub(r"\1***", _URI_USERINFO.sub(r"\1***@", path))
