"""The design documents under docs/ stay complete: every problem code and every output member is described."""

from __future__ import annotations

import re
from pathlib import Path

from ray_export.formats import registry
from ray_export.problems import PROBLEM_CODES

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_problem_code_is_documented():
    layout = (DOCS / "zip_layout.md").read_text(encoding="utf-8")
    missing = [code for code in PROBLEM_CODES if f"`{code}`" not in layout]
    assert missing == []


def test_every_member_and_folder_of_the_registry_is_documented():
    layout = (DOCS / "zip_layout.md").read_text(encoding="utf-8")
    declared = [m for fmt in registry.FORMATS for m in fmt.members] + [f.folder for f in registry.FORMATS if f.folder]
    missing = [member for member in declared if member.rstrip("/") not in layout]
    assert missing == []


def test_the_docs_index_links_every_document():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        if page.name != "README.md":
            assert f"({page.name})" in index, page.name


def test_every_project_type_table_member_and_problem_code_is_documented():
    from ray_export.project_types.registry import PROJECT_TYPES

    page = (DOCS / "project_types.md").read_text(encoding="utf-8")
    for kind in PROJECT_TYPES.values():
        assert f"## {kind.name}" in page, kind.name
        for code in kind.problem_codes:
            assert f"`{code}`" in page, code
        for table in kind.tables:
            if not table.hidden:
                assert f"`{table.name}`" in page and f'"{table.sheet}"' in page, table.name
                for column, _ in table.all_columns:
                    assert f"`{column}`" in page or column in ("image_id", "image_name"), (table.name, column)
            if table.chart is not None:
                assert f"`{table.chart_member}`" in page
            for folder, _ in table.member_folders:
                assert folder in page


def test_every_command_line_flag_is_documented_in_the_readme():
    from ray_export.options import OPTION_FIELDS, STAGE_FIELDS, VISUALIZATION_FIELDS

    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    flags = [option.flag for option in (*OPTION_FIELDS, *VISUALIZATION_FIELDS, *STAGE_FIELDS) if option.flag]
    assert [flag for flag in flags if not re.search(re.escape(flag) + r"(?![\w-])", readme)] == []
