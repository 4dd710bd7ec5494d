"""The overlay PNG encoder: lossless, deterministic, standard, and close to libpng's size."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from ray_export.png import IDAT_CHUNK_BYTES, encode_png_rgb


def _noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width, dtype=np.float64)[None, :, None] * np.ones((height, 1, 3))
    return np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        out.append((kind, body))
        pos += 12 + length
    return out


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (97, 131), (480, 640)])
def test_pixels_survive_both_decoders(shape):
    rgb = _noise_image(*shape, seed=shape[0])
    data = encode_png_rgb(rgb)
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert np.array_equal(decoded, rgb)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGB" and image.size == (shape[1], shape[0])
        assert np.array_equal(np.asarray(image), rgb)


def test_same_pixels_same_bytes_and_only_critical_chunks():
    rgb = _noise_image(200, 300)
    data = encode_png_rgb(rgb)
    assert data == encode_png_rgb(rgb.copy())
    kinds = [kind for kind, _ in _chunks(data)]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and set(kinds[1:-1]) == {b"IDAT"}
    width, height, depth, colour, compression, filters, interlace = struct.unpack(">IIBBBBB", _chunks(data)[0][1])
    assert (width, height, depth, colour, compression, filters, interlace) == (300, 200, 8, 2, 0, 0, 0)


def test_large_images_are_cut_into_several_idat_chunks():
    rgb = _noise_image(2000, 2000, seed=3)
    data = encode_png_rgb(rgb)
    idat = [body for kind, body in _chunks(data) if kind == b"IDAT"]
    assert len(idat) >= 2 and all(len(body) <= IDAT_CHUNK_BYTES for body in idat)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), rgb)


def test_size_stays_close_to_libpng_level_3_on_an_overlay():
    rgb = _noise_image(960, 1280, seed=5)
    cv2.circle(rgb, (600, 500), 200, (255, 0, 0), thickness=2)
    libpng = len(cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3])[1])
    assert len(encode_png_rgb(rgb)) <= 1.06 * libpng


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((4, 4, 3), np.uint16), np.zeros((0, 4, 3), np.uint8)])
def test_rejects_what_is_not_8_bit_rgb(bad):
    with pytest.raises(ValueError):
        encode_png_rgb(bad)
