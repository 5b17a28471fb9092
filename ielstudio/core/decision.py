"""How a model's probabilities become classes: per-class decision thresholds.

The plain rule is the argmax (for two classes: foreground where p > 0.5). It is
the right rule when the labels the model learned from are right, or wrong at random
in both directions. It fails on one-sided noise: when annotators left some objects
out, the model learns that an object like them is labelled only part of the time,
and its probability on *every* such object settles below 0.5. The argmax then
deletes the labelled objects too. (Measured once on the bundled nuclei with half
of the objects missing from the labels, a probe not kept in the repo: the heat-IEL
network gave no nucleus p above 0.5, most of them (10th-90th percentile) 0.18-0.48,
and the background p < 0.05.)

The model still separates objects from background; only the level is off. So the
threshold of each foreground class is put at the valley of that class's
probabilities pooled over the data set (Otsu's split of their histogram), and
accepted only when

- it separates two populations: their means are far apart (upper mean - lower
  mean >= `MIN_SEPARATION`), or the histogram has a clear valley there (smoothed,
  its density at the threshold is at most 1 / `MIN_DIP` of the highest density on
  either side). A histogram without a second mode keeps 0.5. The second test is
  scale-free: a model that learned to give objects ~0.43 against a background of
  ~0.14 (objects missing from the labels, early in training) has means only 0.29
  apart, but a valley 3.8 times lower than its object peak (a probe, script not
  kept: the `--quick` benchmark's small network, the bundled nuclei with half of
  the objects missing, step 150 of seed 0; Dice 0.90 at the valley against 0.31 for
  the argmax);
- the population above it is mostly below 0.5 (its median < 0.5): only then would
  the argmax delete the objects the model sees. A confident model of correct labels
  has soft edges that also make a valley (0.38 once), but its objects sit near 1,
  so it keeps 0.5;
- it lies in [`MIN_THRESHOLD`, `MAX_THRESHOLD`]: the rule only lowers a threshold,
  never below the point where an object would be declared on weak evidence, and a
  valley within 0.05 of 0.5 is the argmax's own (moving it would only nudge outlines).

A model trained on clean or evenly noisy labels puts its valley at about 0.5, so
the rule then changes nothing. With more than two classes a threshold t becomes
the weight (1 - t) / t on that class's probability before the argmax (background
keeps weight 1), which for two classes is exactly "foreground where p > t".
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

BINS = 256
MIN_THRESHOLD = 0.2
MAX_THRESHOLD = 0.45
MIN_SEPARATION = 0.3
MIN_DIP = 3.0
SMOOTH_BINS = 4  # sigma (in bins) of the Gaussian that smooths a histogram before the valley test


def _otsu(hist: np.ndarray) -> tuple[float, float, float]:
    """Otsu's split of a histogram over [0, 1]: (threshold, lower mean, upper mean)."""
    hist = hist.astype(np.float64)
    centres = (np.arange(len(hist)) + 0.5) / len(hist)
    w0 = np.cumsum(hist)[:-1]
    w1 = hist.sum() - w0
    m0 = np.cumsum(hist * centres)[:-1]
    m1 = float((hist * centres).sum()) - m0
    valid = (w0 > 0) & (w1 > 0)
    if not valid.any():
        return 0.5, 0.0, 0.0
    mu0 = np.where(valid, m0 / np.maximum(w0, 1e-12), 0.0)
    mu1 = np.where(valid, m1 / np.maximum(w1, 1e-12), 0.0)
    between = np.where(valid, w0 * w1 * (mu0 - mu1) ** 2, -1.0)
    # an empty gap between the two populations is a plateau of equal scores: take its middle
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    i = int(best[len(best) // 2])
    return (i + 1) / len(hist), float(mu0[i]), float(mu1[i])


def _smoothed(hist: np.ndarray) -> np.ndarray:
    """The histogram convolved with a Gaussian of sigma SMOOTH_BINS (reflected at 0 and 1)."""
    r = 3 * SMOOTH_BINS
    x = np.arange(-r, r + 1)
    kernel = np.exp(-0.5 * (x / SMOOTH_BINS) ** 2)
    return np.convolve(np.pad(hist.astype(np.float64), r, mode="reflect"), kernel / kernel.sum(), mode="valid")


def _dip(hist: np.ndarray, t: float) -> float:
    """How deep the valley at threshold t is: the lower of the two peaks (highest smoothed
    density below and above t) over the smoothed density at t (inf for an empty gap)."""
    sm = _smoothed(hist)
    i = min(max(int(round(t * len(hist))) - 1, 0), len(hist) - 1)
    peak = min(sm[: i + 1].max(), sm[i:].max())
    return float(peak / sm[i]) if sm[i] > 1e-12 * max(sm.max(), 1e-300) else float("inf")


def _upper_median(hist: np.ndarray, t: float) -> float:
    """Median of the histogram's mass above threshold t."""
    i = min(max(int(round(t * len(hist))), 0), len(hist) - 1)
    upper = hist[i:].astype(np.float64)
    if upper.sum() <= 0:
        return 0.0
    j = int(np.searchsorted(np.cumsum(upper), upper.sum() / 2))
    return (i + j + 0.5) / len(hist)


def _clear_valley(hist: np.ndarray) -> float | None:
    """Otsu's split of a class's histogram when it separates two populations (see the
    module docstring) and lies in [MIN_THRESHOLD, MAX_THRESHOLD]; else None."""
    t, lower, upper = _otsu(hist)
    if not MIN_THRESHOLD <= t <= MAX_THRESHOLD:
        return None
    if _upper_median(hist, t) >= 0.5:  # the objects are above 0.5: the argmax keeps them
        return None
    if upper - lower >= MIN_SEPARATION or _dip(hist, t) >= MIN_DIP:
        return t
    return None


def decision_thresholds(prob_maps: Iterable[np.ndarray]) -> np.ndarray:
    """Per-class thresholds (C,) from the (C,H,W) probability maps of a data set.

    Entry 0 (background) is always 0.5. A foreground class gets the valley of its
    pooled probabilities when that valley is clear (see the module docstring), else 0.5.
    Raises ValueError when no map is given or the maps disagree on the class count.
    """
    hists = None
    for p in prob_maps:
        p = np.asarray(p)
        if p.ndim != 3:
            raise ValueError(f"probability map must be (C,H,W), got shape {p.shape}")
        h = np.stack([np.histogram(p[c], bins=BINS, range=(0.0, 1.0))[0] for c in range(p.shape[0])])
        if hists is None:
            hists = h.astype(np.int64)
        elif h.shape != hists.shape:
            raise ValueError(f"probability maps disagree on the class count: {h.shape[0]} vs {hists.shape[0]}")
        else:
            hists += h
    if hists is None:
        raise ValueError("no probability maps to set thresholds from")
    out = np.full(len(hists), 0.5)
    for c in range(1, len(hists)):
        t = _clear_valley(hists[c])
        if t is not None:
            out[c] = t
    return out


def decide(probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """The class map (H,W) int64 of (C,H,W) probabilities (or (D,H,W) of (C,D,H,W)): the argmax, after weighting
    each foreground class c by (1 - t_c) / t_c (None or all 0.5: the plain argmax)."""
    probs = np.asarray(probs)
    if thresholds is None:
        return probs.argmax(axis=0).astype(np.int64)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.shape != (probs.shape[0],) or not np.all((t > 0) & (t < 1)):
        raise ValueError(f"need one threshold in (0, 1) per class ({probs.shape[0]}), got {t.tolist()}")
    if np.all(t[1:] == 0.5):
        return probs.argmax(axis=0).astype(np.int64)
    w = (1.0 - t) / t
    w[0] = 1.0
    return (probs * w.reshape((-1,) + (1,) * (probs.ndim - 1)).astype(probs.dtype)).argmax(axis=0).astype(np.int64)
