"""Label-noise generators for the demo, tests and benchmarks.

Every generator has the signature ``fn(mask, level, rng, n_classes) -> mask``: it
returns a corrupted copy of the class-index ``mask`` with the same shape and dtype,
is deterministic for a given ``numpy.random.Generator`` (an int seed is accepted
too), and works on each connected object of each foreground class separately.
Strength grows with ``level`` (1 = mild, 2 = moderate, 3 = strong):

==========  ==========================================================  ==============  ===============  ===============
kind        what it does                                                level 1         level 2          level 3
==========  ==========================================================  ==============  ===============  ===============
block       paper's block-wise relabelling: grid of s x s px blocks,    s=1, keep 0.9   s=2, keep 0.8    s=3, keep 0.7
            each kept with prob. keep, else a uniformly random class
jitter      each object grown or shrunk (50/50) by r px (ellipse)        r=1             r in 1..2        r in 2..3
holes       disks punched inside objects (per object)                   1 hole, r 1-2   1-2 holes, r 2-3 2-3 holes, r 3-4
specks      spurious disks of a random foreground class in background   1 per 64^2 px,  3 per 64^2 px,   6 per 64^2 px,
                                                                        r 1-2           r 1-2            r 1-3
missing     whole objects dropped to background (at least one)          p = 0.1         p = 0.25         p = 0.5
polygon     each object redrawn as a coarse polygon (approxPolyDP with  eps 0.1 R       eps 0.2 R        eps 0.3 R
            eps relative to its radius R = sqrt(area/pi), 0.75-12 px)
==========  ==========================================================  ==============  ===============  ===============

Pixels an object loses (jitter, holes, missing, polygon) go to the class around
it, background for most objects but e.g. lesion body around a lesion core, and
objects grow only into that class. ``apply_noise(mask, "jitter+specks", level,
rng)`` applies several kinds in turn.
"""

from __future__ import annotations

from typing import Callable, Iterator

import cv2
import numpy as np

LEVELS = (1, 2, 3)

BLOCK = {1: (1, 0.9), 2: (2, 0.8), 3: (3, 0.7)}  # level -> (block size px, keep probability)
JITTER = {1: (1, 1), 2: (1, 2), 3: (2, 3)}  # level -> radius range (inclusive)
HOLES = {1: ((1, 1), (1, 2)), 2: ((1, 2), (2, 3)), 3: ((2, 3), (3, 4))}  # level -> (count range, radius range)
SPECKS = {1: (1, (1, 2)), 2: (3, (1, 2)), 3: (6, (1, 3))}  # level -> (per 64x64 px, radius range)
MISSING = {1: 0.1, 2: 0.25, 3: 0.5}  # level -> drop probability per object
POLYGON = {1: 0.1, 2: 0.2, 3: 0.3}  # level -> approxPolyDP epsilon as a fraction of the object radius


def _setup(mask: np.ndarray, level: int, rng, n_classes: int | None) -> tuple[np.ndarray, np.random.Generator, int]:
    if level not in LEVELS:
        raise ValueError(f"noise level must be 1, 2 or 3, not {level!r}")
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if n_classes is None:
        n_classes = max(2, int(mask.max()) + 1 if mask.size else 2)
    return mask.astype(np.int64), rng, int(n_classes)


def _objects(mask: np.ndarray, n_classes: int) -> Iterator[tuple[int, tuple[slice, slice], np.ndarray]]:
    """Every 8-connected object of every foreground class: (class, bbox slices, bool ROI)."""
    for c in range(1, n_classes):
        binary = (mask == c).astype(np.uint8)
        if not binary.any():
            continue
        n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        for k in range(1, n):
            x, y, w, h = stats[k, :4]
            sl = (slice(y, y + h), slice(x, x + w))
            yield c, sl, labels[sl] == k


def _grown(sl: tuple[slice, slice], pad: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    return (slice(max(0, sl[0].start - pad), min(shape[0], sl[0].stop + pad)),
            slice(max(0, sl[1].start - pad), min(shape[1], sl[1].stop + pad)))


def _object_mask(mask_shape, sl, roi, pad) -> tuple[tuple[slice, slice], np.ndarray]:
    """The object's bool ROI placed in a bbox grown by ``pad`` px."""
    big = _grown(sl, pad, mask_shape)
    out = np.zeros((big[0].stop - big[0].start, big[1].stop - big[1].start), np.uint8)
    oy, ox = sl[0].start - big[0].start, sl[1].start - big[1].start
    out[oy:oy + roi.shape[0], ox:ox + roi.shape[1]] = roi
    return big, out


def _disk(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _finish(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    return out.astype(np.asarray(like).dtype, copy=False)


def block_noise(mask: np.ndarray, level: int, rng, n_classes: int | None = None) -> np.ndarray:
    """Block-wise relabelling (the paper's noise): corrupted blocks get a random class."""
    m, rng, n_classes = _setup(mask, level, rng, n_classes)
    scale, keep = BLOCK[level]
    h, w = m.shape
    bh, bw = -(-h // scale), -(-w // scale)
    corrupt = rng.random((bh, bw)) >= keep
    new = rng.integers(0, n_classes, size=(bh, bw))
    up = lambda a: np.repeat(np.repeat(a, scale, 0), scale, 1)[:h, :w]  # noqa: E731
    return _finish(np.where(up(corrupt), up(new), m), mask)


def _surrounding_class(m: np.ndarray, big: tuple[slice, slice], obj: np.ndarray) -> int:
    """Most common class on the 1-px ring around an object (0 for objects on background).

    Pixels an object loses go to this class, so shrinking a lesion core leaves lesion
    body there, not a background gap.
    """
    ring = cv2.dilate(obj, np.ones((3, 3), np.uint8)).astype(bool) & ~obj.astype(bool)
    vals = m[big][ring]
    return int(np.bincount(vals).argmax()) if vals.size else 0


def _filled(obj: np.ndarray) -> np.ndarray:
    """The object with its enclosed holes filled (uint8 0/1)."""
    contours, _ = cv2.findContours(obj, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(obj)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out | obj


def jitter_noise(mask: np.ndarray, level: int, rng, n_classes: int | None = None) -> np.ndarray:
    """Each object dilated or eroded by a few px.

    Grown pixels only take the class around the object (background for most objects);
    lost pixels return to it.
    """
    m, rng, n_classes = _setup(mask, level, rng, n_classes)
    lo, hi = JITTER[level]
    out = m.copy()
    for c, sl, roi in _objects(m, n_classes):
        r = int(rng.integers(lo, hi + 1))
        grow = rng.random() < 0.5
        big, obj = _object_mask(m.shape, sl, roi, r + 1)
        around = _surrounding_class(m, big, obj)
        target = out[big]
        if grow:
            region = cv2.dilate(obj, _disk(r)).astype(bool)
            target[region & (m[big] == around) & (target == around)] = c
        else:
            # erode the outline only: a ring (lesion body around a core) keeps its inner edge
            kept = cv2.erode(_filled(obj), _disk(r), borderType=cv2.BORDER_REPLICATE).astype(bool)
            target[obj.astype(bool) & ~kept & (target == c)] = around
    return _finish(out, mask)


def holes_noise(mask: np.ndarray, level: int, rng, n_classes: int | None = None) -> np.ndarray:
    """Disks punched inside objects, filled with the surrounding class (background for most)."""
    m, rng, n_classes = _setup(mask, level, rng, n_classes)
    (cmin, cmax), (rmin, rmax) = HOLES[level]
    out = m.copy()
    for c, sl, roi in _objects(m, n_classes):
        big, obj = _object_mask(m.shape, sl, roi, 1)
        ys, xs = np.nonzero(obj)
        hole = np.zeros(obj.shape, np.uint8)
        for _ in range(int(rng.integers(cmin, cmax + 1))):
            i = int(rng.integers(len(ys)))
            cv2.circle(hole, (int(xs[i]), int(ys[i])), int(rng.integers(rmin, rmax + 1)), 1, -1)
        target = out[big]
        target[hole.astype(bool) & obj.astype(bool)] = _surrounding_class(m, big, obj)
    return _finish(out, mask)


def specks_noise(mask: np.ndarray, level: int, rng, n_classes: int | None = None) -> np.ndarray:
    """Spurious small disks of a random foreground class on the background."""
    m, rng, n_classes = _setup(mask, level, rng, n_classes)
    per, (rmin, rmax) = SPECKS[level]
    h, w = m.shape
    n = max(1, int(round(per * h * w / 4096)))
    ys, xs = np.nonzero(m == 0)
    out = m.copy()
    if not len(ys):
        return _finish(out, mask)
    speck = np.zeros(m.shape, np.uint8)
    for _ in range(n):
        i = int(rng.integers(len(ys)))
        c = int(rng.integers(1, n_classes))
        cv2.circle(speck, (int(xs[i]), int(ys[i])), int(rng.integers(rmin, rmax + 1)), c, -1)
    put = (speck > 0) & (m == 0)
    out[put] = speck[put]
    return _finish(out, mask)


def missing_noise(mask: np.ndarray, level: int, rng, n_classes: int | None = None) -> np.ndarray:
    """Whole objects dropped (to the surrounding class, usually background); at least one.

    With the same seed the objects dropped at a level are a subset of those at higher levels.
    """
    m, rng, n_classes = _setup(mask, level, rng, n_classes)
    objs = list(_objects(m, n_classes))
    out = m.copy()
    if not objs:
        return _finish(out, mask)
    u = rng.random(len(objs))
    drop = u < MISSING[level]
    if not drop.any():
        drop[int(np.argmin(u))] = True
    for (c, sl, roi), d in zip(objs, drop):
        if d:
            big, obj = _object_mask(m.shape, sl, roi, 1)
            out[big][obj.astype(bool)] = _surrounding_class(m, big, obj)
    return _finish(out, mask)


def polygon_noise(mask: np.ndarray, level: int, rng, n_classes: int | None = None) -> np.ndarray:
    """Each object redrawn as a coarse polygon of its outline, like click-by-click annotation."""
    m, rng, n_classes = _setup(mask, level, rng, n_classes)
    out = m.copy()
    for c, sl, roi in _objects(m, n_classes):
        eps = float(np.clip(POLYGON[level] * np.sqrt(roi.sum() / np.pi), 0.75, 12.0))
        big, obj = _object_mask(m.shape, sl, roi, 2)
        contours, _ = cv2.findContours(obj, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        poly = np.zeros_like(obj)
        for cnt in contours:
            # vary epsilon a little per object so vertices do not all fall alike
            approx = cv2.approxPolyDP(cnt, eps * float(rng.uniform(0.8, 1.2)), True)
            cv2.fillPoly(poly, [approx], 1)
        around = _surrounding_class(m, big, obj)
        target = out[big]
        target[obj.astype(bool) & (target == c)] = around
        target[poly.astype(bool) & (m[big] == around) & (target == around)] = c
        target[poly.astype(bool) & obj.astype(bool)] = c
    return _finish(out, mask)


NOISE_TYPES: dict[str, Callable[..., np.ndarray]] = {
    "block": block_noise,
    "jitter": jitter_noise,
    "holes": holes_noise,
    "specks": specks_noise,
    "missing": missing_noise,
    "polygon": polygon_noise,
}


def apply_noise(mask: np.ndarray, kind: str, level: int, rng, n_classes: int | None = None) -> np.ndarray:
    """Apply one noise kind, or several joined by ``+`` (``"jitter+specks"``), at ``level``.

    ``level=0`` returns an unchanged copy. ``n_classes`` defaults to ``max(mask) + 1``.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    mask = np.asarray(mask)
    if n_classes is None:
        n_classes = max(2, int(mask.max()) + 1 if mask.size else 2)
    kinds = [k.strip() for k in kind.split("+") if k.strip()]
    unknown = [k for k in kinds if k not in NOISE_TYPES]
    if unknown or not kinds:
        raise ValueError(f"unknown noise kind {kind!r}; choose from {', '.join(NOISE_TYPES)}")
    out = mask.copy()
    if level == 0:
        return out
    for k in kinds:
        out = NOISE_TYPES[k](out, level, rng, n_classes)
    return out


def changed_fraction(before: np.ndarray, after: np.ndarray) -> float:
    """Fraction of pixels whose class differs."""
    return float(np.mean(np.asarray(before) != np.asarray(after)))
