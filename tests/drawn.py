"""Shapes and model outputs drawn for the do-no-harm rules' tests (`core.review`)."""

from __future__ import annotations

import cv2
import numpy as np


def disk(shape, centre, radius, dtype=bool) -> np.ndarray:
    """A filled disk of ``radius`` px at ``centre`` (x, y) in an array of ``shape``."""
    m = np.zeros(shape, np.uint8)
    cv2.circle(m, centre, radius, 1, -1)
    return m.astype(dtype)


def probs_of(p_fg: np.ndarray) -> np.ndarray:
    """Two-class probabilities (2, H, W) of a model that gives foreground ``p_fg``."""
    return np.stack([1 - p_fg, p_fg]).astype(np.float32)
