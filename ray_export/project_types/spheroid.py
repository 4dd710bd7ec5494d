"""Spheroid projects (``spheroid``, the default and what an unknown type is exported as): the outputs of
SPEC.md and nothing more."""

from __future__ import annotations

from .base import ProjectType

TYPE = ProjectType(name="spheroid")
