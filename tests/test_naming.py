"""Member names: sanitizing, uniqueness on stems, derived names, default output name."""

from __future__ import annotations

import unicodedata
from datetime import datetime

import pytest

from ray_export.formats.originals import image_member
from ray_export.formats.visualizations import visualization_member
from ray_export.formats.yolo import label_member
from ray_export.naming import (
    BIDI_CONTROLS,
    MAX_STEM_LENGTH,
    MemberName,
    assign_member_names,
    default_output_name,
    sanitize_member_name,
    sanitize_title,
    split_name,
)


def file_names(names: list[str]) -> list[str]:
    return [member.file_name for member in assign_member_names(names)]


def test_spec_example_case_insensitive_stems() -> None:
    assert file_names(["a.png", "A.png", "a.jpg"]) == ["a.png", "A_2.png", "a_3.jpg"]


def test_suffix_skips_keys_taken_by_earlier_members() -> None:
    assert file_names(["a_2.png", "a.png", "a.png"]) == ["a_2.png", "a.png", "a_3.png"]
    assert file_names(["a.png", "a.png", "a_2.png"]) == ["a.png", "a_2.png", "a_2_2.png"]


def test_all_stems_unique_after_assignment() -> None:
    names = ["x.png", "X.PNG", "x_2.tif", "x.jpg", "X_3.png", "x", "x_2", "x.png"]
    members = assign_member_names(names)
    keys = [unicodedata.normalize("NFC", m.stem).casefold() for m in members]
    assert len(set(keys)) == len(names)
    assert [m.original for m in members] == names


def test_nfc_and_casefold_collisions() -> None:
    composed = "caf\u00e9.png"
    decomposed = "cafe\u0301.png"
    assert file_names([composed, decomposed]) == [composed, "cafe\u0301_2.png"]
    assert file_names(["STRASSE.png", "straße.png"]) == ["STRASSE.png", "straße_2.png"]


def test_member_fields_and_renamed_flag() -> None:
    members = assign_member_names(["a.png", "A.png", "b?.png", "dir/c.png"])
    assert members[0] == MemberName("a.png", "a.png", "a", ".png", False)
    assert members[1] == MemberName("A.png", "A_2.png", "A_2", ".png", True)  # a collision suffix is a rename
    assert members[2] == MemberName("b?.png", "b_.png", "b_", ".png", True)
    assert members[3].file_name == "c.png" and members[3].renamed


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("C:\\data\\run 1\\cell.tif", "cell.tif"),
        ("uploads/2024/x.png", "x.png"),
        ("mixed/dir\\y.jpg", "y.jpg"),
        ("folder/", "image"),
        ("", "image"),
        (".", "image"),
        ("...", "image"),
        (" . ", "image"),
        ("..hidden.png.", "hidden.png"),
        ("  spaced name.png  ", "spaced name.png"),
        ("a.", "a"),
        ('q<>:"|?*.png', "q_______.png"),
        ("tab\there\nnew.png", "tab_here_new.png"),
        ("del\x7fc1\x85\x9f.png", "del_c1__.png"),
        ("nul\x00byte.png", "nul_byte.png"),
        ("noext", "noext"),
        ("archive.tar.gz", "archive.tar.gz"),
    ],
)
def test_sanitize_rules(name: str, expected: str) -> None:
    assert sanitize_member_name(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CON.png", "CON_.png"),
        ("con.png", "con_.png"),
        ("Nul", "Nul_"),
        ("PRN.tif", "PRN_.tif"),
        ("aux.jpg", "aux_.jpg"),
        ("COM1.png", "COM1_.png"),
        ("lpt9.bmp", "lpt9_.bmp"),
        ("COM¹.png", "COM¹_.png"),
        ("com1.tar.gz", "com1_.tar.gz"),
        ("CONSOLE.png", "CONSOLE.png"),
        ("COM0.png", "COM0.png"),
        ("COM10.png", "COM10.png"),
        ("xcon.png", "xcon.png"),
    ],
)
def test_windows_reserved_stems(name: str, expected: str) -> None:
    assert sanitize_member_name(name) == expected


def test_reserved_rename_is_reported_and_unique() -> None:
    members = assign_member_names(["CON.png", "con_.png"])
    assert [m.file_name for m in members] == ["CON_.png", "con__2.png"]
    assert members[0].renamed and members[1].renamed  # the second by its collision suffix


def test_stem_cut_to_100_characters_keeping_extension() -> None:
    long_stem = "s" * 250
    assert sanitize_member_name(long_stem + ".tiff") == "s" * MAX_STEM_LENGTH + ".tiff"
    assert sanitize_member_name(long_stem) == "s" * MAX_STEM_LENGTH
    members = assign_member_names([long_stem + ".png", long_stem + ".jpg"])
    assert members[0].stem == "s" * 100
    assert members[1].stem == "s" * 100 + "_2"
    assert all(m.renamed for m in members)


def test_split_name() -> None:
    assert split_name("a.b.png") == ("a.b", ".png")
    assert split_name("plain") == ("plain", "")


def test_derived_member_paths() -> None:
    member = assign_member_names(["Cell 01.TIF"])[0]
    assert image_member(member.file_name) == "images/Cell 01.TIF"
    assert visualization_member(member.stem, ".png") == "visualizations/Cell 01_viz.png"
    assert label_member(member.stem) == "labels/Cell 01.txt"
    assert visualization_member(member.stem, ".webp") == "visualizations/Cell 01_viz.webp"


def test_default_output_name() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5)
    assert default_output_name("Spheroids", now) == "Spheroids-20260102-030405.zip"
    assert default_output_name("My project: run/2", now) == "My_project__run_2-20260102-030405.zip"
    assert default_output_name("", now) == "export-20260102-030405.zip"
    assert default_output_name(" ... ", now) == "export-20260102-030405.zip"
    assert default_output_name("CON", now) == "CON-20260102-030405.zip"
    assert default_output_name("a\x00b", now) == "a_b-20260102-030405.zip"


def test_sanitize_title_length_and_characters() -> None:
    title = sanitize_title("x" * 300 + "?")
    assert title == "x" * 100
    for ch in '<>:"|?*/\\ \t':
        assert ch not in sanitize_title(f"a{ch}b")


@pytest.mark.parametrize("control", sorted(BIDI_CONTROLS))
def test_bidirectional_controls_are_removed(control: str) -> None:
    name = f"invoice{control}gnp.exe"
    assert sanitize_member_name(name) == "invoicegnp.exe"
    (member,) = assign_member_names([name])
    assert member.file_name == "invoicegnp.exe" and member.renamed
    assert control not in sanitize_title(f"Project{control}A")


def test_bidi_removal_keeps_stems_unique() -> None:
    members = assign_member_names(["ab.png", "a\u202eb.png", "a\u2066b\u2069.png"])
    assert [m.file_name for m in members] == ["ab.png", "ab_2.png", "ab_3.png"]
    assert [m.renamed for m in members] == [False, True, True]
