"""SpheroSeg project types: what each kind of project adds to the ZIP (see docs/project_types.md)."""
