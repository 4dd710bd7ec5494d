"""The export service's own configuration, and the checks of what one request may ask for.

Pure: no Ray, no HTTP. A request gives the options object of the CLI and options files (keys as in an
options file); the service decides where it may read and write:

- the output (``output``) and a previous export (``reuse``) are files under the exports root
  (``--exports-root``): a relative path is taken under it, an absolute one must lie inside it once every
  symbolic link is resolved; URIs are refused;
- the database (``db``) is one of the service's own (``--db``, the first is the default): a request may
  leave it out or name one of them, nothing else;
- the images root (``images_root``) is one of the service's (``--images-root``, the first is the default),
  a folder inside one of them, or the folder of one of its SQLite databases;
- the Ray cluster (``address``) is the service's.

Every refusal is a :class:`RequestError` naming the option (HTTP 422); a database's text is never
repeated in a message (it may hold a password).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..locations import is_uri
from ..options import ExportOptions, OptionError, build_options, check_option_keys
from ..sources import SourceError, mask_dsn, parse_db_target

#: The environment variable holding the bearer token (when ``--token-file`` is not given).
TOKEN_ENV = "RAY_EXPORT_TOKEN"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: Requests' options the service sets itself.
SERVICE_OWNED_OPTIONS = ("address",)


class ServiceConfigError(ValueError):
    """An invalid ``ray-export serve`` setting; the message names the flag."""


class RequestError(Exception):
    """A request the service refuses: ``status`` (422 for options), the option named, and why."""

    def __init__(self, option: str | None, message: str, status: int = 422) -> None:
        super().__init__(f"invalid option {option}: {message}" if option else message)
        self.option = option
        self.status = status


@dataclass(frozen=True)
class ServiceConfig:
    """What ``ray-export serve`` was started with (paths absolute and resolved)."""

    exports_root: Path
    databases: tuple[str, ...]
    images_roots: tuple[str, ...] = ()
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = field(default=None, repr=False)
    max_concurrent: int = 1
    address: str | None = None


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds only the loopback interface (``localhost``, ``127.x.x.x``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(token_file: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token: the first line of ``token_file``, else ``RAY_EXPORT_TOKEN``, else None."""
    env = os.environ if environ is None else environ
    if token_file:
        try:
            text = Path(token_file).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise ServiceConfigError(
                f"invalid option --token-file: cannot read {token_file}: {exc.strerror or exc}"
            ) from None
        except UnicodeDecodeError:
            raise ServiceConfigError(f"invalid option --token-file: {token_file} is not UTF-8 text") from None
        token = (text.strip().splitlines() or [""])[0].strip()
        if not token:
            raise ServiceConfigError(f"invalid option --token-file: {token_file} holds no token")
        return token
    token = (env.get(TOKEN_ENV) or "").strip()
    return token or None


def check_bind(host: str, token: str | None) -> None:
    """A bind beyond the loopback interface needs a token."""
    if not is_loopback(host) and not token:
        raise ServiceConfigError(
            f"invalid option --host: {host} is reachable from other machines, which needs a bearer token "
            f"(--token-file FILE or {TOKEN_ENV})"
        )


def token_matches(authorization: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (compared in constant time); any
    request passes when the service has no token."""
    if token is None:
        return True
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))


def database_key(text: str) -> str:
    """What identifies a database: the resolved file of a SQLite one, the connection text otherwise."""
    target = parse_db_target(text)
    if target.sqlite_path is not None:
        return "sqlite:" + os.path.realpath(target.sqlite_path)
    return target.dsn.strip()


def make_config(
    exports_root: str,
    databases: list[str] | tuple[str, ...],
    images_roots: list[str] | tuple[str, ...] = (),
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    max_concurrent: int = 1,
    address: str | None = None,
) -> ServiceConfig:
    """Check ``ray-export serve``'s settings into a :class:`ServiceConfig` (:class:`ServiceConfigError`
    names the flag). Relative paths are taken from the current folder."""
    root = Path(exports_root).expanduser()
    if not root.is_dir():
        raise ServiceConfigError(f"invalid option --exports-root: {root} is not a folder")
    if not os.access(root, os.W_OK):
        raise ServiceConfigError(f"invalid option --exports-root: {root} is not writable")
    if not databases:
        raise ServiceConfigError("invalid option --db: the service needs at least one database (--db DSN_OR_PATH)")
    checked_dbs = []
    for db in databases:
        try:
            target = parse_db_target(db)
        except SourceError as exc:
            raise ServiceConfigError(f"invalid option --db: {mask_dsn(str(exc))}") from None
        checked_dbs.append(str(Path(target.sqlite_path).absolute()) if target.sqlite_path is not None else db.strip())
    roots = []
    for images_root in images_roots:
        if is_uri(images_root) and not images_root.startswith("file://"):
            roots.append(images_root.rstrip("/"))
            continue
        local = Path(images_root.removeprefix("file://")).expanduser()
        if not local.is_dir():
            raise ServiceConfigError(f"invalid option --images-root: {local} is not a folder")
        roots.append(os.path.realpath(local))
    if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or not 1 <= max_concurrent <= 64:
        raise ServiceConfigError(f"invalid option --max-concurrent: {max_concurrent!r} is not an integer in 1..64")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ServiceConfigError(f"invalid option --port: {port!r} is not a port number")
    check_bind(host, token)
    return ServiceConfig(
        exports_root=Path(os.path.realpath(root)),
        databases=tuple(checked_dbs),
        images_roots=tuple(roots),
        host=host,
        port=port,
        token=token,
        max_concurrent=max_concurrent,
        address=address,
    )


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def confine_to_exports_root(value: Any, root: Path, option: str) -> str:
    """The file ``value`` names under the exports root, as an absolute resolved path: a relative path is
    taken under ``root``; an absolute one (or one whose links lead) outside ``root`` is refused."""
    if not isinstance(value, str) or not value.strip():
        raise RequestError(option, f"{value!r} is not a non-empty text")
    text = value.strip()
    if is_uri(text):
        raise RequestError(option, "the service writes and reads only files under its exports root (--exports-root)")
    path = Path(text).expanduser() if text.startswith("~") else Path(text)
    candidate = path if path.is_absolute() else root / path
    resolved = os.path.realpath(candidate)
    if resolved == str(root) or not _inside(resolved, str(root)):
        raise RequestError(option, f"{text} is outside the service's exports root (--exports-root)")
    return resolved


def allowed_images_roots(config: ServiceConfig) -> list[str]:
    """The configured images roots and the folders of the configured SQLite databases."""
    roots = list(config.images_roots)
    for db in config.databases:
        target = parse_db_target(db)
        if target.sqlite_path is not None:
            roots.append(os.path.realpath(Path(target.sqlite_path).parent))
    return roots


def confine_images_root(value: Any, config: ServiceConfig) -> str:
    """An images root the service allows: one of its own, or a folder inside one (links resolved)."""
    option = "images_root"
    if not isinstance(value, str) or not value.strip():
        raise RequestError(option, f"{value!r} is not a non-empty text")
    text = value.strip()
    allowed = allowed_images_roots(config)
    if is_uri(text) and not text.startswith("file://"):
        clean = text.rstrip("/")
        parts = clean.split("://", 1)[1].split("/")
        if ".." not in parts and "." not in parts:
            for root in allowed:
                if is_uri(root) and (clean == root or clean.startswith(root + "/")):
                    return clean
    else:
        local = text.removeprefix("file://")
        if os.path.isabs(local):
            resolved = os.path.realpath(local)
            for root in allowed:
                if not is_uri(root) and _inside(resolved, root):
                    return resolved
    raise RequestError(option, "not one of the service's images roots (ray-export serve --images-root) or inside one")


def choose_database(value: Any, config: ServiceConfig) -> str:
    """The service's database a request names (its default when the request names none)."""
    if value is None:
        return config.databases[0]
    refusal = RequestError("db", "not one of the service's databases (ray-export serve --db)")
    if not isinstance(value, str) or not value.strip():
        raise refusal
    try:
        wanted = database_key(value)
    except SourceError:
        raise refusal from None
    for db in config.databases:
        if database_key(db) == wanted:
            return db
    raise refusal


def request_options(body: Any, config: ServiceConfig) -> ExportOptions:
    """The export a request asks for (its options object, keyed as an options file), confined to what
    the service allows; raises :class:`RequestError` naming the first refused option."""
    if not isinstance(body, Mapping):
        raise RequestError("options", "the request body must be a JSON object of options")
    try:
        check_option_keys(body, "the request")
    except OptionError as exc:
        raise RequestError(exc.option, exc.reason) from None
    values = dict(body)
    for key in SERVICE_OWNED_OPTIONS:
        if values.get(key) is not None:
            raise RequestError(key, "set by the service (it runs every export on its own cluster)")
    values["db"] = choose_database(values.get("db"), config)
    if values.get("images_root") is not None:
        values["images_root"] = confine_images_root(values["images_root"], config)
    elif config.images_roots:
        values["images_root"] = config.images_roots[0]
    for key in ("output", "reuse"):
        if values.get(key) is not None:
            values[key] = confine_to_exports_root(values[key], config.exports_root, key)
    try:
        return build_options(None, values)
    except OptionError as exc:
        raise RequestError(exc.option, exc.reason) from None
