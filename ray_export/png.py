"""A fast, lossless and deterministic PNG encoder for 8-bit RGB overlays.

Each scanline is filtered with PNG's "Sub" filter (the byte minus the byte one pixel to its left) and
the whole stream is deflated by ISA-L at level 2 (``isal``). On the export's overlays this is 5–20×
faster than libpng at zlib level 3 for files 2–5 % larger; the pixels are the same. The file holds
only IHDR, IDAT and IEND chunks: no time, text or gamma chunks, so the bytes depend on the pixels and
the ``isal`` version alone.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from isal import isal_zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: ISA-L's compression level (0–3): 2 is the fastest within a few per cent of libpng's default size.
DEFLATE_LEVEL = 2
#: IDAT chunks are cut at this many bytes (any size up to 2**31 - 1 is valid PNG).
IDAT_CHUNK_BYTES = 1 << 23
_SUB_FILTER = 1


def _chunk(kind: bytes, data: bytes | memoryview) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + bytes(data) + struct.pack(">I", crc)


def sub_filtered_scanlines(rgb: np.ndarray) -> np.ndarray:
    """The image's scanlines, each prefixed by filter type 1 ("Sub") and filtered with it."""
    height, width, channels = rgb.shape
    rows = rgb.reshape(height, width * channels)
    out = np.empty((height, width * channels + 1), dtype=np.uint8)
    out[:, 0] = _SUB_FILTER
    out[:, 1 : 1 + channels] = rows[:, :channels]
    np.subtract(rows[:, channels:], rows[:, :-channels], out=out[:, 1 + channels :])  # wraps modulo 256
    return out


def encode_png_rgb(rgb: np.ndarray) -> bytes:
    """Encode an ``(height, width, 3)`` uint8 RGB array as PNG (8-bit truecolour, no interlace)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (height, width, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    if height == 0 or width == 0:
        raise ValueError("a PNG image needs at least one pixel")
    compressed = memoryview(isal_zlib.compress(sub_filtered_scanlines(np.ascontiguousarray(rgb)), DEFLATE_LEVEL))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, filters, no interlace
    parts = [PNG_SIGNATURE, _chunk(b"IHDR", header)]
    step = IDAT_CHUNK_BYTES
    parts += [_chunk(b"IDAT", compressed[i : i + step]) for i in range(0, len(compressed), step)]
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)
