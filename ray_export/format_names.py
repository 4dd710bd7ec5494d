"""The names options use for output formats, known without the format table.

The values of the list options (``annotations``, ``metrics``) and the COCO choices are declared here,
so that the options module needs no format code. :mod:`ray_export.formats.registry` checks on import
that its table offers exactly the built-in names, in this order, and adds the name of a format
registered later (:func:`add_format_choice`).
"""

from __future__ import annotations

#: Built-in values of the ``annotations`` option, in their listed order.
ANNOTATION_FORMATS: tuple[str, ...] = ("coco", "yolo", "json")
#: Built-in values of the ``metrics`` option, in their listed order.
METRIC_FORMATS: tuple[str, ...] = ("csv", "xlsx", "json", "parquet")
#: How COCO writes objects with holes (``coco_holes``).
COCO_HOLES_CHOICES: tuple[str, ...] = ("rle", "polygons")
DEFAULT_COCO_HOLES = "rle"

_CHOICES: dict[str, list[str]] = {"annotations": list(ANNOTATION_FORMATS), "metrics": list(METRIC_FORMATS)}


def format_choices(option: str) -> tuple[str, ...]:
    """The values the list option ``option`` (``annotations`` or ``metrics``) accepts now."""
    return tuple(_CHOICES[option])


def add_format_choice(option: str, name: str) -> None:
    """Accept ``name`` in the list option ``option`` (a format registered at run time)."""
    if name not in _CHOICES[option]:
        _CHOICES[option].append(name)


def remove_format_choice(option: str, name: str) -> None:
    """Stop accepting a run-time format's ``name``; built-in names stay."""
    if name in _CHOICES[option] and name not in (ANNOTATION_FORMATS + METRIC_FORMATS):
        _CHOICES[option].remove(name)
