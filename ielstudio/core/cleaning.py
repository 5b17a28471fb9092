"""Turn a model's probabilities into a cleaned mask, score how much a label can be trusted,
and run the whole clean-a-folder job (`ielstudio clean`).

Pure functions (numpy + cv2): `propose`, `postprocess`, `label_quality`, `change_summary`.
The job: `clean_dataset(...)`, a generator of progress events ending in `CleanDone`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from .metrics import dice as _dice


@dataclass(frozen=True)
class CleanConfig:
    """How a model's prediction becomes the proposed mask.

    min_area: connected objects of a foreground class smaller than this (pixels) are
        removed and take the majority class around them (0 keeps everything).
    fill_holes: background enclosed by a foreground class becomes that class.
    convex_hull_classes: classes whose objects are replaced by their convex hull
        (only background pixels are painted, other classes are never overwritten).
    confident_only: keep the given label except where the model is confident
        (max probability >= threshold) and disagrees with it.
    threshold: confidence needed to overrule the given label in confident_only mode.
    """

    min_area: int = 10
    fill_holes: bool = True
    convex_hull_classes: tuple[int, ...] = ()
    confident_only: bool = False
    threshold: float = 0.9

    def __post_init__(self):
        object.__setattr__(self, "convex_hull_classes", tuple(int(c) for c in self.convex_hull_classes))
        if self.min_area < 0:
            raise ValueError(f"min_area must be >= 0, got {self.min_area}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["convex_hull_classes"] = list(self.convex_hull_classes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CleanConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _check(probs: np.ndarray, given: np.ndarray) -> None:
    if probs.ndim != 3 or given.shape != probs.shape[1:]:
        raise ValueError(f"probs (C,H,W) {probs.shape} and given (H,W) {given.shape} do not match")


def propose(probs: np.ndarray, given: np.ndarray, config: CleanConfig = CleanConfig()) -> np.ndarray:
    """The proposed clean mask (H,W) int64: the model's argmax (or, with
    `confident_only`, the given label overruled only where the model is confident),
    then `postprocess`."""
    probs = np.asarray(probs)
    given = np.asarray(given)
    _check(probs, given)
    arg = probs.argmax(axis=0).astype(np.int64)
    if config.confident_only:
        confident = probs.max(axis=0) >= config.threshold
        mask = np.where(confident, arg, given).astype(np.int64)
    else:
        mask = arg
    return postprocess(mask, config)


def _components(binary: np.ndarray, connectivity: int = 8):
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=connectivity)
    return n, labels, stats


def _remove_specks(mask: np.ndarray, cls: int, min_area: int) -> None:
    """In place: objects of `cls` smaller than min_area take the majority class of their 1-px ring."""
    n, labels, stats = _components(mask == cls)
    h, w = mask.shape
    kernel = np.ones((3, 3), np.uint8)
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        if area >= min_area:
            continue
        y0, y1, x0, x1 = max(y - 1, 0), min(y + bh + 1, h), max(x - 1, 0), min(x + bw + 1, w)
        comp = labels[y0:y1, x0:x1] == i
        ring = cv2.dilate(comp.astype(np.uint8), kernel).astype(bool) & ~comp
        around = mask[y0:y1, x0:x1][ring]
        around = around[around != cls]
        fill = int(np.bincount(around).argmax()) if around.size else 0
        mask[y0:y1, x0:x1][comp] = fill


def _fill_holes(mask: np.ndarray, cls: int) -> None:
    """In place: background pixels not connected (4-conn.) to the border outside `cls` become `cls`."""
    outside = mask != cls
    n, labels, _ = _components(outside, connectivity=4)
    if n <= 1:
        return
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    hole = outside & ~np.isin(labels, border)
    mask[hole & (mask == 0)] = cls


def _convex_hulls(mask: np.ndarray, cls: int) -> None:
    """In place: each object of `cls` is grown to its convex hull (background pixels only)."""
    n, labels, stats = _components(mask == cls)
    for i in range(1, n):
        x, y, bw, bh, _ = stats[i]
        comp = (labels[y:y + bh, x:x + bw] == i).astype(np.uint8)
        hull = cv2.convexHull(cv2.findNonZero(comp))
        canvas = np.zeros_like(comp)
        cv2.fillConvexPoly(canvas, hull, 1)
        window = mask[y:y + bh, x:x + bw]
        window[(canvas > 0) & (window == 0)] = cls


def postprocess(mask: np.ndarray, config: CleanConfig = CleanConfig()) -> np.ndarray:
    """A copy of `mask` with specks removed, holes filled and hulls taken (in that order),
    each per foreground class as `config` asks."""
    out = np.array(mask, dtype=np.int64, copy=True)
    classes = [int(c) for c in np.unique(out) if c != 0]
    if config.min_area > 1:
        for c in classes:
            _remove_specks(out, c, config.min_area)
    if config.fill_holes:
        for c in classes:
            _fill_holes(out, c)
    for c in config.convex_hull_classes:
        if c != 0:
            _convex_hulls(out, c)
    return out


def label_quality(probs: np.ndarray, given: np.ndarray) -> tuple[float, np.ndarray]:
    """How far the given label can be trusted, judged by the model.

    Returns (score, doubt): doubt (H,W) float32 = 1 - p(given label) per pixel;
    score in [0, 1], 1 = the label agrees with a confident model. The score is the mean of
      - the hard foreground Dice between the given label and the model's argmax
        (`metrics.dice`: mean over foreground classes), an estimate of the
        label's true Dice when the model is right, and
      - the mean p(given label) over the union of both foregrounds, which keeps the
        ranking informative where the model is unsure (it is below 1 even when the
        argmax agrees) and ignores the easy background.
    An image where neither the label nor the model has any foreground scores
    the mean p(given) over the whole image.
    """
    probs = np.asarray(probs, dtype=np.float32)
    given = np.asarray(given).astype(np.int64)
    _check(probs, given)
    n_classes = probs.shape[0]
    g = np.clip(given, 0, n_classes - 1)
    p_given = np.take_along_axis(probs, g[None], axis=0)[0]
    doubt = (1.0 - p_given).astype(np.float32)

    arg = probs.argmax(axis=0)
    union = (given != 0) | (arg != 0)
    if not union.any():
        return float(np.clip(p_given.mean(), 0.0, 1.0)), doubt
    dice = _dice(arg, given, n_classes)
    confidence = float(p_given[union].mean())
    return float(np.clip(0.5 * dice + 0.5 * confidence, 0.0, 1.0)), doubt


def change_summary(before: np.ndarray, after: np.ndarray, n_classes: int) -> dict:
    """What changed between two masks: per class pixels added (now that class, was not)
    and removed (was, now not), total changed pixels and their fraction of the image."""
    before = np.asarray(before)
    after = np.asarray(after)
    if before.shape != after.shape:
        raise ValueError(f"shapes differ: {before.shape} vs {after.shape}")
    changed = before != after
    added = [int((changed & (after == c)).sum()) for c in range(n_classes)]
    removed = [int((changed & (before == c)).sum()) for c in range(n_classes)]
    n = int(changed.sum())
    return {
        "added": added,
        "removed": removed,
        "changed_pixels": n,
        "changed_fraction": n / before.size if before.size else 0.0,
    }
