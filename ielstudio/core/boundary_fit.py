"""What the image says about a mask's outline: does it sit where the image changes?

The shape prior (`mask_prior.outline_smoothness`) is blind to an outline drawn too
wide, too narrow or shifted, and a model that has not learned the data cannot see
those faults either. The image can: an expert outline separates the object from what
surrounds it, so the intensities just inside it differ from those just outside more
than they do for the same outline moved a few pixels. So

    outline_fit_dice(image, mask) = Dice(mask, the outline near it that separates the
                                         image best)

where the candidates are the mask grown or shrunk by up to `MAX_OFFSET` px and shifted
by up to `MAX_SHIFT` px, and an outline separates the image by the contrast between
rings `RING_WIDTH` px wide on either side of it: |mean inside - mean outside| / pooled
standard deviation (a Fisher criterion). An outline on the object's edge gives 1; one
drawn 2 px too wide around a small lesion gives about what its true Dice is, and
around a large object little less than 1, as its true Dice does: the estimate is in
Dice's own units. It judges where an outline sits, not its shape: a spurious blob or a
wobble moves with every candidate (those are the shape prior's and rule 3's).

It is taken over the foreground as one (mask != 0), as the shape prior is, on the
mean over the image's channels. `core.review.image_score` uses it with the shape prior,
only where the model is far from reliable for every class. The form (the Dice to the
best-fitting outline rather than the contrast ratio), the search (2 px, 1 px, 3 px
rings) and the power were chosen on the real dev lesions over four draws of their
label noise and reported on the other sets (benchmarks/README.md, "Where the outline
sits in the image").
"""

from __future__ import annotations

import cv2
import numpy as np

#: The outline is compared with itself grown (+) or shrunk (-) by up to this many px...
MAX_OFFSET = 2
#: ...and shifted by up to this many px along each axis.
MAX_SHIFT = 1
#: Width of the rings inside and outside an outline whose intensities are compared (px).
RING_WIDTH = 3


def _disk(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _grown(m: np.ndarray, d: int) -> np.ndarray:
    """``m`` grown by ``d`` px (d > 0) or shrunk by -d (d < 0)."""
    if d > 0:
        return cv2.dilate(m, _disk(d))
    if d < 0:
        return cv2.erode(m, _disk(-d))
    return m


def _shifted(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``m`` moved by (dy, dx), what leaves the frame dropped, zeros coming in."""
    out = np.zeros_like(m)
    h, w = m.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = m[max(-dy, 0):h - max(dy, 0),
                                                                  max(-dx, 0):w - max(dx, 0)]
    return out


def contrast(inside: np.ndarray, outside: np.ndarray) -> float:
    """|difference of the means| over the pooled standard deviation (0 for an empty ring)."""
    if inside.size == 0 or outside.size == 0:
        return 0.0
    spread = np.sqrt(0.5 * (inside.var() + outside.var()))
    return float(abs(inside.mean() - outside.mean()) / (spread + 1e-6 * (1.0 + abs(inside.mean()))))


def _prepared(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(foreground uint8, mean over channels float32), both (H, W); ValueError if unfit."""
    m = (np.asarray(mask) != 0).astype(np.uint8)
    if m.ndim != 2:
        raise ValueError(f"the outline fit needs a 2-D mask, got shape {m.shape}")
    img = np.asarray(image, np.float32)
    if img.ndim == 3:
        img = img.mean(axis=0)
    if img.shape != m.shape:
        raise ValueError(f"image {img.shape} and mask {m.shape} differ in size")
    return m, img


def _crop_box(m: np.ndarray) -> tuple[slice, slice]:
    """A box around the foreground that holds every ring of every candidate."""
    margin = MAX_OFFSET + RING_WIDTH + MAX_SHIFT + 1
    rows, cols = np.nonzero(m)
    return (slice(max(rows.min() - margin, 0), min(rows.max() + margin + 1, m.shape[0])),
            slice(max(cols.min() - margin, 0), min(cols.max() + margin + 1, m.shape[1])))


def candidate_contrasts(image: np.ndarray, mask: np.ndarray) -> list[tuple[tuple[int, int, int], float]]:
    """[((grown by d px, shifted dy, dx), contrast across that outline)], the mask as
    given (0, 0, 0) first; empty for an empty or full mask. ``image`` (H, W) or
    (C, H, W); ``mask`` (H, W) class indices, the foreground taken as one."""
    m, img = _prepared(image, mask)
    if not m.any() or m.all():
        return []
    box = _crop_box(m)
    crop, img = m[box], img[box]
    s = MAX_SHIFT
    padded = np.pad(img, s, mode="edge")
    ring = _disk(RING_WIDTH)
    candidates = [(0, 0, 0)] + [(d, dy, dx) for d in range(-MAX_OFFSET, MAX_OFFSET + 1)
                                for dy in range(-s, s + 1) for dx in range(-s, s + 1) if (d, dy, dx) != (0, 0, 0)]
    rings, out = {}, []
    for d, dy, dx in candidates:
        if d not in rings:
            md = _grown(crop, d)
            rings[d] = None if not md.any() or md.all() else (
                np.nonzero(md.astype(bool) & ~cv2.erode(md, ring).astype(bool)),
                np.nonzero(cv2.dilate(md, ring).astype(bool) & ~md.astype(bool)))
        if rings[d] is None:
            continue
        inner, outer = rings[d]
        # the rings moved by (dy, dx): the image where they then lie
        out.append(((d, dy, dx), contrast(padded[inner[0] + s + dy, inner[1] + s + dx],
                                           padded[outer[0] + s + dy, outer[1] + s + dx])))
    return out


def best_fitting_outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The foreground of ``mask`` (bool, H x W) grown, shrunk or shifted to the candidate
    whose outline separates ``image`` best (`candidate_contrasts`); the mask itself where
    none separates it strictly better (a flat image, an empty or full mask)."""
    m, _ = _prepared(image, mask)
    contrasts = candidate_contrasts(image, mask)
    if not contrasts:
        return m.astype(bool)
    (d, dy, dx), _ = max(contrasts, key=lambda c: c[1])  # the first of equals: the mask as given
    box = _crop_box(m)
    out = np.zeros(m.shape, bool)
    out[box] = _shifted(_grown(m[box], d), dy, dx).astype(bool)
    return out


def outline_fit_dice(image: np.ndarray, mask: np.ndarray) -> float:
    """In [0, 1]: the Dice of ``mask``'s foreground with `best_fitting_outline`; 1 where
    no nearby outline separates the image better."""
    m = np.asarray(mask) != 0
    fit = best_fitting_outline(image, mask)
    total = int(m.sum()) + int(fit.sum())
    return 1.0 if total == 0 else float(2 * int((m & fit).sum()) / total)
