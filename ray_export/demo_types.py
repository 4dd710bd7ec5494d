"""Demo projects of the SpheroSeg project types other than plain spheroids.

:func:`build_type_demo` renders synthetic images whose content matches the stored polygons and returns
the database rows of one project; :mod:`ray_export.demo` writes them into the demo SQLite file. Each
type exercises what its exporter reads (see ``PROJECT_TYPES.md``):

* ``spheroid_invasive`` — one image per day of a spheroid shedding fragments: a core (external with
  ``partClass: "core"``), the outline of the whole invading mass around it and more detached fragments
  in every later image; image 2 has no core (mode ``no_core``), image 1 a hole in the invading mass.
* ``wound`` — a scratch assay, one frame per hour: the wound is a vertical band with irregular edges that
  narrows until it nearly closes; every segmentation's ``model`` is ``wound``; frame 5 has no size in
  ``images`` nor in ``segmentations``.
* ``sperm`` — cells drawn as three connected open polylines (head, midpiece, tail) sharing an
  ``instanceId``; in image 1 one cell lacks its midpiece, in image 2 a loose tail has no ``instanceId``.
* ``microcapsule`` — round and oval capsules with a ``confidence``; some are cut by the image border
  (``complete: false``).
* ``microtubules`` — one video container row and its frames (``parentVideoId``, ``frameIndex``), 16-bit
  TIFF frames with filaments traced as polylines carrying ``mtType`` (ids of the project's
  ``mtTypeLabels``), ``trackId`` and ``instanceId``; the same filament drifts and grows across frames
  and one appears half way through the movie.

Everything is a deterministic function of ``(project type, number of images, seed, size)``.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import points_in_ring

PROJECT_TYPES: tuple[str, ...] = (
    "spheroid",
    "spheroid_invasive",
    "wound",
    "sperm",
    "microcapsule",
    "microtubules",
)
DEFAULT_TYPE = "spheroid"
#: Number of images (frames, for ``microtubules``) of a demo when none is asked for.
DEFAULT_IMAGE_COUNTS: dict[str, int] = {
    "spheroid": 12,
    "spheroid_invasive": 8,
    "wound": 8,
    "sperm": 6,
    "microcapsule": 8,
    "microtubules": 8,
}
#: Image size (width, height) of the typed demos when none is asked for.
DEFAULT_SIZE = (640, 480)

INVASIVE_HOLE_IMAGE = 1
INVASIVE_NO_CORE_IMAGE = 2
WOUND_NO_SIZE_IMAGE = 5
WOUND_INTERVAL_MS = 3_600_000
SPERM_NO_MIDPIECE_IMAGE = 1
SPERM_LOOSE_TAIL_IMAGE = 2
MT_FRAME_INTERVAL_MS = 2_000
MT_VIDEO_NAME = "mt_movie.tif"
MT_TYPE_LABELS: list[dict[str, Any]] = [
    {"id": 1, "name": "dynamic", "color": "#22C55E"},
    {"id": 2, "name": "stable", "color": "#F59E0B"},
]
#: The segmentation ``model`` written for each type.
MODELS: dict[str, str] = {
    "spheroid_invasive": "hrnet",
    "wound": "wound",
    "sperm": "manual",
    "microcapsule": "hrnet",
    "microtubules": "manual",
}
_PIXEL_SIZES_UM: dict[str, float] = {
    "spheroid_invasive": 1.29,
    "wound": 1.29,
    "sperm": 0.345,
    "microcapsule": 2.58,
    "microtubules": 0.107,
}
_SCENE = 1_000_000  # random stream of what every image of a project shares
_SHIFT = 4  # fractional bits of the coordinates handed to OpenCV's drawing functions
_MIME = {".png": "image/png", ".tif": "image/tiff", ".jpg": "image/jpeg"}


def project_title(project_type: str) -> str:
    """Title of the demo project of ``project_type`` (``Demo <type>``)."""
    return f"Demo {project_type}"


def default_image_count(project_type: str) -> int:
    """How many images the demo of ``project_type`` has when no number is asked for."""
    return DEFAULT_IMAGE_COUNTS[project_type]


@dataclass
class TypeDemo:
    """The rows of one typed demo project (its image files are already written)."""

    project: dict[str, Any]
    images: list[dict[str, Any]] = field(default_factory=list)
    segmentations: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# shared helpers


@dataclass
class _Context:
    project_type: str
    workdir: Path
    seed: int
    size: tuple[int, int]
    ids: random.Random
    project_id: str
    base_ms: int
    demo: TypeDemo

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.ids.getrandbits(128), version=4))

    def rng(self, k: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, k, PROJECT_TYPES.index(self.project_type)])

    @property
    def folder(self) -> str:
        return f"uploads/{self.project_id}"


def _rounded(xy: np.ndarray) -> np.ndarray:
    """Coordinates as stored (2 decimals); images are drawn from these so that they match exactly."""
    return np.round(np.asarray(xy, dtype=np.float64), 2) + 0.0  # + 0.0 turns -0.0 into 0.0


def _points(xy: np.ndarray) -> list[dict[str, float]]:
    return [{"x": float(x), "y": float(y)} for x, y in _rounded(xy)]


def _fixed(xy: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(xy) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _fill(shape: tuple[int, int], ring: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage (0..1) of a closed polygon."""
    import cv2

    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(mask, [_fixed(ring)], 255, cv2.LINE_AA, _SHIFT)
    return mask.astype(np.float32) / 255.0


def _stroke(shape: tuple[int, int], line: np.ndarray, thickness: int) -> np.ndarray:
    """Anti-aliased coverage (0..1) of an open polyline drawn ``thickness`` pixels wide."""
    import cv2

    mask = np.zeros(shape, dtype=np.uint8)
    cv2.polylines(mask, [_fixed(line)], False, 255, thickness, cv2.LINE_AA, _SHIFT)
    return mask.astype(np.float32) / 255.0


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(image, (0, 0), sigma)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    noise = _blur(rng.normal(0.0, 1.0, size=shape).astype(np.float32), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _illumination(shape: tuple[int, int], strength: float) -> np.ndarray:
    height, width = shape
    yy = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    return np.broadcast_to(-strength * (xx * xx + yy * yy), shape).astype(np.float32)


def _wobble(rng: np.random.Generator, theta: np.ndarray, orders: int, amplitude: float) -> np.ndarray:
    """Σ a_k cos(kθ + φ_k) over k = 2 … orders + 1, each a_k ≤ ``amplitude``."""
    amplitudes = rng.uniform(0.0, amplitude, size=orders)
    phases = rng.uniform(0.0, 2 * math.pi, size=orders)
    ks = np.arange(2, 2 + orders)
    return np.cos(theta[:, None] * ks + phases) @ amplitudes


def _polar(cx: float, cy: float, radii: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], axis=1)


def _inside(xy: np.ndarray, width: int, height: int, margin: float) -> bool:
    return bool(
        (xy[:, 0] >= margin).all() and (xy[:, 0] <= width - 1 - margin).all()
        and (xy[:, 1] >= margin).all() and (xy[:, 1] <= height - 1 - margin).all()
    )  # fmt: skip


def _gray8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_image(data: np.ndarray, path: Path) -> None:
    """Encode ``data`` (uint8/uint16 gray or uint8 BGR) to the format of the file's suffix."""
    import cv2

    params: list[int] = []
    if path.suffix == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    elif path.suffix == ".jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, 90]
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buffer = cv2.imencode(path.suffix, data, params)
    if not ok:  # pragma: no cover
        raise OSError(f"could not encode {path.name}")
    path.write_bytes(buffer.tobytes())


def _add_image(
    ctx: _Context,
    rng: np.random.Generator,
    *,
    name: str,
    relative_path: str,
    data: np.ndarray,
    created_ms: int,
    display_order: int | None,
    elements: list[dict[str, Any]],
    size_known: bool = True,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write one image file and append its ``images`` and ``segmentations`` rows; returns the image id."""
    path = ctx.workdir / relative_path
    write_image(data, path)
    height, width = data.shape[:2]
    image_id = ctx.uuid()
    ctx.demo.images.append(
        {
            "id": image_id,
            "name": name,
            "originalPath": relative_path,
            "projectId": ctx.project_id,
            "width": width if size_known else None,
            "height": height if size_known else None,
            "fileSize": path.stat().st_size,
            "mimeType": _MIME[path.suffix],
            "segmentationStatus": "segmented",
            "displayOrder": display_order,
            "isVideoContainer": 0,
            "pixelSizeUm": _PIXEL_SIZES_UM[ctx.project_type],
            "createdAt": created_ms,
            "updatedAt": created_ms + 30_000,
        }
        | (extra or {})
    )
    ctx.demo.segmentations.append(
        {
            "id": ctx.uuid(),
            "imageId": image_id,
            "polygons": json.dumps(elements, separators=(",", ":")),
            "model": MODELS[ctx.project_type],
            "threshold": 0.5,
            "confidence": round(float(rng.uniform(0.85, 0.97)), 3),
            "processingTime": int(rng.integers(300, 2000)),
            "imageWidth": width if size_known else None,
            "imageHeight": height if size_known else None,
            "createdAt": created_ms + 40_000,
            "updatedAt": created_ms + 50_000,
        }
    )
    return image_id


def _confidence(rng: np.random.Generator, low: float = 0.8, high: float = 0.99) -> float:
    return round(float(rng.uniform(low, high)), 3)


# --------------------------------------------------------------------------------------------------
# spheroid_invasive


def _invasive(ctx: _Context, n_images: int) -> None:
    """A spheroid core, the invading mass around it and detached fragments, one image per day."""
    import cv2

    width, height = ctx.size
    shape = (height, width)
    short = min(width, height)
    for k in range(n_images):
        rng = ctx.rng(k)
        progress = k / (n_images - 1) if n_images > 1 else 0.0
        cx = width / 2 + float(rng.uniform(-0.04, 0.04)) * width
        cy = height / 2 + float(rng.uniform(-0.04, 0.04)) * height
        rc = short * float(rng.uniform(0.12, 0.14))
        theta_core = np.linspace(0.0, 2 * math.pi, 120, endpoint=False)
        core_r = rc * (1.0 + _wobble(rng, theta_core, 3, 0.035))
        # The invading mass: a wobbly disc around the core with strands that reach further every day.
        theta = np.linspace(0.0, 2 * math.pi, 240, endpoint=False)
        strands = int(rng.integers(5, 9))
        reach = 0.2 + 0.8 * progress
        mass = 1.42 + _wobble(rng, theta, 3, 0.03)
        for _ in range(strands):
            centre = float(rng.uniform(0.0, 2 * math.pi))
            spread = float(rng.uniform(0.1, 0.22))
            offset = np.angle(np.exp(1j * (theta - centre)))
            mass = mass + reach * float(rng.uniform(0.4, 1.0)) * np.exp(-0.5 * (offset / spread) ** 2)
        mass_r = rc * mass
        core = _rounded(_polar(cx, cy, core_r, theta_core))
        outline = _rounded(_polar(cx, cy, mass_r, theta))
        has_core = k != INVASIVE_NO_CORE_IMAGE
        mass_mask = _fill(shape, outline)
        core_mask = _fill(shape, core) if has_core else np.zeros(shape, np.float32)

        hole: np.ndarray | None = None
        if k == INVASIVE_HOLE_IMAGE:
            core_at = rc * (1.0 + 0.105)  # above the largest core radius
            best = int(np.argmax(mass_r))
            gap = float(mass_r[best]) - core_at
            hole_r = min(0.3 * gap, 0.2 * rc)
            while hole_r > 2.0:
                dist = core_at + 0.5 * gap
                hx, hy = cx + dist * math.cos(theta[best]), cy + dist * math.sin(theta[best])
                ring = _rounded(_polar(hx, hy, np.full(32, hole_r), np.linspace(0, 2 * math.pi, 32, endpoint=False)))
                if points_in_ring(ring, outline).all() and not points_in_ring(ring, core).any():
                    hole = ring
                    break
                hole_r *= 0.8

        # Fragments: small blobs around the mass, kept apart from it and from each other.
        occupied = cv2.dilate((mass_mask > 0).astype(np.uint8), np.ones((11, 11), np.uint8))
        fragments: list[np.ndarray] = []
        wanted = 2 + 2 * k
        tries = 0
        while len(fragments) < wanted and tries < 400:
            tries += 1
            fr = short / 480 * float(rng.uniform(4.5, 10.0))
            angle = float(rng.uniform(0.0, 2 * math.pi))
            base = float(rc * np.interp(angle, theta, mass, period=2 * math.pi))
            dist = base + fr + float(rng.uniform(6.0, 8.0 + 1.4 * rc * (0.3 + progress)))
            fx, fy = cx + dist * math.cos(angle), cy + dist * math.sin(angle)
            n_points = 20
            ftheta = np.linspace(0.0, 2 * math.pi, n_points, endpoint=False)
            ring = _rounded(_polar(fx, fy, fr * (1.0 + _wobble(rng, ftheta, 2, 0.12)), ftheta))
            if not _inside(ring, width, height, 3.0):
                continue
            blob = _fill(shape, ring) > 0
            if (occupied[blob] > 0).any():
                continue
            occupied |= cv2.dilate(blob.astype(np.uint8), np.ones((11, 11), np.uint8))
            fragments.append(ring)

        mass_id = ctx.uuid()
        elements: list[dict[str, Any]] = []
        if has_core:
            elements.append(
                {"id": ctx.uuid(), "points": _points(core), "type": "external", "class": "spheroid",
                 "partClass": "core", "confidence": _confidence(rng)}
            )  # fmt: skip
        elements.append(
            {"id": mass_id, "points": _points(outline), "type": "external", "class": "spheroid",
             "confidence": _confidence(rng)}
        )  # fmt: skip
        for ring in fragments:
            elements.append(
                {"id": ctx.uuid(), "points": _points(ring), "type": "external", "class": "spheroid",
                 "confidence": _confidence(rng, 0.6, 0.95)}
            )  # fmt: skip
        if hole is not None:
            elements.append(
                {"id": ctx.uuid(), "points": _points(hole), "type": "internal", "parent_id": mass_id,
                 "confidence": elements[-1]["confidence"]}
            )  # fmt: skip

        texture = _smooth_noise(rng, shape, 1.5)
        mass_cover = mass_mask - (_fill(shape, hole) if hole is not None else 0.0)
        image = 0.8 + _illumination(shape, 0.05)
        image = image - np.clip(mass_cover, 0.0, 1.0) * (0.22 + 0.05 * texture)
        image = image - core_mask * (0.24 + 0.03 * texture)
        for ring in fragments:
            image = image - _fill(shape, ring) * 0.3
        image = _blur(image.astype(np.float32), 1.0) + rng.normal(0.0, 0.02, size=shape).astype(np.float32)
        name = f"invasion_day{k + 1:02d}.png"
        _add_image(
            ctx, rng, name=name, relative_path=f"{ctx.folder}/{name}", data=_gray8(image),
            created_ms=ctx.base_ms + k * 86_400_000, display_order=k, elements=elements,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# wound


def _wound(ctx: _Context, n_images: int) -> None:
    """A scratch assay: one frame per hour, the wound a vertical band that narrows until nearly closed."""
    width, height = ctx.size
    shape = (height, width)
    scene = ctx.rng(_SCENE)
    cx = width * float(scene.uniform(0.46, 0.54))
    start, end = 0.42 * width, 0.05 * width
    # Edge shapes persist over the frames and change slowly.
    frequencies = scene.uniform(1.5, 8.0, size=(2, 3))
    phases = scene.uniform(0.0, 2 * math.pi, size=(2, 3))
    weights = scene.uniform(0.5, 1.0, size=(2, 3))
    step = max(4.0, height / 60)
    ys = np.append(np.arange(0.0, height - 1, step), height - 1.0)
    for k in range(n_images):
        rng = ctx.rng(k)
        progress = k / (n_images - 1) if n_images > 1 else 0.0
        band = end + (start - end) * (1.0 - progress) ** 1.3
        edges = []
        for side in range(2):
            drift = phases[side] + 0.35 * k
            wave = np.sin(2 * math.pi * frequencies[side] * ys[:, None] / height + drift) @ weights[side]
            wave = wave / weights[side].sum()  # in [-1, 1]
            jitter = np.convolve(rng.normal(0.0, 1.0, size=len(ys)), np.ones(3) / 3, mode="same")
            edges.append(0.16 * band * wave + 0.03 * band * np.clip(jitter, -1.0, 1.0))
        left = np.clip(cx - band / 2 + edges[0], 0.0, width - 1.0)
        right = np.clip(cx + band / 2 + edges[1], 0.0, width - 1.0)
        ring = np.concatenate([np.stack([left, ys], axis=1), np.stack([right, ys], axis=1)[::-1]])
        ring = _rounded(ring)
        elements = [
            {"id": ctx.uuid(), "points": _points(ring), "type": "external", "class": "wound",
             "confidence": _confidence(rng)}
        ]  # fmt: skip

        wound_mask = _blur(_fill(shape, ring), 1.2)
        cells = _smooth_noise(rng, shape, 2.0) - 0.6 * _smooth_noise(rng, shape, 5.0)
        cells = 0.5 + 0.08 * cells
        empty = 0.7 + 0.015 * _smooth_noise(rng, shape, 12.0)
        image = cells * (1.0 - wound_mask) + empty * wound_mask + _illumination(shape, 0.04)
        image = _blur(image.astype(np.float32), 0.7) + rng.normal(0.0, 0.015, size=shape).astype(np.float32)
        name = f"scratch_{k:02d}h.png"
        _add_image(
            ctx, rng, name=name, relative_path=f"{ctx.folder}/{name}", data=_gray8(image),
            created_ms=ctx.base_ms + k * WOUND_INTERVAL_MS, display_order=k, elements=elements,
            size_known=k != WOUND_NO_SIZE_IMAGE,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# sperm


def _rotate(xy: np.ndarray, angle: float, origin: tuple[float, float]) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return xy @ np.array([[c, s], [-s, c]]) + np.asarray(origin)


def _sperm_cell(rng: np.random.Generator, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head, midpiece and tail of one cell along +x from the origin (shared end points)."""
    head_len = scale * float(rng.uniform(13.0, 17.0))
    mid_len = scale * float(rng.uniform(15.0, 20.0))
    tail_len = scale * float(rng.uniform(100.0, 140.0))
    head = np.stack([np.linspace(0.0, head_len, 4), np.zeros(4)], axis=1)
    bend = float(rng.uniform(-0.004, 0.004)) / scale
    s_mid = np.linspace(0.0, mid_len, 5)
    mid = np.stack([head_len + s_mid, bend * s_mid**2], axis=1)
    wavelength = scale * float(rng.uniform(45.0, 70.0))
    amplitude = scale * float(rng.uniform(5.0, 11.0))
    phase = float(rng.uniform(0.0, 2 * math.pi))
    s_tail = np.linspace(0.0, tail_len, 28)
    lateral = amplitude * (s_tail / tail_len) * (np.sin(2 * math.pi * s_tail / wavelength + phase) - math.sin(phase))
    tail = np.stack([mid[-1, 0] + s_tail, mid[-1, 1] + lateral], axis=1)
    return head, mid, tail


def _sperm(ctx: _Context, n_images: int) -> None:
    """Several cells per image, each three connected polylines sharing an ``instanceId``."""
    import cv2

    width, height = ctx.size
    shape = (height, width)
    scale = min(width, height) / 480
    for k in range(n_images):
        rng = ctx.rng(k)
        wanted = int(rng.integers(4, 7))
        cells: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        loose: np.ndarray | None = None
        taken: list[np.ndarray] = []
        tries = 0
        need_loose = k == SPERM_LOOSE_TAIL_IMAGE
        while (len(cells) < wanted or (need_loose and loose is None)) and tries < 600:
            tries += 1
            head, mid, tail = _sperm_cell(rng, scale)
            angle = float(rng.uniform(0.0, 2 * math.pi))
            origin = (float(rng.uniform(0.0, width)), float(rng.uniform(0.0, height)))
            parts = [_rounded(_rotate(p, angle, origin)) for p in (head, mid, tail)]
            parts[1][0], parts[2][0] = parts[0][-1], parts[1][-1]  # connected end to end
            making_loose = len(cells) >= wanted
            if making_loose:
                parts = [parts[2]]
            whole = np.concatenate(parts)
            if not _inside(whole, width, height, 8.0):
                continue
            if any(np.min(np.hypot(*(whole[:, None, :] - other[None, :, :]).transpose(2, 0, 1))) < 14.0
                   for other in taken):
                continue
            taken.append(whole)
            if making_loose:
                loose = parts[0]
            else:
                cells.append((parts[0], parts[1], parts[2]))

        elements: list[dict[str, Any]] = []
        for number, (head, mid, tail) in enumerate(cells, start=1):
            confidence = _confidence(rng)
            for part, line in (("head", head), ("midpiece", mid), ("tail", tail)):
                if part == "midpiece" and k == SPERM_NO_MIDPIECE_IMAGE and number == 2:
                    continue
                elements.append(
                    {"id": ctx.uuid(), "geometry": "polyline", "type": "external", "class": "sperm",
                     "partClass": part, "instanceId": number, "points": _points(line), "confidence": confidence}
                )  # fmt: skip
        if loose is not None:
            elements.append(
                {"id": ctx.uuid(), "geometry": "polyline", "type": "external", "class": "sperm",
                 "partClass": "tail", "points": _points(loose), "confidence": _confidence(rng, 0.5, 0.7)}
            )  # fmt: skip

        dark = np.zeros(shape, np.float32)
        for head, mid, tail in cells:
            heads = np.zeros(shape, np.uint8)
            centre = (head[0] + head[-1]) / 2
            direction = head[-1] - head[0]
            axes = (float(np.hypot(*direction)) / 2 + 1.0, 3.0 * scale)
            angle = math.degrees(math.atan2(direction[1], direction[0]))
            cv2.ellipse(heads, tuple(int(v) for v in _fixed(centre).ravel()),
                        tuple(round(v * (1 << _SHIFT)) for v in axes), angle, 0, 360, 255, -1,
                        cv2.LINE_AA, _SHIFT)  # fmt: skip
            dark = np.maximum(dark, heads.astype(np.float32) / 255.0 * 0.42)
            dark = np.maximum(dark, _stroke(shape, mid, max(2, round(3 * scale))) * 0.34)
            dark = np.maximum(dark, _stroke(shape, tail, 1) * 0.24)
        if loose is not None:
            dark = np.maximum(dark, _stroke(shape, loose, 1) * 0.2)
        image = 0.74 + _illumination(shape, 0.06) + 0.01 * _smooth_noise(rng, shape, 8.0) - dark
        image = _blur(image.astype(np.float32), 0.8) + rng.normal(0.0, 0.018, size=shape).astype(np.float32)
        name = f"sperm_{k + 1:03d}.png"
        _add_image(
            ctx, rng, name=name, relative_path=f"{ctx.folder}/{name}", data=_gray8(image),
            created_ms=ctx.base_ms + k * 120_000, display_order=k, elements=elements,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# microcapsule


def _microcapsule(ctx: _Context, n_images: int) -> None:
    """Round and oval capsules with a darker wall; some are cut by the image border."""
    width, height = ctx.size
    shape = (height, width)
    short = min(width, height)
    for k in range(n_images):
        rng = ctx.rng(k)
        border_count = 1 + k % 2
        wanted = border_count + int(rng.integers(5, 9))
        capsules: list[tuple[float, float, float, np.ndarray, bool]] = []  # cx, cy, a, ring, cut
        tries = 0
        while len(capsules) < wanted and tries < 600:
            tries += 1
            a = short * float(rng.uniform(0.055, 0.1))
            b = a * float(rng.uniform(0.78, 1.0))
            tilt = float(rng.uniform(0.0, math.pi))
            at_border = len(capsules) < border_count
            if at_border:
                side = int(rng.integers(0, 4))
                along = float(rng.uniform(0.2, 0.8))
                depth = float(rng.uniform(-0.4, 0.4)) * a
                cx, cy = [(depth, along * height), (width - 1 - depth, along * height),
                          (along * width, depth), (along * width, height - 1 - depth)][side]  # fmt: skip
            else:
                cx = float(rng.uniform(a + 4, width - a - 5))
                cy = float(rng.uniform(a + 4, height - a - 5))
            if any(math.hypot(cx - ox, cy - oy) < 1.08 * (a + oa) + 4 for ox, oy, oa, _, _ in capsules):
                continue
            n_points = int(np.clip(round(a * 1.6), 48, 160))
            theta = np.linspace(0.0, 2 * math.pi, n_points, endpoint=False)
            radial = 1.0 + _wobble(rng, theta, 2, 0.012)
            local = np.stack([a * radial * np.cos(theta), b * radial * np.sin(theta)], axis=1)
            ring = _rotate(local, tilt, (cx, cy))
            cut = not _inside(ring, width, height, 0.0)
            if cut != at_border:
                continue
            capsules.append((cx, cy, a, ring, cut))

        elements: list[dict[str, Any]] = []
        wall = np.zeros(shape, np.float32)
        lumen = np.zeros(shape, np.float32)
        for cx, cy, _, ring, cut in capsules:
            stored = _rounded(np.stack([np.clip(ring[:, 0], 0, width - 1), np.clip(ring[:, 1], 0, height - 1)], 1))
            element: dict[str, Any] = {
                "id": ctx.uuid(), "points": _points(stored), "type": "external", "class": "microcapsule",
                "confidence": _confidence(rng, 0.7, 0.99),
            }  # fmt: skip
            if cut:
                element["complete"] = False
            elements.append(element)
            outer = _fill(shape, _rounded(ring))
            inner = _fill(shape, (ring - (cx, cy)) * 0.86 + (cx, cy))
            wall = np.maximum(wall, outer - inner)
            lumen = np.maximum(lumen, inner)
        cells = np.clip(_smooth_noise(rng, shape, 1.5) - 1.6, 0.0, None)
        image = 0.8 + _illumination(shape, 0.05) - 0.32 * wall - lumen * (0.07 + 0.1 * cells)
        image = _blur(image.astype(np.float32), 0.9) + rng.normal(0.0, 0.015, size=shape).astype(np.float32)
        tint = np.array([0.9, 0.96, 1.0], dtype=np.float32)  # B, G, R
        data = (np.clip(image, 0.0, 1.0)[..., None] * tint * 255.0 + 0.5).astype(np.uint8)
        name = f"capsules_{k + 1:03d}.jpg"
        _add_image(
            ctx, rng, name=name, relative_path=f"{ctx.folder}/{name}", data=data,
            created_ms=ctx.base_ms + k * 300_000, display_order=k, elements=elements,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# microtubules


@dataclass
class _Filament:
    track: int
    mt_type: int
    x: float
    y: float
    angle: float
    curvature: float
    length: float
    growth: float
    first_frame: int
    drift: np.ndarray  # (frames, 2) cumulative translation

    def points(self, frame: int) -> np.ndarray:
        """The filament's centre line in ``frame`` (points about 8 px apart)."""
        length = max(20.0, self.length + self.growth * (frame - self.first_frame))
        count = max(2, math.ceil(length / 8.0) + 1)
        s = np.linspace(0.0, length, count)
        heading = self.angle + self.curvature * s
        step = np.diff(s, prepend=0.0)
        xs = self.x + np.cumsum(step * np.cos(heading))
        ys = self.y + np.cumsum(step * np.sin(heading))
        return np.stack([xs, ys], axis=1) + self.drift[frame]


def _microtubules(ctx: _Context, n_images: int) -> None:
    """A video container and its 16-bit frames with a few filaments that drift and grow."""
    width, height = ctx.size
    shape = (height, width)
    scale = min(width, height) / 480
    rng = ctx.rng(_SCENE)
    video_id = ctx.uuid()
    ctx.demo.images.append(
        {
            "id": video_id, "name": MT_VIDEO_NAME, "originalPath": f"{ctx.folder}/{MT_VIDEO_NAME}",
            "projectId": ctx.project_id, "width": width, "height": height, "mimeType": "image/tiff",
            "segmentationStatus": "no_segmentation", "displayOrder": 0, "isVideoContainer": 1,
            "frameIntervalMs": float(MT_FRAME_INTERVAL_MS), "pixelSizeUm": _PIXEL_SIZES_UM["microtubules"],
            "createdAt": ctx.base_ms - 60_000, "updatedAt": ctx.base_ms - 60_000,
        }
    )  # fmt: skip
    filaments: list[_Filament] = []
    wanted = int(rng.integers(4, 6))
    tries = 0
    while len(filaments) < wanted + 1 and tries < 500:
        tries += 1
        newcomer = len(filaments) == wanted
        mt_type = 1 if newcomer or rng.uniform() < 0.6 else 2
        steps = rng.normal(0.0, 0.6 * scale, size=(n_images, 2))
        steps[0] = 0.0
        filament = _Filament(
            track=len(filaments) + 1,
            mt_type=mt_type,
            x=float(rng.uniform(0.0, width)),
            y=float(rng.uniform(0.0, height)),
            angle=float(rng.uniform(0.0, 2 * math.pi)),
            curvature=float(rng.uniform(-0.003, 0.003)) / scale,
            length=scale * float(rng.uniform(25.0, 40.0) if newcomer else rng.uniform(80.0, 180.0)),
            growth=scale * (float(rng.uniform(-4.0, 6.0)) if mt_type == 1 else 0.0),
            first_frame=n_images // 2 if newcomer else 0,
            drift=np.cumsum(steps, axis=0),
        )
        frames = range(filament.first_frame, n_images)
        if all(_inside(filament.points(f), width, height, 8.0) for f in frames):
            filaments.append(filament)

    background = 600.0 + 60.0 * _illumination(shape, 1.0) + 25.0 * _smooth_noise(rng, shape, 30.0)
    for frame in range(n_images):
        frame_rng = ctx.rng(frame)
        elements: list[dict[str, Any]] = []
        signal = np.zeros(shape, np.float32)
        for filament in filaments:
            if frame < filament.first_frame:
                continue
            line = _rounded(filament.points(frame))
            elements.append(
                {"id": ctx.uuid(), "geometry": "polyline", "type": "external", "points": _points(line),
                 "mtType": filament.mt_type, "trackId": filament.track, "instanceId": filament.track,
                 "confidence": _confidence(frame_rng)}
            )  # fmt: skip
            brightness = 2600.0 if filament.mt_type == 2 else 1900.0
            signal = np.maximum(signal, _stroke(shape, line, 1) * brightness)
        # Point spread of the microscope: a 1 px line blurred with σ = 1.3 px keeps about 0.3 of its peak.
        image = background + _blur(signal, 1.3) / 0.3
        image = image + frame_rng.normal(0.0, 1.0, size=shape) * np.sqrt(np.maximum(image, 1.0)) * 0.8
        data = np.clip(image + 0.5, 0, 65535).astype(np.uint16)
        name = f"mt_movie_t{frame:03d}.tif"
        _add_image(
            ctx, frame_rng, name=name, relative_path=f"{ctx.folder}/mt_movie/{name}", data=data,
            created_ms=ctx.base_ms + frame * MT_FRAME_INTERVAL_MS, display_order=frame, elements=elements,
            extra={"parentVideoId": video_id, "frameIndex": frame, "frameIntervalMs": float(MT_FRAME_INTERVAL_MS)},
        )  # fmt: skip


_GENERATORS: dict[str, Callable[[_Context, int], None]] = {
    "spheroid_invasive": _invasive,
    "wound": _wound,
    "sperm": _sperm,
    "microcapsule": _microcapsule,
    "microtubules": _microtubules,
}
_DESCRIPTIONS: dict[str, str] = {
    "spheroid_invasive": "Synthetic invasive spheroids shedding fragments, generated by ray-export demo",
    "wound": "Synthetic scratch assay (one frame per hour), generated by ray-export demo",
    "sperm": "Synthetic sperm cells traced as head, midpiece and tail polylines, generated by ray-export demo",
    "microcapsule": "Synthetic microcapsules, generated by ray-export demo",
    "microtubules": "Synthetic microtubule movie with traced filaments, generated by ray-export demo",
}


def build_type_demo(
    project_type: str, workdir: Path, n_images: int, seed: int, size: tuple[int, int] | None = None
) -> TypeDemo:
    """Render the images of a typed demo under ``workdir`` and return its rows (not yet stored)."""
    if project_type not in _GENERATORS:
        raise ValueError(f"no typed demo for project type {project_type!r}")
    ids = random.Random(f"ray-export-demo/{project_type}/{seed}")
    project_id = str(uuid.UUID(int=ids.getrandbits(128), version=4))
    user_id = str(uuid.UUID(int=ids.getrandbits(128), version=4))
    base_ms = int(datetime(2024, 3, 1, 9, tzinfo=timezone.utc).timestamp() * 1000) + seed * 86_400_000
    project: dict[str, Any] = {
        "id": project_id,
        "title": project_title(project_type),
        "description": _DESCRIPTIONS[project_type],
        "type": project_type,
        "userId": user_id,
        "createdAt": base_ms - 3_600_000,
        "updatedAt": base_ms - 3_600_000,
    }
    if project_type == "microtubules":
        project["mtTypeLabels"] = json.dumps(MT_TYPE_LABELS, separators=(",", ":"))
    ctx = _Context(project_type, Path(workdir), seed, size or DEFAULT_SIZE, ids, project_id, base_ms, TypeDemo(project))
    _GENERATORS[project_type](ctx, n_images)
    return ctx.demo
