"""ZIP member names of the per-image members.

Every selected image gets one file name, fixed on the driver before the first ZIP entry is written.
The original, visualization and label members all derive from the same stem, so the stems are made
unique (Unicode NFC, case-folded) in export order.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

#: Longest stem kept (characters); the extension is kept in full.
MAX_STEM_LENGTH = 100

_FORBIDDEN_CHARACTERS = frozenset('<>:"|?*')
_RESERVED_STEMS = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{prefix}{digit}" for prefix in ("COM", "LPT") for digit in "123456789¹²³"]
)
_WHITESPACE_RUN = re.compile(r"\s+")
#: Bidirectional controls (embeddings, overrides, isolates, LRM/RLM/ALM): they make a name display in
#: another order than it is stored (``evil\u202egnp.exe`` shows as ``evilexe.png``), so they are removed.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_BIDI_TABLE = dict.fromkeys(map(ord, BIDI_CONTROLS))


def _is_unsafe_character(ch: str) -> bool:
    """Control characters (C0, DEL, C1), lone surrogates and the characters Windows forbids."""
    return ch in _FORBIDDEN_CHARACTERS or unicodedata.category(ch) in ("Cc", "Cs")


def _replace_unsafe(text: str) -> str:
    """Bidirectional controls removed, unsafe characters replaced by ``_``."""
    return "".join("_" if _is_unsafe_character(ch) else ch for ch in text.translate(_BIDI_TABLE))


def split_name(name: str) -> tuple[str, str]:
    """``"a.b.png"`` -> ``("a.b", ".png")``; a name without a dot is all stem."""
    dot = name.rfind(".")
    if dot <= 0:
        return name, ""
    return name[:dot], name[dot:]


def _guard_reserved(name: str) -> str:
    """Append ``_`` to a Windows device name (``CON``, ``com1.tar.gz``, ...) at the start of ``name``."""
    first, dot, rest = name.partition(".")
    if first.rstrip(" ").upper() in _RESERVED_STEMS:
        return f"{first}_{dot}{rest}"
    return name


def _safe_file_name(text: str, empty: str) -> str:
    """Character rules, dot/space stripping, reserved names and the stem cut shared by every safe name."""
    text = _replace_unsafe(text).strip(". ")
    if not text:
        return empty
    text = _guard_reserved(text)
    stem, extension = split_name(text)
    if len(stem) > MAX_STEM_LENGTH:
        # a cut must not leave the stem ending in a dot or space (``"a… .png"``, ``"a…..png"``)
        stem = stem[:MAX_STEM_LENGTH].rstrip(". ")
    return f"{stem}{extension}" if stem else empty


def sanitize_member_name(name: str) -> str:
    """Turn an original file name into a safe ZIP member file name (no folder part).

    Backslashes count as folder separators and only the last part is kept; bidirectional controls
    (:data:`BIDI_CONTROLS`) are removed; control characters and ``<>:"|?*`` become ``_``; leading and
    trailing dots and spaces are stripped; an empty result is ``image``; a Windows device name
    (``CON``, ``NUL``, ``COM1``, ...) gets ``_`` appended; the stem is cut to :data:`MAX_STEM_LENGTH`
    characters, keeping the extension.
    """
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    return _safe_file_name(base, "image")


def stem_key(stem: str) -> str:
    """Uniqueness key of a stem: Unicode NFC, case-folded."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", stem).casefold())


@dataclass(frozen=True)
class MemberName:
    """The member name of one image: ``file_name`` = ``stem`` + ``extension`` (with the dot or empty)."""

    original: str
    file_name: str
    stem: str
    extension: str
    renamed: bool


def assign_member_names(names: Sequence[str]) -> list[MemberName]:
    """Sanitize ``names`` (in export order) and make their stems unique.

    A stem whose key (:func:`stem_key`) an earlier member already uses takes ``stem_2``, ``stem_3``, ...:
    the first candidate whose key is not used yet. ``renamed`` is true when the member name differs from
    the original name, whether sanitizing or the ``_N`` suffix changed it.
    """
    used: set[str] = set()
    members: list[MemberName] = []
    for original in names:
        original = str(original)
        sanitized = sanitize_member_name(original)
        base_stem, extension = split_name(sanitized)
        stem = base_stem
        if stem_key(stem) in used:
            suffix = 2
            while stem_key(f"{base_stem}_{suffix}") in used:
                suffix += 1
            stem = f"{base_stem}_{suffix}"
        used.add(stem_key(stem))
        members.append(
            MemberName(
                original=original,
                file_name=f"{stem}{extension}",
                stem=stem,
                extension=extension,
                renamed=f"{stem}{extension}" != original,
            )
        )
    return members


def sanitize_title(title: str) -> str:
    """A project title as a safe file name part: member-name rules, ``/`` and ``\\`` and whitespace -> ``_``.

    No device-name guard is needed: the title is always followed by ``-<time>.zip``.
    """
    text = _WHITESPACE_RUN.sub("_", str(title).replace("/", "_").replace("\\", "_"))
    text = _replace_unsafe(text).strip("._")
    return text[:MAX_STEM_LENGTH].rstrip("._") or "export"


def default_output_name(title: str, now: datetime) -> str:
    """Default output file name: ``<sanitized title>-YYYYmmdd-HHMMSS.zip`` (``now`` is the wall clock)."""
    return f"{sanitize_title(title)}-{now.strftime('%Y%m%d-%H%M%S')}.zip"
