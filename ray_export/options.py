"""Export options: one options object for the CLI, the Python API and options files.

The options are checked here (:meth:`ExportOptions.validate`); the command line's flags are made from the
same table in :mod:`ray_export.option_flags`, Ray addresses are parsed in :mod:`ray_export.ray_address`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .format_names import ANNOTATION_FORMATS, COCO_HOLES_CHOICES, DEFAULT_COCO_HOLES, METRIC_FORMATS, format_choices
from .formats.base import STAGE_ORDER
from .locations import SQLITE_SCHEME, is_postgres_dsn, is_uri
from .ray_address import ray_address_problem
from .reuse import FILE_FINGERPRINTS
from .segments import CPUS_PER_WRITER, MAX_WRITERS


class OptionError(ValueError):
    """An invalid option; the message names the option."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"invalid option {option}: {message}")
        self.option = option
        #: what is wrong, without the option's name
        self.reason = message


_COLOUR = re.compile(r"^#[0-9A-Fa-f]{6}$")
VIZ_FORMAT_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


@dataclass(frozen=True)
class VisualizationSettings:
    """How overlays are drawn."""

    external_color: str = "#FF0000"
    internal_color: str = "#0000FF"
    stroke_width: int = 2
    font_size: int = 32
    fill_opacity: float = 0.3
    show_numbers: bool = True
    format: str = "png"

    def validate(self) -> None:
        """Raise :class:`OptionError` naming the first invalid setting."""
        for name in ("external_color", "internal_color"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _COLOUR.match(value):
                raise OptionError(name, f"{value!r} is not a #RRGGBB colour")
        _check_int("stroke_width", self.stroke_width, 1, 10)
        _check_int("font_size", self.font_size, 10, 50)
        op = self.fill_opacity
        if isinstance(op, bool) or not isinstance(op, (int, float)) or not 0.0 <= float(op) <= 1.0:
            raise OptionError("fill_opacity", f"{op!r} is not a number in 0..1")
        if not isinstance(self.show_numbers, bool):
            raise OptionError("show_numbers", f"{self.show_numbers!r} is not true/false")
        if self.format not in VIZ_FORMAT_EXTENSIONS:
            raise OptionError("viz_format", f"{self.format!r} is not one of png, jpeg, webp")

    @property
    def extension(self) -> str:
        """File extension of visualization members, with the dot."""
        return VIZ_FORMAT_EXTENSIONS[self.format]

    @staticmethod
    def rgb(colour: str) -> tuple[int, int, int]:
        """``#RRGGBB`` -> ``(r, g, b)``."""
        return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise OptionError(name, f"{value!r} is not an integer in {lo}..{hi}")


# ---------------------------------------------------------------------------------------------------------
# Per-stage resource hints
# ---------------------------------------------------------------------------------------------------------

#: Pipeline stages that take resource hints, in pipeline order.
#: the map stages in pipeline order come from the format declarations; "read" is the database read before them
STAGE_NAMES: tuple[str, ...] = ("read", *STAGE_ORDER)
#: The stages run by ``map_batches`` (all but the read).
MAP_STAGES: tuple[str, ...] = STAGE_ORDER
MAX_STAGE_CPUS = 64.0
MAX_BATCH_SIZE = 10_000


@dataclass(frozen=True)
class StageResources:
    """Ray resource hints and batch size of one stage.

    ``resources`` holds custom Ray resources as sorted ``(name, amount)`` pairs (a mapping given to the
    constructor is converted), so the object stays hashable; :meth:`resource_dict` gives the mapping back.
    """

    num_cpus: float = 1.0
    memory: int | None = None
    resources: tuple[tuple[str, float], ...] = ()
    batch_size: int = 32

    def __post_init__(self) -> None:
        resources = self.resources
        if isinstance(resources, Mapping):
            resources = resources.items()
        try:
            pairs = tuple(sorted((str(name), amount) for name, amount in resources))
        except (TypeError, ValueError):
            pairs = self.resources  # left for validate() to reject
        object.__setattr__(self, "resources", pairs)

    def resource_dict(self) -> dict[str, float]:
        """Custom resources as a dict (``{}`` when none)."""
        return {name: float(amount) for name, amount in self.resources}

    def ray_remote_args(self) -> dict[str, Any]:
        """Keyword arguments for Ray (``num_cpus``, and ``memory``/``resources`` when set)."""
        args: dict[str, Any] = {"num_cpus": float(self.num_cpus)}
        if self.memory is not None:
            args["memory"] = int(self.memory)
        if self.resources:
            args["resources"] = self.resource_dict()
        return args

    def validate(self, stage: str) -> None:
        """Raise :class:`OptionError` naming ``stages.<stage>.<field>`` for the first invalid field."""
        prefix = f"stages.{stage}"
        cpus = self.num_cpus
        if not _is_number(cpus) or not 0.0 < float(cpus) <= MAX_STAGE_CPUS:
            raise OptionError(f"{prefix}.num_cpus", f"{cpus!r} is not a number in (0, {MAX_STAGE_CPUS:g}]")
        if self.memory is not None and (
            isinstance(self.memory, bool) or not isinstance(self.memory, int) or self.memory <= 0
        ):
            raise OptionError(f"{prefix}.memory", f"{self.memory!r} is not a positive number of bytes")
        _check_int(f"{prefix}.batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        if not isinstance(self.resources, tuple):
            raise OptionError(f"{prefix}.resources", f"{self.resources!r} is not a mapping of name -> amount")
        for pair in self.resources:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise OptionError(f"{prefix}.resources", f"{pair!r} is not a (name, amount) pair")
            name, amount = pair
            if not name:
                raise OptionError(f"{prefix}.resources", "a resource name is empty")
            if not _is_number(amount) or not float(amount) >= 0.0:
                raise OptionError(f"{prefix}.resources.{name}", f"{amount!r} is not a number >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain form, as in an options file."""
        return {
            "num_cpus": self.num_cpus,
            "memory": self.memory,
            "resources": self.resource_dict(),
            "batch_size": self.batch_size,
        }


#: Defaults per stage. The four map stages ask for the same resources so Ray fuses them into one task
#: per batch (no object-store hop between stages); giving one stage other hints splits it out.
DEFAULT_STAGE_RESOURCES: dict[str, StageResources] = {
    "read": StageResources(num_cpus=1.0, batch_size=32),
    "copy": StageResources(num_cpus=1.0, batch_size=16),
    "visualize": StageResources(num_cpus=1.0, batch_size=16),
    "annotate": StageResources(num_cpus=1.0, batch_size=16),
    "metrics": StageResources(num_cpus=1.0, batch_size=16),
}


def default_stages() -> dict[str, StageResources]:
    """A fresh copy of :data:`DEFAULT_STAGE_RESOURCES`."""
    return dict(DEFAULT_STAGE_RESOURCES)


# ---------------------------------------------------------------------------------------------------------
# The export options object
# ---------------------------------------------------------------------------------------------------------

# the built-in format choices are the defaults; validation accepts formats registered later too
DEFAULT_MT_THICKNESS = 5.0
MAX_MT_THICKNESS = 100.0
DEFAULT_MT_MARGIN = 2.0
MAX_MT_MARGIN = 20.0
MIN_SCALE_UM_PER_PX = 0.001
MAX_SCALE_UM_PER_PX = 1000.0
DEFAULT_MAX_BUFFERED_IMAGES = 256
MAX_BUFFERED_IMAGES_LIMIT = 100_000
#: Largest original file read (bytes); a bigger one is refused for its image (``file_too_large``).
DEFAULT_MAX_FILE_BYTES = 2 << 30
#: Longest time one original may take to read (seconds) before it is given up (``file_read_timeout``).
DEFAULT_READ_TIMEOUT_S = 300.0
MAX_READ_TIMEOUT_S = 86_400.0
#: Largest image decoded (width x height from the file's header); a bigger one is not decoded (``image_too_large``).
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
#: How long a read task keeps reconnecting to an unreachable database before the export fails (seconds).
DEFAULT_DB_RETRY_S = 60.0
MAX_DB_RETRY_S = 86_400.0
DEFAULT_STALL_TIMEOUT_S = 300.0
MIN_STALL_TIMEOUT_S = 1.0
MAX_STALL_TIMEOUT_S = 7 * 24 * 3600.0
def check_environment_address(address: str | None, environ: Mapping[str, str] | None = None) -> None:
    """Without an address given, Ray attaches to ``RAY_ADDRESS``: raise :class:`OptionError` naming that
    variable when it is set to something that is not a Ray address."""
    env = os.environ if environ is None else environ
    value = env.get("RAY_ADDRESS")
    if address is None and value:
        problem = ray_address_problem(value)
        if problem:
            raise OptionError("RAY_ADDRESS (environment variable)", problem)


def _split_names(value: Any) -> Any:
    """``"a, b"`` -> ``("a", "b")``; lists/tuples -> tuples of stripped strings; other values unchanged."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)):
        return tuple(item.strip() if isinstance(item, str) else item for item in value)
    return value


def _normalize_formats(value: Any, canonical: tuple[str, ...]) -> Any:
    """Lower-case, dedupe and put known format names in canonical order; ``none`` alone -> ``()``.

    Anything that is not clearly valid is returned as a tuple untouched for ``validate()`` to report.
    """
    items = _split_names(value)
    if not isinstance(items, tuple):
        return items
    if not all(isinstance(item, str) for item in items):
        return items
    lowered = tuple(item.lower() for item in items)
    if lowered == ("none",):
        return ()
    if not set(lowered) <= set(canonical):
        return lowered
    return tuple(name for name in canonical if name in lowered)


def _dedupe(items: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class ExportOptions:
    """Everything an export needs to know. Build it with :func:`build_options` or directly.

    Lists given as sequences or comma strings are normalised on construction (tuples, canonical order
    for formats, ``"none"`` -> ``()``); :meth:`validate` checks the rest. ``stages`` is a plain dict
    (stage name -> :class:`StageResources`), so the object is not hashable.
    """

    db: str
    project: str
    image_ids: tuple[str, ...] | None = None
    output: str | None = None
    force: bool = False
    images_root: str | None = None
    #: the local images root is mounted at the same path on every node (then the copy stage may run anywhere)
    shared_images_root: bool = False
    address: str | None = None
    include_originals: bool = True
    include_visualizations: bool = True
    annotations: tuple[str, ...] = ANNOTATION_FORMATS
    metrics: tuple[str, ...] = METRIC_FORMATS
    include_docs: bool = True
    visualization: VisualizationSettings = field(default_factory=VisualizationSettings)
    scale_um_per_px: float | None = None
    stages: dict[str, StageResources] = field(default_factory=default_stages)
    max_buffered_images: int = DEFAULT_MAX_BUFFERED_IMAGES
    #: ZIP writer actors (None: one per 8 CPUs of the cluster); never changes the bytes
    writers: int | None = None
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    #: seconds a read task keeps reconnecting to an unreachable database (0: fail at once)
    db_retry_s: float = DEFAULT_DB_RETRY_S
    #: a running stage with work waiting that advances for this long is reported as stalled
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    #: an earlier export of the project (path or URI) whose unchanged images are taken over
    reuse: str | None = None
    #: how an original file enters its image's fingerprint: ``sha256`` of its bytes or its ``mtime``
    file_fingerprint: str = "sha256"
    #: how COCO writes objects with holes: ``rle`` (compressed RLE) or ``polygons`` (one bridged polygon each)
    coco_holes: str = DEFAULT_COCO_HOLES
    #: microtubule projects: the width of the band intensities are measured in, and of the background band
    mt_thickness: float = DEFAULT_MT_THICKNESS
    mt_margin: float = DEFAULT_MT_MARGIN

    def __post_init__(self) -> None:
        ids = self.image_ids
        if ids is not None:
            ids = _split_names(ids)
            if isinstance(ids, tuple):
                ids = _dedupe(ids)
        object.__setattr__(self, "image_ids", ids)
        # the registry is read now, not at import: a format registered later is a valid choice too
        object.__setattr__(self, "annotations", _normalize_formats(self.annotations, format_choices("annotations")))
        object.__setattr__(self, "metrics", _normalize_formats(self.metrics, format_choices("metrics")))
        if isinstance(self.stages, Mapping):
            stages = default_stages()
            stages.update(self.stages)
            object.__setattr__(self, "stages", stages)

    def validate(self, under_job: bool = False) -> None:
        """Raise :class:`OptionError` naming the first invalid option.

        ``under_job``: the export runs as a ``ray job submit`` entrypoint, where the output must be
        given and be absolute or a URI (the job's working folder is temporary).
        """
        _check_text("db", self.db)
        if is_uri(self.db) and not (is_postgres_dsn(self.db) or self.db.strip().lower().startswith(SQLITE_SCHEME)):
            raise OptionError("db", "expected a postgresql:// DSN, sqlite:///path or a plain SQLite file path")
        _check_text("project", self.project)
        self._validate_image_ids()
        if self.output is not None:
            _check_text("output", self.output)
        if under_job and (self.output is None or not (os.path.isabs(self.output) or is_uri(self.output))):
            raise OptionError("output", "under `ray job submit` the output must be given as an absolute path or URI")
        for option in _BOOLEAN_FIELDS:
            value = getattr(self, option.attribute)
            if not isinstance(value, bool):
                raise OptionError(option.name, f"{value!r} is not true/false")
        if self.images_root is not None:
            _check_text("images_root", self.images_root)
        elif is_postgres_dsn(self.db):
            raise OptionError("images_root", "required with a PostgreSQL database (--images-root)")
        if self.address is not None:
            _check_text("address", self.address)
            problem = ray_address_problem(self.address)
            if problem:
                raise OptionError("address", problem)
        _check_formats("annotations", self.annotations, format_choices("annotations"))
        _check_formats("metrics", self.metrics, format_choices("metrics"))
        if not isinstance(self.visualization, VisualizationSettings):
            raise OptionError("visualization", f"{self.visualization!r} is not a VisualizationSettings")
        try:
            self.visualization.validate()
        except OptionError as exc:
            if exc.option != "viz_format":
                raise
            raise OptionError("visualization.format", exc.reason) from None  # the key, as options files have it
        scale = self.scale_um_per_px
        if scale is not None and (
            not _is_number(scale) or not MIN_SCALE_UM_PER_PX <= float(scale) <= MAX_SCALE_UM_PER_PX
        ):
            raise OptionError(
                "scale", f"{scale!r} is not a number in {MIN_SCALE_UM_PER_PX:g}..{MAX_SCALE_UM_PER_PX:g} µm/px"
            )
        if not isinstance(self.stages, dict):
            raise OptionError("stages", "expected a mapping of stage name -> StageResources")
        for stage, hints in self.stages.items():
            if stage not in STAGE_NAMES:
                raise OptionError(f"stages.{stage}", f"unknown stage; expected one of {', '.join(STAGE_NAMES)}")
            if not isinstance(hints, StageResources):
                raise OptionError(f"stages.{stage}", f"{hints!r} is not a StageResources")
            hints.validate(stage)
        _check_int("max_buffered_images", self.max_buffered_images, 1, MAX_BUFFERED_IMAGES_LIMIT)
        if self.writers is not None:
            _check_int("writers", self.writers, 1, MAX_WRITERS)
        _check_positive_int("max_file_bytes", self.max_file_bytes)
        timeout = self.read_timeout_s
        if not _is_number(timeout) or not 0.0 < float(timeout) <= MAX_READ_TIMEOUT_S:
            raise OptionError(
                "read_timeout_s", f"{timeout!r} is not a number of seconds in (0, {MAX_READ_TIMEOUT_S:g}]"
            )
        _check_positive_int("max_image_pixels", self.max_image_pixels)
        if not _is_number(self.db_retry_s) or not 0.0 <= float(self.db_retry_s) <= MAX_DB_RETRY_S:
            raise OptionError("db_retry_s", f"{self.db_retry_s!r} is not a number of seconds in 0..{MAX_DB_RETRY_S:g}")
        stall = self.stall_timeout_s
        if not _is_number(stall) or not MIN_STALL_TIMEOUT_S <= float(stall) <= MAX_STALL_TIMEOUT_S:
            raise OptionError(
                "stall_timeout_s",
                f"{stall!r} is not a number of seconds in {MIN_STALL_TIMEOUT_S:g}..{MAX_STALL_TIMEOUT_S:g}",
            )
        if self.reuse is not None:
            _check_text("reuse", self.reuse)
        if self.file_fingerprint not in FILE_FINGERPRINTS:
            raise OptionError(
                "file_fingerprint", f"{self.file_fingerprint!r} is not one of {', '.join(FILE_FINGERPRINTS)}"
            )
        if self.coco_holes not in COCO_HOLES_CHOICES:
            raise OptionError("coco_holes", f"{self.coco_holes!r} is not one of {', '.join(COCO_HOLES_CHOICES)}")
        if not _is_number(self.mt_thickness) or not 0.0 < float(self.mt_thickness) <= MAX_MT_THICKNESS:
            raise OptionError(
                "mt_thickness", f"{self.mt_thickness!r} is not a width in pixels in (0, {MAX_MT_THICKNESS:g}]"
            )
        if not _is_number(self.mt_margin) or not 0.0 <= float(self.mt_margin) <= MAX_MT_MARGIN:
            raise OptionError("mt_margin", f"{self.mt_margin!r} is not a number in 0..{MAX_MT_MARGIN:g}")

    def _validate_image_ids(self) -> None:
        ids = self.image_ids
        if ids is None:
            return
        if not isinstance(ids, tuple) or not all(isinstance(item, str) for item in ids):
            raise OptionError("image_ids", f"{ids!r} is not a list of ids")
        if not ids:
            raise OptionError("image_ids", "no image ids given")
        if any(not item for item in ids):
            raise OptionError("image_ids", "an image id is empty")

    def content_options(self) -> dict[str, Any]:
        """The options that shape the ZIP's content, keyed as in an options file (for metadata.json).

        Leaves out the database, paths, addresses, output, credentials and the resource hints (which
        never change the bytes), and values an option declares ``unrecorded``. Selected image ids are
        listed sorted.
        """
        content = ((option, getattr(self, option.attribute)) for option in OPTION_FIELDS if option.content)
        return {option.key: option.plain_value(value) for option, value in content if value not in option.unrecorded}


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(name, f"{value!r} is not a positive integer")


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        reason = "required (a non-empty text)" if value is None else f"{value!r} is not a non-empty text"
        raise OptionError(name, reason)


def _check_formats(name: str, value: object, allowed: tuple[str, ...]) -> None:
    expected = f"expected a comma list of {', '.join(allowed)}, or none"
    if not isinstance(value, tuple) or not all(isinstance(item, str) for item in value):
        raise OptionError(name, f"{value!r}: {expected}")
    for item in value:
        if item not in allowed:
            reason = "'none' cannot be combined with formats" if item == "none" else f"unknown format {item!r}"
            raise OptionError(name, f"{reason}; {expected}")


# ---------------------------------------------------------------------------------------------------------
# Converting given values (text from flags, values from files) into option values
# ---------------------------------------------------------------------------------------------------------

_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    raise OptionError(name, f"{value!r} is not true/false")


def _to_float(name: str, value: Any) -> float:
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
    raise OptionError(name, f"{value!r} is not a number")


def _to_int(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise OptionError(name, f"{value!r} is not an integer")


_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_BYTES_TEXT = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_bytes(name: str, value: Any) -> int:
    """A byte count: an integer, or text such as ``2GiB``, ``512MB``, ``1.5e9`` (SI and binary units)."""
    if isinstance(value, str):
        match = _BYTES_TEXT.match(value)
        if not match or match.group(2).lower() not in _BYTE_UNITS:
            raise OptionError(name, f"{value!r} is not a byte count (e.g. 2000000000, 2GB, 2GiB)")
        number = float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()]
        if not math.isfinite(number) or not number.is_integer():
            raise OptionError(name, f"{value!r} is not a whole number of bytes")
        return int(number)
    return _to_int(name, value)


def _optional_bytes(name: str, value: Any) -> int | None:
    return None if value is None else parse_bytes(name, value)


def _optional_text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise OptionError(name, f"{value!r} is not a text")
    return value


def _as_given(name: str, value: Any) -> Any:
    """The value unchanged (checked later by ``validate()``)."""
    return value


def _lower_text(name: str, value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _image_ids(name: str, value: Any) -> tuple[str, ...]:
    items = _split_names(value)
    if not isinstance(items, tuple) or not all(
        isinstance(item, (str, int)) and not isinstance(item, bool) for item in items
    ):
        raise OptionError(name, f"{value!r} is not a list of ids or a comma-separated text")
    return tuple(str(item) for item in items)


def _formats(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = _split_names(value)
    if not isinstance(items, tuple) or not all(isinstance(item, str) for item in items):
        raise OptionError(name, f"{value!r} is not a list of format names, a comma-separated text or none")
    return items


def _resources(name: str, value: Any) -> dict[str, float]:
    raw = value or {}
    if not isinstance(raw, Mapping):
        raise OptionError(name, f"{raw!r} is not a mapping of name -> amount")
    return {str(key): _to_float(f"{name}.{key}", amount) for key, amount in raw.items()}


def _visualization(name: str, values: Mapping[str, Any]) -> VisualizationSettings:
    kwargs: dict[str, Any] = {}
    for option in VISUALIZATION_FIELDS:
        value = values.get(option.key)
        if value is not None:
            kwargs[option.attribute] = option.convert(option.name, value)
    return VisualizationSettings(**kwargs)


def _stage(stage: str, values: Mapping[str, Any]) -> StageResources:
    base = DEFAULT_STAGE_RESOURCES[stage]
    kwargs = {option.attribute: getattr(base, option.attribute) for option in STAGE_FIELDS}
    for option in STAGE_FIELDS:
        if option.key in values:
            kwargs[option.attribute] = option.convert(f"stages.{stage}.{option.key}", values[option.key])
    return StageResources(**kwargs)


def _stages(name: str, values: Mapping[str, Any]) -> dict[str, StageResources]:
    stages = default_stages()
    for stage, stage_values in values.items():
        stages[stage] = _stage(stage, stage_values or {})
    return stages


def _sorted_or_none(ids: tuple[str, ...] | None) -> list[str] | None:
    return None if ids is None else sorted(ids)


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def _visualization_content(settings: VisualizationSettings) -> dict[str, Any]:
    return {option.key: option.plain_value(getattr(settings, option.attribute)) for option in VISUALIZATION_FIELDS}


# ---------------------------------------------------------------------------------------------------------
# The option table: every option declared once
# ---------------------------------------------------------------------------------------------------------

SOURCE_GROUP, CONTENT_GROUP, VISUALIZATION_GROUP, RESOURCES_GROUP = (
    "source and output",
    "content",
    "visualization",
    "resources",
)


@dataclass(frozen=True)
class OptionField:
    """One option: its key (in an options file, or in its nested mapping), the attribute it sets, how a
    given value converts, and its command-line flag.

    - ``convert(name, value)`` turns a file value or flag text into the attribute's value and raises
      :class:`OptionError` naming the option; ``validate()`` of the options object checks the rest.
    - ``flag_action``: ``value`` (``--x VALUE``), ``on`` (``--x`` sets true), ``off`` (``--no-x`` sets
      false), ``append`` (repeatable, joined with commas) or ``stage`` (repeatable ``STAGE=VALUE``).
    - ``label``: the option's name in messages and the flag's destination, when it differs from ``key``.
    - ``required``: a text that must be given (checked once every required option is converted);
      ``convert_none``: a given ``None`` is converted instead of leaving the default.
    - ``content``: the option shapes the ZIP's content and is listed in
      :meth:`ExportOptions.content_options`, converted by ``plain`` when one is given, except when its
      value is one of ``unrecorded`` (the default of an option added later, so that the records of exports
      made without it, metadata.json and the reuse fingerprint, stay the same).
    """

    key: str
    attribute: str
    convert: Callable[[str, Any], Any]
    flag: str | None = None
    flag_action: str = "value"
    metavar: str | None = None
    help: str = ""
    group: str = SOURCE_GROUP
    label: str | None = None
    required: bool = False
    convert_none: bool = False
    content: bool = False
    plain: Callable[[Any], Any] | None = None
    unrecorded: tuple[Any, ...] = ()

    def plain_value(self, value: Any) -> Any:
        """An attribute value as an options file holds it (for :meth:`ExportOptions.content_options`)."""
        return value if self.plain is None else self.plain(value)

    @property
    def name(self) -> str:
        """The option's name in messages and the flag's destination."""
        return self.label or self.key


def _stage_help(what: str) -> str:
    return f"{what} of a stage ({', '.join(STAGE_NAMES)})"


#: The fields of :class:`StageResources` (``stages.<stage>.<key>`` in an options file).
STAGE_FIELDS: tuple[OptionField, ...] = (
    OptionField("num_cpus", "num_cpus", _to_float, "--num-cpus", "stage", "STAGE=X", _stage_help("CPUs per task"),
                RESOURCES_GROUP),
    OptionField("memory", "memory", _optional_bytes, "--memory", "stage", "STAGE=BYTES",
                _stage_help("memory hint (e.g. 2GiB)"), RESOURCES_GROUP),
    OptionField("resources", "resources", _resources, "--resource", "stage", "STAGE=NAME:AMOUNT",
                _stage_help("custom Ray resource"), RESOURCES_GROUP, label="resource"),
    OptionField("batch_size", "batch_size", _to_int, "--batch-size", "stage", "STAGE=N", _stage_help("batch size"),
                RESOURCES_GROUP),
)

#: The fields of :class:`VisualizationSettings` (``visualization.<key>`` in an options file).
VISUALIZATION_FIELDS: tuple[OptionField, ...] = (
    OptionField("external_color", "external_color", _as_given, "--external-color", metavar="#RRGGBB",
                help="outline and fill colour of objects (#FF0000)", group=VISUALIZATION_GROUP),
    OptionField("internal_color", "internal_color", _as_given, "--internal-color", metavar="#RRGGBB",
                help="outline colour of holes (#0000FF)", group=VISUALIZATION_GROUP),
    OptionField("stroke_width", "stroke_width", _to_int, "--stroke-width", metavar="1-10",
                help="outline width in pixels (2)", group=VISUALIZATION_GROUP),
    OptionField("font_size", "font_size", _to_int, "--font-size", metavar="10-50",
                help="object number font size (32)", group=VISUALIZATION_GROUP),
    OptionField("fill_opacity", "fill_opacity", _to_float, "--fill-opacity", metavar="0-1",
                help="fill opacity of objects (0.3)", group=VISUALIZATION_GROUP, plain=float),
    OptionField("show_numbers", "show_numbers", _to_bool, "--no-numbers", "off",
                help="do not draw object numbers", group=VISUALIZATION_GROUP),
    OptionField("format", "format", _lower_text, "--viz-format", metavar="|".join(VIZ_FORMAT_EXTENSIONS),
                help="visualization image format (default png)", group=VISUALIZATION_GROUP, label="viz_format"),
)

#: Every option of :class:`ExportOptions`, keyed as in an options file (top level).
OPTION_FIELDS: tuple[OptionField, ...] = (
    OptionField("db", "db", _optional_text, "--db", metavar="DSN_OR_PATH",
                help="postgresql:// DSN, sqlite:///path or a SQLite file path", required=True),
    OptionField("project", "project", _optional_text, "--project", metavar="ID_OR_TITLE",
                help="project id or exact title", required=True),
    OptionField("image_ids", "image_ids", _image_ids, "--image-ids", "append", "ID,...",
                "export only these images (comma list, repeatable)", content=True, plain=_sorted_or_none),
    OptionField("output", "output", _optional_text, "--out", metavar="FILE.zip",
                help="output ZIP (default: <title>-<time>.zip)"),
    OptionField("force", "force", _to_bool, "--force", "on", help="overwrite an existing output"),
    OptionField("images_root", "images_root", _optional_text, "--images-root", metavar="DIR_OR_URI",
                help="folder or pyarrow.fs URI the originalPath values are under"),
    OptionField("shared_images_root", "shared_images_root", _to_bool, "--shared-images-root", "on",
                help="the local images root is mounted at the same path on every node (copy may run on any node)"),
    OptionField("address", "address", _optional_text, "--address", metavar="RAY_ADDRESS",
                help="Ray cluster to use (default: RAY_ADDRESS or local)"),
    OptionField("originals", "include_originals", _to_bool, "--no-originals", "off",
                help="leave the original images out", group=CONTENT_GROUP, content=True),
    OptionField("visualizations", "include_visualizations", _to_bool, "--no-visualizations", "off",
                help="leave the visualizations out", group=CONTENT_GROUP, content=True),
    OptionField("docs", "include_docs", _to_bool, "--no-docs", "off",
                help="leave README.md, metrics_guide.md, metadata.json out (report stays)", group=CONTENT_GROUP,
                content=True),
    OptionField("annotations", "annotations", _formats, "--annotations", metavar=",".join(ANNOTATION_FORMATS) + "|none",
                help="annotation formats (default: all)", group=CONTENT_GROUP, convert_none=True, content=True,
                plain=list),
    OptionField("coco_holes", "coco_holes", _lower_text, "--coco-holes", metavar="|".join(COCO_HOLES_CHOICES),
                help="how COCO writes objects with holes: compressed RLE (default) or one polygon each, holes "
                "joined by zero-width bridges (for importers that read only polygons)", group=CONTENT_GROUP,
                content=True, unrecorded=(DEFAULT_COCO_HOLES,)),
    OptionField("mt_thickness", "mt_thickness", _to_float, "--mt-thickness", metavar="PX",
                help=f"microtubule projects: width of the band intensities are measured in ({DEFAULT_MT_THICKNESS:g})",
                group=CONTENT_GROUP, content=True, plain=float, unrecorded=(DEFAULT_MT_THICKNESS,)),
    OptionField("mt_margin", "mt_margin", _to_float, "--mt-margin", metavar="X",
                help="microtubule projects: the background band reaches thickness x (1 + 2 x margin) "
                f"({DEFAULT_MT_MARGIN:g})", group=CONTENT_GROUP, content=True, plain=float,
                unrecorded=(DEFAULT_MT_MARGIN,)),
    OptionField("metrics", "metrics", _formats, "--metrics", metavar=",".join(METRIC_FORMATS) + "|none",
                help="metrics formats (default: all)", group=CONTENT_GROUP, convert_none=True, content=True,
                plain=list),
    OptionField("scale", "scale_um_per_px", _to_float, "--scale", metavar="UM_PER_PX",
                help=f"scale in µm per pixel ({MIN_SCALE_UM_PER_PX:g}-{MAX_SCALE_UM_PER_PX:g})",
                group=CONTENT_GROUP, content=True, plain=_float_or_none),
    OptionField("visualization", "visualization", _visualization, content=True, plain=_visualization_content),
    OptionField("stages", "stages", _stages),
    OptionField("max_buffered_images", "max_buffered_images", _to_int, "--max-buffered-images", metavar="N",
                help=f"bound of the writer's reorder buffer ({DEFAULT_MAX_BUFFERED_IMAGES})", group=RESOURCES_GROUP),
    OptionField("writers", "writers", _to_int, "--writers", metavar="N",
                help=f"ZIP writer actors, each assembling runs of images (1-{MAX_WRITERS}; default one per "
                f"{CPUS_PER_WRITER} CPUs of the cluster); the ZIP is the same for every N", group=RESOURCES_GROUP),
    OptionField("max_file_bytes", "max_file_bytes", parse_bytes, "--max-file-bytes", metavar="BYTES",
                help="largest original file read, e.g. 2GiB (default 2GiB)", group=RESOURCES_GROUP, content=True),
    OptionField("read_timeout_s", "read_timeout_s", _to_float, "--read-timeout", metavar="SECONDS",
                help=f"longest time one original may take to read ({DEFAULT_READ_TIMEOUT_S:g})",
                group=RESOURCES_GROUP),
    OptionField("max_image_pixels", "max_image_pixels", _to_int, "--max-image-pixels", metavar="N",
                help=f"largest image decoded, width x height ({DEFAULT_MAX_IMAGE_PIXELS})", group=RESOURCES_GROUP,
                content=True),
    OptionField("db_retry_s", "db_retry_s", _to_float, "--db-retry", metavar="SECONDS",
                help=f"how long reads keep reconnecting to an unreachable database ({DEFAULT_DB_RETRY_S:g} s)",
                group=RESOURCES_GROUP),
    OptionField("stall_timeout_s", "stall_timeout_s", _to_float, "--stall-timeout", metavar="SECONDS",
                help=f"report a stage that makes no progress this long as stalled ({DEFAULT_STALL_TIMEOUT_S:g})",
                group=RESOURCES_GROUP),
    OptionField("reuse", "reuse", _optional_text, "--reuse", metavar="PREVIOUS.zip",
                help="take the images that did not change from this earlier export of the project (path or URI); "
                "the result is the same as a full export"),
    OptionField("file_fingerprint", "file_fingerprint", _lower_text, "--file-fingerprint",
                metavar="|".join(FILE_FINGERPRINTS),
                help="how --reuse recognises an unchanged original: sha256 of its bytes (default) or its size "
                "and modification time (no read)", group=CONTENT_GROUP, content=True),
)

#: Top-level keys of an options file (and of the ``overrides`` given to :func:`build_options`).
OPTION_KEYS: tuple[str, ...] = tuple(option.key for option in OPTION_FIELDS)
VISUALIZATION_KEYS: tuple[str, ...] = tuple(option.key for option in VISUALIZATION_FIELDS)
STAGE_KEYS: tuple[str, ...] = tuple(option.key for option in STAGE_FIELDS)
_NESTED_KEYS: dict[str, tuple[str, ...]] = {"visualization": VISUALIZATION_KEYS, "stages": STAGE_NAMES}
_BOOLEAN_FIELDS: tuple[OptionField, ...] = tuple(option for option in OPTION_FIELDS if option.convert is _to_bool)


# ---------------------------------------------------------------------------------------------------------
# Options files and merging (defaults < file < flags)
# ---------------------------------------------------------------------------------------------------------


def check_option_keys(values: Mapping[str, Any], source: str = "options") -> None:
    """Raise :class:`OptionError` naming the first unknown key (nested keys as ``visualization.x``)."""
    if not isinstance(values, Mapping):
        raise OptionError(
            "options", f"{source}: expected a mapping of option names to values, not {type(values).__name__}"
        )
    for key, value in values.items():
        if key not in OPTION_KEYS:
            raise OptionError(str(key), f"unknown option in {source}; known: {', '.join(OPTION_KEYS)}")
        if key in _NESTED_KEYS and value is not None:
            if not isinstance(value, Mapping):
                raise OptionError(key, f"expected a mapping, got {type(value).__name__}")
            for sub_key, sub_value in value.items():
                if sub_key not in _NESTED_KEYS[key]:
                    raise OptionError(f"{key}.{sub_key}", f"unknown option; known: {', '.join(_NESTED_KEYS[key])}")
                if key == "stages" and sub_value is not None:
                    if not isinstance(sub_value, Mapping):
                        raise OptionError(f"stages.{sub_key}", f"expected a mapping, got {type(sub_value).__name__}")
                    for stage_key in sub_value:
                        if stage_key not in STAGE_KEYS:
                            raise OptionError(
                                f"stages.{sub_key}.{stage_key}", f"unknown option; known: {', '.join(STAGE_KEYS)}"
                            )


def _yaml_problem(exc: Exception) -> str:
    """A YAML error in one line: what is wrong and where (line, column)."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    text = str(problem) if problem else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if mark is not None:
        text += f" at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(text.split())


def load_options_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON (``.json``) or YAML (``.yaml``/``.yml``) options file into a checked mapping."""
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    if extension not in (".json", ".yaml", ".yml"):
        raise OptionError("options", f"{path}: expected a .json, .yaml or .yml file")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise OptionError("options", f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise OptionError("options", f"{path} is not UTF-8 text") from exc
    try:
        if extension == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except ValueError as exc:  # json.JSONDecodeError
        raise OptionError("options", f"{path} is not valid JSON: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError
        raise OptionError("options", f"{path} is not valid YAML: {_yaml_problem(exc)}") from exc
    if values is None:
        values = {}
    check_option_keys(values, source=path)
    return dict(values)


def merge_option_values(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge option mappings, later layers winning; ``visualization`` and ``stages`` merge key by key."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if not layer:
            continue
        for key, value in layer.items():
            if key == "visualization" and isinstance(value, Mapping):
                merged[key] = {**(merged.get(key) or {}), **value}
            elif key == "stages" and isinstance(value, Mapping):
                stages = {name: dict(hints) for name, hints in (merged.get(key) or {}).items()}
                for name, hints in value.items():
                    stages[name] = {**stages.get(name, {}), **(hints or {})}
                merged[key] = stages
            else:
                merged[key] = value
    return merged


def build_options(
    file_values: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None, under_job: bool = False
) -> ExportOptions:
    """Defaults < ``file_values`` < ``overrides`` (both keyed as an options file), converted and validated.

    ``visualization`` and ``stages`` merge key by key, so an override of ``stages.copy.num_cpus`` keeps
    the file's ``stages.copy.batch_size``. Raises :class:`OptionError` naming the first invalid option.
    """
    for layer, source in ((file_values, "options file"), (overrides, "overrides")):
        if layer is not None:
            check_option_keys(layer, source)
    values = merge_option_values(file_values, overrides)
    required = [option for option in OPTION_FIELDS if option.required]
    kwargs = {option.attribute: option.convert(option.name, values.get(option.key)) for option in required}
    for option in required:
        _check_text(option.name, kwargs[option.attribute])
    for option in OPTION_FIELDS:
        if option.required or option.key not in values:
            continue
        value = values.get(option.key)
        if value is None and not option.convert_none:
            continue
        kwargs[option.attribute] = option.convert(option.name, value)
    options = ExportOptions(**kwargs)
    options.validate(under_job=under_job)
    return options
