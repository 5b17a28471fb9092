"""Realistic-looking synthetic images with clean masks (for the demo, tests, benchmarks).

Each generator returns ``(image float32 (H, W) in [0, 1], mask int64 (H, W))`` and
is deterministic for a ``numpy.random.Generator`` (an int seed is accepted too):

- :func:`make_nuclei`: fluorescence-like nuclei, mostly convex slightly irregular
  blobs (class 1) on a dim textured background.
- :func:`make_lesions`: skin-lesion-like dark blobs on textured skin, class 1 =
  lesion body, class 2 = a darker core inside it (2 foreground classes).
- :func:`make_vessels`: thin, elongated, branching dark curves (class 1) on an
  unevenly lit background, like a fundus photograph's green channel.

All share the imaging model: smooth shading, texture, optical blur, Poisson shot
noise and Gaussian read noise. A 128 px image takes a few ms.
"""

from __future__ import annotations

import cv2
import numpy as np


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def smooth_field(size: int, rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """Low-frequency random field in [0, 1] (coarse noise upsampled bicubically)."""
    coarse = rng.random((cells + 3, cells + 3)).astype(np.float32)
    big = cv2.resize(coarse, (size + 2 * size // cells, size + 2 * size // cells), interpolation=cv2.INTER_CUBIC)
    o = size // cells
    f = big[o:o + size, o:o + size]
    lo, hi = float(f.min()), float(f.max())
    return (f - lo) / (hi - lo + 1e-6)


def texture(size: int, rng: np.random.Generator, sigma: float = 1.5) -> np.ndarray:
    """Fine random texture, zero mean, unit-ish std."""
    t = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigma)
    return t / (float(t.std()) + 1e-6)


def blob_polygon(cx: float, cy: float, radius: float, rng: np.random.Generator,
                 irregularity: float = 0.08, elongation: float = 0.25, n: int = 48) -> np.ndarray:
    """Outline of a mostly convex blob: an ellipse with small low-order Fourier wobbles."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in (2, 3, 4, 5):
        r += rng.uniform(0, irregularity) / (k - 1) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    e = 1 + rng.uniform(0, elongation)
    phi = rng.uniform(0, np.pi)
    x, y = radius * r * np.cos(t) * e ** 0.5, radius * r * np.sin(t) / e ** 0.5
    xr = cx + x * np.cos(phi) - y * np.sin(phi)
    yr = cy + x * np.sin(phi) + y * np.cos(phi)
    return np.round(np.stack([xr, yr], axis=1) * 16).astype(np.int32)  # 4 fractional bits


def _fill(canvas: np.ndarray, poly: np.ndarray, value) -> None:
    cv2.fillPoly(canvas, [poly], value, lineType=cv2.LINE_8, shift=4)


def _place_centres(size: int, radii: np.ndarray, rng: np.random.Generator, overlap: float = 0.85,
                   margin: float = 0.0, tries: int = 30) -> list[tuple[float, float, float]]:
    """Centres for circles of ``radii`` that overlap little (rejection sampling)."""
    placed: list[tuple[float, float, float]] = []
    for r in radii:
        for _ in range(tries):
            x, y = rng.uniform(-margin * r, size + margin * r, 2)
            if all((x - px) ** 2 + (y - py) ** 2 > (overlap * (r + pr)) ** 2 for px, py, pr in placed):
                placed.append((float(x), float(y), float(r)))
                break
    return placed


def _image_formation(clean: np.ndarray, rng: np.random.Generator, blur: float, photons: float,
                     read_noise: float) -> np.ndarray:
    """Optics blur, shot noise (Poisson with ``photons`` at intensity 1) and read noise."""
    img = cv2.GaussianBlur(np.clip(clean, 0, None).astype(np.float32), (0, 0), blur)
    img = rng.poisson(img * photons).astype(np.float32) / photons
    img += rng.normal(0.0, read_noise, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def make_nuclei(size: int = 128, rng=None, density: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Fluorescent-nuclei-like image and binary mask (0 background, 1 nucleus)."""
    rng = _rng(rng)
    area = size * size
    n = max(1, int(rng.poisson(density * area / 1100)))
    radii = rng.uniform(0.045, 0.085, n) * size * (128 / max(size, 128)) ** 0.3
    mask = np.zeros((size, size), np.uint8)
    signal = np.zeros((size, size), np.float32)
    chromatin = texture(size, rng, sigma=1.2)
    for x, y, r in _place_centres(size, radii, rng, margin=0.3):
        obj = np.zeros_like(mask)
        _fill(obj, blob_polygon(x, y, r, rng, irregularity=0.1, elongation=0.5), 1)
        on = obj.astype(bool)
        mask[on] = 1
        # nuclei vary in brightness; slightly brighter rim than centre, chromatin texture
        dist = cv2.distanceTransform(obj, cv2.DIST_L2, 3)
        rim = np.exp(-dist / max(1.0, r / 3))
        signal[on] = rng.uniform(0.45, 0.9) * (0.85 + 0.15 * rim[on]) * (1 + 0.12 * chromatin[on])
    shading = 0.75 + 0.5 * smooth_field(size, rng, cells=3)
    background = 0.08 + 0.05 * smooth_field(size, rng, cells=6) + 0.015 * texture(size, rng, sigma=2.0)
    clean = (background + signal) * shading
    img = _image_formation(clean, rng, blur=float(rng.uniform(0.8, 1.3)), photons=float(rng.uniform(120, 300)),
                           read_noise=0.01)
    return img, mask.astype(np.int64)


def make_lesions(size: int = 128, rng=None) -> tuple[np.ndarray, np.ndarray]:
    """Skin-lesion-like image; mask 0 skin, 1 lesion body, 2 darker lesion core."""
    rng = _rng(rng)
    n = int(rng.integers(1, 4))
    radii = np.sort(rng.uniform(0.1, 0.22, n))[::-1] * size
    mask = np.zeros((size, size), np.uint8)
    clean = (0.62 + 0.12 * smooth_field(size, rng, cells=3) + 0.03 * texture(size, rng, sigma=1.0)).astype(np.float32)
    for x, y, r in _place_centres(size, radii, rng, overlap=1.05, margin=-0.6):
        body = np.zeros_like(mask)
        _fill(body, blob_polygon(x, y, r, rng, irregularity=0.18, elongation=0.4), 1)
        core = np.zeros_like(mask)
        cr = r * rng.uniform(0.35, 0.55)
        ang = rng.uniform(0, 2 * np.pi)
        off = rng.uniform(0, 0.3) * r
        _fill(core, blob_polygon(x + off * np.cos(ang), y + off * np.sin(ang), cr, rng, irregularity=0.15), 1)
        core &= cv2.erode(body, np.ones((3, 3), np.uint8), iterations=2)
        mask[body > 0] = 1
        mask[core > 0] = 2
        tone = rng.uniform(0.25, 0.4)
        pigment = 1 + 0.15 * texture(size, rng, sigma=2.5)
        clean[body > 0] = (tone * pigment)[body > 0]
        clean[core > 0] = (tone * 0.45 * pigment)[core > 0]
    clean = cv2.GaussianBlur(clean, (0, 0), 1.0)  # soft lesion borders
    img = _image_formation(clean, rng, blur=0.8, photons=float(rng.uniform(150, 400)), read_noise=0.01)
    return img, mask.astype(np.int64)


def _grow_tree(mask: np.ndarray, rng: np.random.Generator, x: float, y: float, ang: float, width: float,
               depth: int, size: int) -> None:
    """One vessel segment as a smooth random walk, with branches drawn recursively."""
    step = max(2.0, size / 40)
    pts = [(x, y)]
    n = int(rng.integers(20, 45))
    curl = 0.0
    for i in range(n):
        curl = 0.7 * curl + rng.normal(0, 0.07)
        ang += curl
        x += step * np.cos(ang)
        y += step * np.sin(ang)
        pts.append((x, y))
        if not (-step <= x <= size + step and -step <= y <= size + step):
            break
        if depth < 3 and i > 3 and rng.random() < 0.1:
            side = rng.choice([-1.0, 1.0])
            _grow_tree(mask, rng, x, y, ang + side * rng.uniform(0.4, 1.0), max(1.0, width * 0.7), depth + 1, size)
    poly = np.round(np.array(pts) * 16).astype(np.int32)
    cv2.polylines(mask, [poly], False, 1, thickness=max(1, int(round(width))), lineType=cv2.LINE_8, shift=4)


def make_vessels(size: int = 128, rng=None) -> tuple[np.ndarray, np.ndarray]:
    """Thin branching vessel-like curves (class 1) on an unevenly lit background."""
    rng = _rng(rng)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(2, 4))):
        edge = int(rng.integers(4))
        t = rng.uniform(0.15, 0.85) * size
        x, y, ang = [(t, 0.0, np.pi / 2), (t, size - 1.0, -np.pi / 2), (0.0, t, 0.0), (size - 1.0, t, np.pi)][edge]
        _grow_tree(mask, rng, x, y, ang + rng.normal(0, 0.3), rng.uniform(2.0, 3.5) * size / 128, 0, size)
    vessel = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.7)
    background = 0.45 + 0.3 * smooth_field(size, rng, cells=2) + 0.02 * texture(size, rng, sigma=1.5)
    clean = background * (1 - 0.45 * np.clip(vessel * 1.5, 0, 1))
    img = _image_formation(clean, rng, blur=0.6, photons=float(rng.uniform(200, 500)), read_noise=0.01)
    return img, mask.astype(np.int64)


GENERATORS = {"nuclei": make_nuclei, "lesions": make_lesions, "vessels": make_vessels}
