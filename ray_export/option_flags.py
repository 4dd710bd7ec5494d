"""The ``export`` command's flags: one per option of :data:`ray_export.options.OPTION_FIELDS`, turned back
into options (flags override an options file, which overrides the defaults), and the flag an option was
given as (for messages that name what the user typed)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from .options import (
    CONTENT_GROUP,
    OPTION_FIELDS,
    RESOURCES_GROUP,
    SOURCE_GROUP,
    STAGE_FIELDS,
    STAGE_NAMES,
    VISUALIZATION_FIELDS,
    VISUALIZATION_GROUP,
    ExportOptions,
    OptionError,
    OptionField,
    build_options,
    load_options_file,
)
from .ray_address import running_under_job_submit

_FLAG_ACTIONS: dict[str, dict[str, Any]] = {
    "value": {},
    "on": {"action": "store_const", "const": True},
    "off": {"action": "store_const", "const": False},
    "append": {"action": "append"},
    "stage": {"action": "append"},
}


def _flag_fields() -> tuple[OptionField, ...]:
    return tuple(option for option in (*OPTION_FIELDS, *VISUALIZATION_FIELDS, *STAGE_FIELDS) if option.flag)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``export`` command's flags. Every flag defaults to ``None``: only given flags override."""
    groups: dict[str, Any] = {}
    for group in (SOURCE_GROUP, CONTENT_GROUP, VISUALIZATION_GROUP, RESOURCES_GROUP):
        groups[group] = parser.add_argument_group(group)
    for option in _flag_fields():
        extra = {"metavar": option.metavar} if option.metavar else {}
        text = f"required (here or in --options): {option.help}" if option.required else option.help
        groups[option.group].add_argument(
            option.flag, dest=option.name, default=None, help=text, **_FLAG_ACTIONS[option.flag_action], **extra
        )
    groups[SOURCE_GROUP].add_argument("--options", metavar="FILE", help="JSON or YAML options file; flags override it")


def _stage_assignment(flag: str, text: str) -> tuple[str, str]:
    stage, sep, value = str(text).partition("=")
    stage = stage.strip().lower()
    if not sep or not value.strip():
        raise OptionError(flag, f"{text!r}: expected STAGE=VALUE")
    if stage not in STAGE_NAMES:
        raise OptionError(flag, f"unknown stage in {text!r}; expected one of {', '.join(STAGE_NAMES)}")
    return stage, value.strip()


def _stage_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``--num-cpus copy=2`` and the other stage flags as ``stages`` values."""
    stages: dict[str, dict[str, Any]] = {}
    for option in STAGE_FIELDS:
        for text in getattr(args, option.name, None) or ():
            stage, value = _stage_assignment(option.flag or option.key, text)
            stage_values = stages.setdefault(stage, {})
            if option.key != "resources":
                stage_values[option.key] = value
                continue
            name, sep, amount = value.partition(":")
            if not sep or not name.strip():
                raise OptionError(option.flag or option.key, f"{text!r}: expected STAGE=NAME:AMOUNT")
            stage_values.setdefault("resources", {})[name.strip()] = amount.strip()
    return stages


def _given_flags(args: argparse.Namespace, fields: tuple[OptionField, ...]) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for option in fields:
        value = getattr(args, option.name, None) if option.flag else None
        if option.flag_action == "append":
            value = ",".join(value) if value else None
        if value is not None:
            given[option.key] = value
    return given


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given on the command line, keyed as in an options file."""
    overrides = _given_flags(args, OPTION_FIELDS)
    visualization = _given_flags(args, VISUALIZATION_FIELDS)
    if visualization:
        overrides["visualization"] = visualization
    stages = _stage_overrides(args)
    if stages:
        overrides["stages"] = stages
    return overrides


def options_from_args(args: argparse.Namespace, under_job: bool | None = None) -> ExportOptions:
    """Options file (``--options``) overridden by the given flags, validated.

    ``under_job`` defaults to :func:`running_under_job_submit`.
    """
    options_path = getattr(args, "options", None)
    overrides = overrides_from_args(args)
    file_values = None
    if under_job is None:
        under_job = running_under_job_submit()
    try:
        file_values = load_options_file(options_path) if options_path else None
        return build_options(file_values, overrides, under_job=under_job)
    except OptionError as exc:
        raise for_command_line(exc, overrides, file_values, options_path) from None


_MISSING = object()


def _option_path(name: str) -> tuple[str, ...]:
    """Where the option an :class:`OptionError` names sits in an options mapping: ``("scale",)``,
    ``("visualization", "stroke_width")``, ``("stages", "copy", "num_cpus")``."""
    if name.startswith("stages."):
        return tuple(name.split(".", 3))
    if name.startswith("visualization."):
        return tuple(name.split(".", 1))
    for option in VISUALIZATION_FIELDS:
        if name in (option.name, option.key):
            return ("visualization", option.key)
    return (name,)


def _given(values: Mapping[str, Any] | None, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in nested mappings, or ``_MISSING``."""
    value: Any = values
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def flag_for_option(name: str, flags: Mapping[str, Any]) -> str | None:
    """The command-line flag of the option an :class:`OptionError` names (``stroke_width`` ->
    ``--stroke-width``; a stage hint with the assignment given, ``--num-cpus copy=8``), or None when the
    option has no flag or (a stage hint) was not given as one. ``flags``: the given flags, keyed as in an
    options file (:func:`overrides_from_args`)."""
    if name.startswith("--"):
        return name
    if name == "options":
        return "--options"
    path = _option_path(name)
    if path[0] == "stages" and len(path) >= 3:
        stage, key = path[1], path[2]
        value = _given(flags, path)
        option = next((o for o in STAGE_FIELDS if o.key == key), None)
        if option is None or option.flag is None or value is _MISSING:
            return None
        if key == "resources" and isinstance(value, Mapping):
            return f"{option.flag} {stage}=" + ",".join(f"{k}:{v}" for k, v in value.items())
        if key == "resources" and len(path) == 4:
            return f"{option.flag} {stage}={path[3]}:{value}"
        return f"{option.flag} {stage}={value}"
    table = VISUALIZATION_FIELDS if path[0] == "visualization" else OPTION_FIELDS
    key = path[-1] if path[0] == "visualization" and len(path) == 2 else path[0]
    return next((o.flag for o in table if o.key == key and o.flag), None)


def command_line_name(
    name: str,
    flags: Mapping[str, Any],
    file_values: Mapping[str, Any] | None = None,
    options_path: str | None = None,
) -> str:
    """How a command-line error names an option: its flag, unless its value came from the options file
    and no flag (then its key, and the file)."""
    path = _option_path(name)
    if _given(flags, path) is _MISSING and _given(file_values, path) is not _MISSING:
        key = ".".join(path)
        return f"{key} (in {options_path})" if options_path else key
    return flag_for_option(name, flags) or name


def for_command_line(
    exc: OptionError,
    flags: Mapping[str, Any],
    file_values: Mapping[str, Any] | None = None,
    options_path: str | None = None,
) -> OptionError:
    """``exc`` naming the option as the command line knows it (see :func:`command_line_name`)."""
    named = command_line_name(exc.option, flags, file_values, options_path)
    if named == exc.option:
        return exc
    renamed = OptionError(named, exc.reason)
    renamed.__cause__ = exc
    return renamed
