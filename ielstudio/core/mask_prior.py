"""What a mask alone says about its quality: a prior on shape that needs no model.

Annotation faults that a model cannot be trusted to see (on data it has not learned)
still show in the mask itself: a ragged or wobbly outline, specks, a bite. Anatomy
is mostly smooth at the scale of a few pixels, so

    outline_smoothness(mask) = outline length of the foreground smoothed by a Gaussian
                               (sigma `SMOOTHING_SIGMA` px, cut at 0.5)
                               / outline length of the foreground as given

is near 1 for a clean outline and lower the more the outline zig-zags or the more
specks it has (a speck smooths away, so its outline counts only in the
denominator). It is blind to an outline drawn too wide or shifted, which the model must find
or the image shows (`boundary_fit.outline_fit_dice`).

It is taken over the foreground as one (mask != 0): on the brain MRI dev slices a
per-class outline, which counts the naturally folded boundaries between tissue
classes, ranked worse (Spearman 0.77 against 0.93; benchmarks/README.md).

`core.review.image_score` uses it only where the model is far from reliable for
every class (held-out agreement below `review.SHAPE_PRIOR_BELOW`), as a factor on
the model's score (chosen on the real dev sets, reported on
the others: benchmarks/README.md, "A shape prior where the model is not reliable").
"""

from __future__ import annotations

import cv2
import numpy as np

#: Gaussian smoothing of the mask, in pixels.
SMOOTHING_SIGMA = 2.0


def outline_length(binary: np.ndarray) -> float:
    """Summed length of every contour of a 2-D binary mask, in pixels."""
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    return float(sum(cv2.arcLength(c, True) for c in contours))


def outline_smoothness(mask: np.ndarray) -> float:
    """In [0, 1]: 1 for an empty mask or one whose outline smoothing does not shorten;
    0 for a mask of lone pixels (smoothing erases them). 2-D masks only."""
    m = np.asarray(mask) != 0
    if m.ndim != 2:
        raise ValueError(f"outline_smoothness needs a 2-D mask, got shape {m.shape}")
    if not m.any():
        return 1.0
    given = outline_length(m)
    smooth = cv2.GaussianBlur(m.astype(np.float32), (0, 0), SMOOTHING_SIGMA) > 0.5
    if given == 0.0:  # only single pixels: arcLength of a one-point contour is 0
        return 0.0 if not smooth.any() else 1.0
    return float(min(1.0, outline_length(smooth) / given))
