"""Segmentation quality measures on class-index masks: Dice, IoU, boundary F1, solidity.

Masks are integer arrays (H, W) with 0 = background. Region scores are per class and,
by default, averaged over the foreground classes 1..C-1; a class absent from both
masks scores 1.0 (nothing to find, nothing found).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["dice", "iou", "boundary_f1", "solidity", "confusion_counts"]


def _as_masks(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    return pred.astype(np.int64, copy=False), target.astype(np.int64, copy=False)


def _foreground_classes(n_classes: int) -> list[int]:
    return list(range(1, n_classes)) if n_classes > 1 else [0]


def confusion_counts(pred: np.ndarray, target: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (intersection, |pred|, |target|) pixel counts, each of length n_classes."""
    pred, target = _as_masks(pred, target)
    inter = np.bincount(pred[pred == target].ravel(), minlength=n_classes)[:n_classes]
    p = np.bincount(pred.ravel(), minlength=n_classes)[:n_classes]
    t = np.bincount(target.ravel(), minlength=n_classes)[:n_classes]
    return inter.astype(np.float64), p.astype(np.float64), t.astype(np.float64)


def pooled_dice(pairs, n_classes: int) -> np.ndarray:
    """Per-class Dice pooled over (decided mask, given mask) pairs: the pixel counts of all
    pairs are summed first, so small objects in many images weigh as their pixels do.
    NaN for a class absent from every pair."""
    inter = np.zeros(n_classes)
    total = np.zeros(n_classes)
    for pred, target in pairs:
        i, p, t = confusion_counts(pred, target, n_classes)
        inter += i
        total += p + t
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * inter / np.where(total > 0, total, 1), np.nan)


def _score(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.ones_like(num)
    nz = den > 0
    out[nz] = num[nz] / den[nz]
    return out


def dice(pred: np.ndarray, target: np.ndarray, n_classes: int, per_class: bool = False) -> float | np.ndarray:
    """Dice 2|A∩B|/(|A|+|B|): per class (array of n_classes) or mean over foreground classes."""
    inter, p, t = confusion_counts(pred, target, n_classes)
    d = _score(2 * inter, p + t)
    return d if per_class else float(d[_foreground_classes(n_classes)].mean())


def iou(pred: np.ndarray, target: np.ndarray, n_classes: int, per_class: bool = False) -> float | np.ndarray:
    """Intersection over union: per class (array of n_classes) or mean over foreground classes."""
    inter, p, t = confusion_counts(pred, target, n_classes)
    j = _score(inter, p + t - inter)
    return j if per_class else float(j[_foreground_classes(n_classes)].mean())


_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def _boundary(binary: np.ndarray) -> np.ndarray:
    """Inner boundary: object pixels with a 4-neighbour outside the object (image edge excluded)."""
    m = binary.astype(np.uint8)
    return (m - cv2.erode(m, _CROSS, borderType=cv2.BORDER_REPLICATE)).astype(bool)


def _distance_to(points: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest True pixel of `points`."""
    return cv2.distanceTransform((~points).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def boundary_f1(pred: np.ndarray, target: np.ndarray, tol: float = 2, n_classes: int | None = None) -> float:
    """Boundary F-score with tolerance `tol` px, mean over foreground classes.

    Precision = share of predicted boundary pixels within `tol` of a target boundary
    pixel, recall the converse. A class with no boundary in either mask scores 1.0;
    with a boundary in only one of them, 0.0.
    """
    pred, target = _as_masks(pred, target)
    if n_classes is None:
        n_classes = int(max(pred.max(initial=0), target.max(initial=0))) + 1
    scores = []
    for c in _foreground_classes(n_classes):
        bp, bt = _boundary(pred == c), _boundary(target == c)
        np_, nt = int(bp.sum()), int(bt.sum())
        if np_ == 0 and nt == 0:
            scores.append(1.0)
            continue
        if np_ == 0 or nt == 0:
            scores.append(0.0)
            continue
        precision = float((_distance_to(bt)[bp] <= tol).mean())
        recall = float((_distance_to(bp)[bt] <= tol).mean())
        scores.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return float(np.mean(scores))


def solidity(mask: np.ndarray, classes: tuple[int, ...] | None = None) -> float:
    """Mean over objects of area / convex-hull area (1.0 = convex); NaN when there is no object.

    Objects are 8-connected components of each foreground class (`classes`, default all
    non-zero). The hull area counts the pixels of the filled convex hull of the object's
    pixel centres, so a filled rectangle scores exactly 1.0.
    """
    mask = np.asarray(mask)
    if classes is None:
        classes = tuple(int(c) for c in np.unique(mask) if c != 0)
    ratios = []
    for c in classes:
        n, labels, stats, _ = cv2.connectedComponentsWithStats((mask == c).astype(np.uint8), connectivity=8)
        for k in range(1, n):
            x, y, w, h, area = stats[k]
            obj = (labels[y : y + h, x : x + w] == k).astype(np.uint8)
            contours, _ = cv2.findContours(obj, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            hull = cv2.convexHull(np.concatenate(contours))
            filled = np.zeros_like(obj)
            cv2.fillPoly(filled, [hull], 1)
            ratios.append(area / max(int(filled.sum()), int(area)))
    return float(np.mean(ratios)) if ratios else float("nan")
