"""The project types, one line each, and how an export finds its own.

``projects.type`` names the type; an unknown or missing value is exported as ``spheroid`` with a
report note (:func:`project_type_for`). The problem codes of every type are accepted by
:class:`ray_export.problems.Problem`; an export's report and README list those of its own type.
"""

from __future__ import annotations

from ..problems import register_problem_codes
from . import invasion, microcapsule, microtubules, sperm, spheroid, wound
from .base import ProjectType

PROJECT_TYPES: dict[str, ProjectType] = {
    spheroid.TYPE.name: spheroid.TYPE,
    invasion.TYPE.name: invasion.TYPE,
    wound.TYPE.name: wound.TYPE,
    microtubules.TYPE.name: microtubules.TYPE,
    sperm.TYPE.name: sperm.TYPE,
    microcapsule.TYPE.name: microcapsule.TYPE,
}
DEFAULT_TYPE = spheroid.TYPE.name

for _type in PROJECT_TYPES.values():
    register_problem_codes(_type.problem_codes)


def project_type_named(name: str | None) -> ProjectType:
    """The type called ``name``; ``spheroid`` for an unknown or missing name."""
    return PROJECT_TYPES.get(name or "", PROJECT_TYPES[DEFAULT_TYPE])


def project_type_for(name: str | None) -> tuple[ProjectType, str | None]:
    """The type an export of a project of type ``name`` uses, and a report note when ``name`` is not a
    known type (the project is then exported as ``spheroid``)."""
    if name in PROJECT_TYPES:
        return PROJECT_TYPES[name], None
    shown = "no type" if not name else f"type {name!r}"
    return PROJECT_TYPES[DEFAULT_TYPE], (
        f"the project has {shown}, which is not one of {', '.join(sorted(PROJECT_TYPES))}; "
        f"it is exported as {DEFAULT_TYPE}"
    )
