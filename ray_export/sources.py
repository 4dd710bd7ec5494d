"""Reading the SpheroSeg database: PostgreSQL through psycopg 3, or a SQLite file.

The exporter only reads. Two kinds of query run against the database:

* the light driver-side listing (:func:`resolve_project`, :func:`list_images`): ids, names, sizes,
  ``updatedAt`` and ``pixelSizeUm`` of the selected images in export order, no polygons;
* the heavy projected read (:func:`fetch_image_rows`), run inside read tasks for a list of image ids,
  selecting only the columns the chosen outputs need.

Every user value is a bound parameter. Passwords never appear in messages: :meth:`DbTarget.display`
and :func:`mask_dsn` replace them with ``***``.
"""

from __future__ import annotations

import difflib
import math
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote
from urllib.request import pathname2url

from .problems import Problem

SQLITE = "sqlite"
POSTGRES = "postgres"

#: SQLite allows at most 999 bound parameters in old builds; id lists are sent in chunks of this size.
SQLITE_CHUNK = 500

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_PG_SCHEMES = ("postgresql://", "postgres://")
_URL_SCHEME = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://")
_CONNINFO_KEY = re.compile(r"^\s*[A-Za-z_]+\s*=")
_CONNECT_TIMEOUT_S = 10


class SourceError(Exception):
    """A fatal problem with the database or the selection; ``exit_code`` 2 = usage, 1 = runtime."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return (type(self), (self.message, self.exit_code))


# --------------------------------------------------------------------------------------------------
# targets and masking


def mask_dsn(text: str) -> str:
    """``text`` with any password replaced by ``***`` (URL user info, ``?password=`` or ``password=``)."""
    if not text:
        return text
    masked = text
    scheme = _URL_SCHEME.match(masked)
    if scheme:
        start = scheme.end()
        at = masked.rfind("@")
        if at > start:
            userinfo = masked[start:at]
            if ":" in userinfo:
                user = userinfo.split(":", 1)[0]
                masked = f"{masked[:start]}{user}:***{masked[at:]}"
    masked = re.sub(r"([?&](?:ssl)?password=)[^&#]*", r"\1***", masked, flags=re.IGNORECASE)
    if _CONNINFO_KEY.match(text):
        masked = re.sub(
            r"(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)", r"\1***", masked, flags=re.IGNORECASE
        )
    return masked


def _password_candidates(text: str) -> list[str]:
    """Substrings of an unparsable DSN that may be its password (what :func:`mask_dsn` hides)."""
    masked = mask_dsn(text)
    if masked == text:
        return []
    found: list[str] = []
    matcher = difflib.SequenceMatcher(a=masked, b=text, autojunk=False)
    for tag, _i1, _i2, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "insert") and j2 > j1:
            found.append(text[j1:j2])
    return sorted(found, key=len, reverse=True)


def _dsn_password(dsn: str) -> str | None:
    try:
        from psycopg.conninfo import conninfo_to_dict

        value = conninfo_to_dict(dsn).get("password")
    except Exception:
        return None
    return str(value) if value else None


@dataclass(frozen=True)
class DbTarget:
    """Where the data lives. ``dsn`` holds the real connection string and is never printed."""

    kind: str
    dsn: str = field(repr=False)
    sqlite_path: Path | None = None

    def display(self) -> str:
        """The target as it may be shown to a user (password masked)."""
        if self.kind == SQLITE:
            return str(self.sqlite_path)
        return mask_dsn(self.dsn)

    def scrub(self, message: str) -> str:
        """``message`` with this target's password (and any DSN-looking password) masked."""
        out = mask_dsn(message)
        if self.kind == POSTGRES:
            password = _dsn_password(self.dsn)
            if password:
                out = out.replace(password, "***")
        return out

    def __repr__(self) -> str:
        return f"DbTarget(kind={self.kind!r}, target={self.display()!r})"

    def __str__(self) -> str:
        return self.display()


def _validate_pg_dsn(text: str) -> None:
    try:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(text)
    except Exception as exc:
        detail = _first_line(exc).replace(text, mask_dsn(text))
        for secret in _password_candidates(text):
            detail = detail.replace(secret, "***")
        raise SourceError(f"malformed PostgreSQL DSN {mask_dsn(text)}: {detail}", exit_code=2) from None
    port = str(params.get("port") or "")
    for part in port.split(","):
        if part and (not part.isdigit() or not 0 < int(part) < 65536):
            raise SourceError(f"malformed PostgreSQL DSN {mask_dsn(text)}: port {part!r} is not a number", 2)


def parse_db_target(text: str) -> DbTarget:
    """Parse ``--db``: a ``postgresql://`` DSN, a libpq ``key=value`` string, ``sqlite:///path`` or a path."""
    if not isinstance(text, str) or not text.strip():
        raise SourceError("no database given (--db)", exit_code=2)
    raw = text.strip()
    lower = raw.lower()
    if lower.startswith(_PG_SCHEMES):
        _validate_pg_dsn(raw)
        return DbTarget(kind=POSTGRES, dsn=raw)
    if lower.startswith("sqlite:"):
        rest = raw[len("sqlite:"):]
        if rest.startswith("///"):
            path_text = unquote(rest[3:])
        elif rest.startswith("//"):
            raise SourceError(f"malformed SQLite URL {raw!r}: use sqlite:///path", exit_code=2)
        else:
            path_text = unquote(rest)
        if not path_text:
            raise SourceError(f"malformed SQLite URL {raw!r}: no path", exit_code=2)
        path = Path(path_text).expanduser()
        # sqlite:///rel/x.db is relative (sqlite:////abs/x.db absolute); sqlite:///abs/x.db is accepted
        # as absolute when no such relative file exists.
        if not path.is_absolute() and not path.exists() and Path("/", path_text).is_file():
            path = Path("/", path_text)
        return _sqlite_target(path)
    if "://" in raw:
        scheme = raw.split("://", 1)[0]
        raise SourceError(
            f"unsupported database URL scheme {scheme!r} in {mask_dsn(raw)} (use postgresql:// or sqlite:///)", 2
        )
    if _CONNINFO_KEY.match(raw) and not Path(raw).exists():
        _validate_pg_dsn(raw)
        return DbTarget(kind=POSTGRES, dsn=raw)
    return _sqlite_target(Path(raw).expanduser())


def _sqlite_target(path: Path) -> DbTarget:
    resolved = path.resolve()
    if not resolved.is_file():
        what = "is not a file" if resolved.exists() else "does not exist"
        raise SourceError(f"SQLite database {path} {what}", exit_code=2)
    return DbTarget(kind=SQLITE, dsn=str(resolved), sqlite_path=resolved)


# --------------------------------------------------------------------------------------------------
# text values


class ReplacedText(str):
    """A database text value that held invalid UTF-8: the bad bytes were replaced by U+FFFD."""


def decode_text(raw: bytes) -> str:
    """UTF-8 bytes as text; invalid bytes become U+FFFD and the result is a :class:`ReplacedText`.

    SQLite hands TEXT values to this (its ``text_factory``), so one bad value never fails a query.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return ReplacedText(raw.decode("utf-8", errors="replace"))


def text_value(value: Any) -> str | None:
    """A text column value as ``str`` (bytes decoded by :func:`decode_text`; None stays None)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode_text(bytes(value))
    return str(value)


def invalid_utf8_problem(column: str, value: str) -> Problem:
    """The ``text_invalid_utf8`` problem of one column's value (named, not quoted: it may be long)."""
    return Problem("text_invalid_utf8", "read", f"{column} held invalid UTF-8; {len(value)} characters read "
                   "with U+FFFD in place of the bad bytes")


# --------------------------------------------------------------------------------------------------
# connections and error mapping


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_missing_schema(exc: BaseException) -> bool:
    try:
        import psycopg.errors as pg_errors

        if isinstance(exc, (pg_errors.UndefinedTable, pg_errors.UndefinedColumn, pg_errors.InvalidSchemaName)):
            return True
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, sqlite3.DatabaseError):
        text = str(exc).lower()
        return "no such table" in text or "no such column" in text or "file is not a database" in text
    return False


def map_db_error(target: DbTarget, exc: BaseException, action: str = "querying") -> SourceError:
    """Turn a driver exception into a :class:`SourceError` (exit 1) with the password masked."""
    if isinstance(exc, SourceError):
        return exc
    detail = target.scrub(_first_line(exc))
    if _is_missing_schema(exc):
        return SourceError(f"not a SpheroSeg database: {target.display()}: {detail}", exit_code=1)
    return SourceError(f"database error while {action} {target.display()}: {detail}", exit_code=1)


def sqlite_readonly_uri(path: Path | str) -> str:
    """``file:`` URI opening ``path`` read-only (never creating it); use with ``uri=True``."""
    return f"file:{pathname2url(str(Path(path).resolve()))}?mode=ro"


def _is_bad_dsn_parameter(exc: BaseException, detail: str) -> bool:
    """libpq's complaints about the DSN itself (a usage error), not about the server."""
    import psycopg

    text = detail.lower()
    if isinstance(exc, psycopg.ProgrammingError):
        return True  # psycopg raises it for options it cannot parse (bad value, unknown parameter)
    return any(marker in text for marker in ("invalid sslmode value", "invalid connection option", "bad value for"))


def connect(target: DbTarget) -> Any:
    """Open a read-only DB-API connection (psycopg autocommit + read-only session, or SQLite ``mode=ro``)."""
    if target.kind == SQLITE:
        assert target.sqlite_path is not None
        uri = sqlite_readonly_uri(target.sqlite_path)
        try:
            conn = sqlite3.connect(uri, uri=True)
            conn.text_factory = decode_text
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise SourceError(
                f"cannot open SQLite database {target.display()}: {_first_line(exc)}", exit_code=1
            ) from None
        return conn
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(target.dsn)
    except Exception:
        raise SourceError(f"malformed PostgreSQL DSN {target.display()}", exit_code=2) from None
    extra: dict[str, Any] = {}
    if "connect_timeout" not in params:
        extra["connect_timeout"] = _CONNECT_TIMEOUT_S
    try:
        conn = psycopg.connect(target.dsn, autocommit=True, **extra)
    except psycopg.Error as exc:
        detail = target.scrub(_first_line(exc))
        if _is_bad_dsn_parameter(exc, detail):
            raise SourceError(f"malformed PostgreSQL DSN {target.display()}: {detail}", exit_code=2) from None
        raise SourceError(f"cannot connect to {target.display()}: {detail}", exit_code=1) from None
    try:
        conn.execute("SET default_transaction_read_only = on")
    except psycopg.Error as exc:
        conn.close()
        raise map_db_error(target, exc, "configuring") from None
    return conn


@contextmanager
def _connection(target: DbTarget) -> Iterator[Any]:
    conn = connect(target)
    try:
        yield conn
    finally:
        conn.close()


def _sql(kind: str, text: str) -> str:
    """Queries are written with ``%s`` placeholders; SQLite uses ``?``."""
    return text.replace("%s", "?") if kind == SQLITE else text


def _query(conn: Any, kind: str, text: str, params: Sequence[Any] = ()) -> list[tuple]:
    cur = conn.cursor()
    try:
        cur.execute(_sql(kind, text), tuple(params))
        return list(cur.fetchall())
    finally:
        cur.close()


# --------------------------------------------------------------------------------------------------
# values


def parse_timestamp(value: Any) -> datetime | None:
    """A timestamp column value (datetime, ISO text, epoch milliseconds) as an aware UTC datetime."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, (int, float)):
        return _from_epoch_ms(float(value))
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    if re.fullmatch(r"[+-]?\d{10,}(\.\d*)?", text):  # epoch milliseconds as text (2001 onwards)
        return _from_epoch_ms(float(text))
    text = re.sub(r"\s*(?:[zZ]|UTC|GMT)$", "+00:00", text)
    text = re.sub(r"\s+([+-]\d{2}(?::?\d{2})?)$", r"\1", text)
    text = re.sub(r"([+-]\d{2})$", r"\1:00", text)
    text = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", text)
    # Python < 3.11 accepts only 3 or 6 fraction digits.
    match = re.search(r"\.(\d+)(?=$|[+-])", text)
    if match:
        digits = (match.group(1) + "000000")[:6]
        text = text[: match.start(1)] + digits + text[match.end(1):]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


def _from_epoch_ms(ms: float) -> datetime | None:
    if not math.isfinite(ms):
        return None
    try:
        return _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        return None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "t", "true", "yes", "y", "on")
    return bool(value)


def _int_or_none(value: Any) -> int | None:
    f = _float_or_none(value)
    return None if f is None else int(f)


def _float_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _positive_pair(width: Any, height: Any) -> bool:
    """Whether both values are sizes greater than zero."""
    w, h = _int_or_none(width), _int_or_none(height)
    return w is not None and h is not None and w > 0 and h > 0


def _newest(*stamps: datetime | None) -> datetime | None:
    present = [s for s in stamps if s is not None]
    return max(present) if present else None


# --------------------------------------------------------------------------------------------------
# project and light listing


@dataclass(frozen=True)
class ProjectRow:
    """The exported project."""

    id: str
    title: str
    type: str
    updated_at: datetime | None


@dataclass(frozen=True)
class ImageEntry:
    """One selected image as the driver knows it before the heavy read."""

    index: int
    image_id: str
    name: str
    pixel_size_um: float | None
    updated_at: datetime | None
    #: a positive width and height pair in ``segmentations`` or in ``images`` (else only the file has it)
    size_in_database: bool
    #: the ``text_invalid_utf8`` problems of the listed values (the name), as problem dicts
    problems: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class ImageListing:
    """The selected images in export order, the ids asked for that were not found, the export time."""

    entries: list[ImageEntry]
    unknown_image_ids: list[str]
    newest_updated_at: datetime | None


_PROJECT_BY_ID = {
    POSTGRES: 'SELECT id::text, title, type, "updatedAt" FROM projects WHERE id::text = %s',
    SQLITE: 'SELECT id, title, type, "updatedAt" FROM projects WHERE id = %s',
}
_PROJECT_BY_TITLE = {
    POSTGRES: 'SELECT id::text, title, type, "updatedAt" FROM projects WHERE title = %s ORDER BY id::text',
    SQLITE: 'SELECT id, title, type, "updatedAt" FROM projects WHERE title = %s ORDER BY id',
}


def _project_row(row: tuple) -> ProjectRow:
    return ProjectRow(
        id=str(row[0]),
        title=text_value(row[1]) or "",
        type=str(row[2]) if row[2] else "spheroid",
        updated_at=parse_timestamp(row[3]),
    )


def resolve_project(target: DbTarget, id_or_title: str) -> ProjectRow:
    """Find the project by id, else by exact title; unknown or ambiguous -> :class:`SourceError` (exit 2)."""
    if not isinstance(id_or_title, str) or not id_or_title.strip():
        raise SourceError("no project given (--project)", exit_code=2)
    kind = target.kind
    try:
        with _connection(target) as conn:
            rows = _query(conn, kind, _PROJECT_BY_ID[kind], [id_or_title])
            if not rows:
                rows = _query(conn, kind, _PROJECT_BY_TITLE[kind], [id_or_title])
    except SourceError:
        raise
    except Exception as exc:
        raise map_db_error(target, exc, "reading projects from") from None
    if not rows:
        raise SourceError(f"unknown project {id_or_title!r} (no project has that id or title)", exit_code=2)
    if len(rows) > 1:
        ids = ", ".join(str(r[0]) for r in rows)
        raise SourceError(
            f"ambiguous project title {id_or_title!r}: {len(rows)} projects have it (ids: {ids}); pass an id",
            exit_code=2,
        )
    return _project_row(rows[0])


_LIGHT_COLUMNS = (
    'i.id, i.name, s."imageWidth", s."imageHeight", i.width, i.height, i."pixelSizeUm", i."displayOrder", '
    'i."createdAt", i."updatedAt", i."isVideoContainer", s."updatedAt"'
)
_LIGHT_QUERY = {
    POSTGRES: (
        f"SELECT {_LIGHT_COLUMNS.replace('i.id,', 'i.id::text,', 1)} FROM images i "
        'LEFT JOIN segmentations s ON s."imageId" = i.id WHERE i."projectId"::text = %s'
    ),
    SQLITE: (
        f"SELECT {_LIGHT_COLUMNS} FROM images i "
        'LEFT JOIN segmentations s ON s."imageId" = i.id WHERE i."projectId" = %s'
    ),
}
_PROJECT_UPDATED = {
    POSTGRES: 'SELECT "updatedAt" FROM projects WHERE id::text = %s',
    SQLITE: 'SELECT "updatedAt" FROM projects WHERE id = %s',
}

_FAR_FUTURE = datetime.max.replace(tzinfo=timezone.utc)


def _export_sort_key(row: tuple) -> tuple:
    display_order = _int_or_none(row[7])
    created = parse_timestamp(row[8])
    return (
        display_order is None,
        display_order if display_order is not None else 0,
        created is None,
        created if created is not None else _FAR_FUTURE,
        str(row[0]),
    )


def list_images(target: DbTarget, project_id: str, image_ids: Sequence[str] | None = None) -> ImageListing:
    """The light listing: the project's selected images in export order with 1-based indexes.

    Video containers are never selected. ``image_ids`` (optional) restricts the selection; ids that
    are not images of the project (or are video containers) are returned in ``unknown_image_ids``.
    No image selected -> :class:`SourceError` (exit 2).
    """
    kind = target.kind
    try:
        with _connection(target) as conn:
            rows = _query(conn, kind, _LIGHT_QUERY[kind], [project_id])
            project_rows = _query(conn, kind, _PROJECT_UPDATED[kind], [project_id])
    except SourceError:
        raise
    except Exception as exc:
        raise map_db_error(target, exc, "listing images of") from None

    images = [r for r in rows if not _truthy(r[10])]
    images.sort(key=_export_sort_key)
    unknown: list[str] = []
    if image_ids is not None:
        wanted: list[str] = []
        seen: set[str] = set()
        for raw_id in image_ids:
            image_id = str(raw_id).strip()
            if image_id and image_id not in seen:
                seen.add(image_id)
                wanted.append(image_id)
        available = {str(r[0]) for r in images}
        unknown = [i for i in wanted if i not in available]
        images = [r for r in images if str(r[0]) in seen]

    entries: list[ImageEntry] = []
    for position, r in enumerate(images, start=1):
        name = text_value(r[1]) or ""
        problems = (invalid_utf8_problem("images.name", name).to_dict(),) if isinstance(name, ReplacedText) else ()
        entries.append(
            ImageEntry(
                index=position,
                image_id=str(r[0]),
                name=name,
                pixel_size_um=_float_or_none(r[6]),
                updated_at=_newest(parse_timestamp(r[9]), parse_timestamp(r[11])),
                size_in_database=_positive_pair(r[2], r[3]) or _positive_pair(r[4], r[5]),
                problems=problems,
            )
        )
    if not entries:
        detail = " of the given image ids" if image_ids is not None else ""
        raise SourceError(f"no images selected: project {project_id} has no exportable images{detail}", exit_code=2)
    project_updated = parse_timestamp(project_rows[0][0]) if project_rows else None
    newest = _newest(project_updated, *(e.updated_at for e in entries))
    return ImageListing(entries=entries, unknown_image_ids=unknown, newest_updated_at=newest)


# --------------------------------------------------------------------------------------------------
# what a project type reads about the project

_VIDEO_CONTAINERS = {
    POSTGRES: 'SELECT id::text, name FROM images WHERE "projectId"::text = %s AND "isVideoContainer" ORDER BY id::text',
    SQLITE: 'SELECT id, name FROM images WHERE "projectId" = %s AND "isVideoContainer" ORDER BY id',
}
_MT_TYPE_LABELS = {
    POSTGRES: 'SELECT "mtTypeLabels"::text FROM projects WHERE id::text = %s',
    SQLITE: 'SELECT "mtTypeLabels" FROM projects WHERE id = %s',
}


def video_containers(target: DbTarget, project_id: str) -> list[tuple[str, str]]:
    """``(id, name)`` of the project's video container rows (never exported themselves), by id."""
    try:
        with _connection(target) as conn:
            rows = _query(conn, target.kind, _VIDEO_CONTAINERS[target.kind], [project_id])
    except SourceError:
        raise
    except Exception as exc:
        raise map_db_error(target, exc, "listing videos of") from None
    return [(str(row[0]), str(text_value(row[1]) or "")) for row in rows]


def mt_type_labels(target: DbTarget, project_id: str) -> str | None:
    """The project's ``"mtTypeLabels"`` JSON text; None when unset or when the schema has no such column."""
    try:
        with _connection(target) as conn:
            rows = _query(conn, target.kind, _MT_TYPE_LABELS[target.kind], [project_id])
    except SourceError:
        raise
    except Exception as exc:
        if _is_missing_schema(exc) or "mtTypeLabels" in str(exc):
            return None
        raise map_db_error(target, exc, "reading the type labels of") from None
    value = text_value(rows[0][0]) if rows else None
    return None if value is None else str(value)


# --------------------------------------------------------------------------------------------------
# heavy projected read

#: output column -> (SQL expression for PostgreSQL, SQL expression for SQLite)
_HEAVY_EXPRESSIONS: dict[str, tuple[str, str]] = {
    "image_id": ("i.id::text", "i.id"),
    "original_path": ('i."originalPath"', 'i."originalPath"'),
    "db_width": ("i.width", "i.width"),
    "db_height": ("i.height", "i.height"),
    "seg_width": ('s."imageWidth"', 's."imageWidth"'),
    "seg_height": ('s."imageHeight"', 's."imageHeight"'),
    "polygons": ("s.polygons::text", "s.polygons"),
}
#: Columns a project type may add to the heavy read (see ``ProjectType.read_columns``): output column ->
#: (PostgreSQL, SQLite expression). Timestamps are read back as UTC ISO text.
TYPE_READ_EXPRESSIONS: dict[str, tuple[str, str]] = {
    "seg_model": ("s.model", "s.model"),
    "created_at": ('i."createdAt"', 'i."createdAt"'),
    "parent_video_id": ('i."parentVideoId"::text', 'i."parentVideoId"'),
    "frame_index": ('i."frameIndex"', 'i."frameIndex"'),
}
_HEAVY_EXPRESSIONS.update(TYPE_READ_EXPRESSIONS)
#: Output columns read as integers (every other one is text).
INT_COLUMNS = frozenset({"db_width", "db_height", "seg_width", "seg_height", "frame_index"})
_TIME_COLUMNS = frozenset({"created_at"})
_COLUMN_NAMES = {
    "image_id": "images.id",
    "original_path": 'images."originalPath"',
    "polygons": "segmentations.polygons",
}


def projected_columns(need_polygons: bool, need_path: bool, extra: Sequence[str] = ()) -> list[str]:
    """Output columns of the heavy read for the chosen outputs (always id and both size pairs) and the
    project type's ``extra`` columns (names of :data:`TYPE_READ_EXPRESSIONS`)."""
    columns = ["image_id"]
    if need_path:
        columns.append("original_path")
    columns += ["db_width", "db_height", "seg_width", "seg_height"]
    if need_polygons:
        columns.append("polygons")
    for name in extra:
        if name not in TYPE_READ_EXPRESSIONS:
            raise ValueError(f"no read column {name!r}")
        columns.append(name)
    return columns


def heavy_query(kind: str, columns: Sequence[str], n_ids: int) -> str:
    """The projected ``images LEFT JOIN segmentations`` query for ``n_ids`` bound ids (SQLite) or an array."""
    pick = 0 if kind == POSTGRES else 1
    select = ", ".join(f"{_HEAVY_EXPRESSIONS[c][pick]} AS {c}" for c in columns)
    base = f'SELECT {select} FROM images i LEFT JOIN segmentations s ON s."imageId" = i.id WHERE '
    if kind == POSTGRES:
        return base + "i.id::text = ANY(%s)"
    return base + "i.id IN (" + ", ".join(["?"] * n_ids) + ")"


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def fetch_image_rows(
    conn: Any, kind: str, image_ids: list[str], need_polygons: bool, need_path: bool, extra: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Fetch the projected columns for ``image_ids`` (any order; one dict per found image).

    Each dict also has ``problems``: the ``text_invalid_utf8`` problems (as dicts) of its text values.
    """
    columns = projected_columns(need_polygons, need_path, extra)
    ids = [str(i) for i in image_ids]
    if not ids:
        return []
    raw_rows: list[tuple] = []
    cur = conn.cursor()
    try:
        if kind == POSTGRES:
            cur.execute(heavy_query(kind, columns, len(ids)), (ids,))
            raw_rows.extend(cur.fetchall())
        else:
            for chunk in _chunks(ids, SQLITE_CHUNK):
                cur.execute(heavy_query(kind, columns, len(chunk)), tuple(chunk))
                raw_rows.extend(cur.fetchall())
    finally:
        cur.close()
    out: list[dict[str, Any]] = []
    for raw in raw_rows:
        row: dict[str, Any] = {}
        problems: list[dict[str, str]] = []
        for name, value in zip(columns, raw, strict=True):
            if name in INT_COLUMNS:
                row[name] = _int_or_none(value)
                continue
            if name in _TIME_COLUMNS:
                moment = parse_timestamp(value)
                row[name] = None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                continue
            text = text_value(value)
            if isinstance(text, ReplacedText):
                problems.append(invalid_utf8_problem(_COLUMN_NAMES.get(name, name), text).to_dict())
            row[name] = None if text is None else str(text)
        row["problems"] = problems
        out.append(row)
    return out
