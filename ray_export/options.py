"""Export options (SPEC 2): one options object for the CLI, the Python API and options files."""

from __future__ import annotations

import re
from dataclasses import dataclass


class OptionError(ValueError):
    """An invalid option; the message names the option."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"invalid option {option}: {message}")
        self.option = option


_COLOUR = re.compile(r"^#[0-9A-Fa-f]{6}$")
VIZ_FORMAT_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


@dataclass(frozen=True)
class VisualizationSettings:
    """How overlays are drawn (SPEC 2 and 6)."""

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
