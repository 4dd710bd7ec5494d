"""Problem messages carry no memory addresses, so the same failure always reads the same."""

from __future__ import annotations

import pytest

from ray_export.problems import FAILURE_CODES, PROBLEM_CODES, Problem, clean_message


def test_object_reprs_lose_their_address() -> None:
    text = "cannot identify image file <_io.BytesIO object at 0x7f3a2b1c0d90>"
    assert clean_message(text) == "cannot identify image file <_io.BytesIO object>"
    assert Problem("image_decode_failed", "visualize", text).message == clean_message(text)
    assert clean_message("<function f at 0x7F00DEADBEEF> failed at 0x55d0c0ffee00") == "<function f> failed"


def test_other_text_is_kept() -> None:
    for text in ("'a.png' not found under the images root", "flag 0x1f is set", "size 0x0"):
        assert clean_message(text) == text


def test_new_codes_are_declared() -> None:
    for code in ("file_not_regular", "file_too_large", "file_read_timeout"):
        assert code in PROBLEM_CODES and code in FAILURE_CODES
    for code in ("image_too_large", "text_invalid_utf8"):
        assert code in PROBLEM_CODES and code not in FAILURE_CODES
    with pytest.raises(ValueError):
        Problem("no_such_code", "copy", "")
